"""The WSGI entry point for gunicorn: `gunicorn api.wsgi:app`."""

from __future__ import annotations

from api import create_app, gunicorn_errors

gunicorn_errors.install()
app = create_app()
