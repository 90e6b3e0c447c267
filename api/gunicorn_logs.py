"""gunicorn's own lines (start-up, errors, the access log) in cachemgr's log format: with
DISK_CACHE_LOG_FORMAT=json every line the web process writes is one JSON object."""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from cachemgr.logs import JsonFormatter, log_format


class CacheLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if log_format() != "json":
            return
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())
