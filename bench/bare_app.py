"""The API figure's baselines, served by the same gunicorn command line as the API: a bare Flask
endpoint, and one that also makes one Redis round trip (a PING), the least any endpoint that reads
the books from Redis can cost."""

from __future__ import annotations

import os
from typing import Any

import redis
from flask import Flask, jsonify

app = Flask(__name__)
_client: list[Any] = []


@app.get("/bare")
def bare() -> Any:
    return jsonify({"status": "ok", "total_bytes": 0, "directory_count": 0})


@app.get("/bare-redis")
def bare_redis() -> Any:
    if not _client:  # made in the worker process, after gunicorn's fork
        _client.append(redis.Redis.from_url(os.environ["REDIS_URL"]))
    _client[0].ping()
    return jsonify({"status": "ok", "total_bytes": 0, "directory_count": 0})
