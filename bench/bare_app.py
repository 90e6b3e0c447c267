"""The API figure's baseline: a bare Flask endpoint, served by the same gunicorn command line."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/bare")
def bare() -> Any:
    return jsonify({"status": "ok", "total_bytes": 0, "directory_count": 0})
