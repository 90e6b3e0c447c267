"""The Celery app of the workers and beat: `celery -A workers.app worker|beat`."""

from __future__ import annotations

from celery import Celery

app = Celery("cachemgr", include=["workers.tasks"])
app.config_from_object("celeryconfig")
