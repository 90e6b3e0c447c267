"""configure_logging: JSON lines with DISK_CACHE_LOG_FORMAT=json, plain text otherwise."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachemgr.logs import configure_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    """Leave the root logger as the test found it, for the tests that come after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_line_has_the_four_fields_and_the_extras(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(stream=out, environ={"DISK_CACHE_LOG_FORMAT": "json"})
    logging.getLogger("cachemgr").info(
        "evicted %s (%d bytes)",
        "artist/album",
        4096,
        extra={"event": "evicted", "path": "artist/album", "size_bytes": 4096, "at": Path("/x")},
    )
    [line] = lines(out)
    record = json.loads(line)
    assert record["level"] == "INFO"
    assert record["logger"] == "cachemgr"
    assert record["message"] == "evicted artist/album (4096 bytes)"
    assert record["time"].endswith("+00:00")
    assert record["event"] == "evicted" and record["size_bytes"] == 4096
    assert record["at"] == "/x"  # not JSON by nature: written as text, the line survives


def test_json_exception_stays_on_one_line(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(stream=out, fmt="json")
    try:
        raise RuntimeError("disk on fire\nsecond line")
    except RuntimeError:
        logging.getLogger("cachemgr").exception("cleanup failed", extra={"event": "failed"})
    [line] = lines(out)
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["event"] == "failed"
    assert "RuntimeError: disk on fire" in record["exception"]


def test_an_extra_named_like_a_field_does_not_replace_it(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(stream=out, fmt="json")
    logging.getLogger("cachemgr.api").warning("hello", extra={"level": "shadow", "time": 1})
    record = json.loads(lines(out)[0])
    assert record["level"] == "WARNING" and record["extra_level"] == "shadow"
    assert record["extra_time"] == 1


def test_text_by_default_with_extras_as_key_value(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(stream=out, environ={})
    logging.getLogger("cachemgr").info("expired %s", "a b", extra={"path": "a b", "size": 7})
    [line] = lines(out)
    assert " INFO cachemgr: expired a b " in line
    assert line.endswith('path="a b" size=7')
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_a_name_with_a_newline_stays_on_its_line_in_text(restore_root: None) -> None:
    """A directory named "new\nline" split an eviction's line in two, the second one a line
    the name's author wrote; a traceback still follows on lines of its own."""
    out = io.StringIO()
    configure_logging(stream=out, environ={})
    log = logging.getLogger("cachemgr")
    log.info("evicted %s (%d bytes)", "new\n2026-01-01 ERROR forged", 8192, extra={"path": "a\nb"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("cleanup failed")
    first, *rest = lines(out)
    assert first.count("\n") == 0 and "evicted new\\n2026-01-01 ERROR forged (8192 bytes)" in first
    assert first.endswith('path="a\\nb"')
    assert "cleanup failed" in rest[0] and any("ValueError: boom" in line for line in rest)


def test_level_from_the_environment_and_one_handler_after_many_calls(
    restore_root: None,
) -> None:
    first = io.StringIO()
    configure_logging(stream=first, fmt="json")
    out = io.StringIO()
    configure_logging(stream=out, environ={"DISK_CACHE_LOG_FORMAT": "JSON",
                                           "DISK_CACHE_LOG_LEVEL": "warning"})  # fmt: skip
    log = logging.getLogger("cachemgr")
    log.info("not shown")
    log.warning("shown")
    assert [json.loads(x)["message"] for x in lines(out)] == ["shown"]
    assert first.getvalue() == ""  # the first handler was replaced, not kept beside


def test_unknown_format_is_refused(restore_root: None) -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging(fmt="xml")


def test_an_unknown_format_in_the_environment_says_so_and_logs_text(
    restore_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cachemgr import logs

    monkeypatch.setattr(logs, "_SAID", set())  # not said yet in this process
    out = io.StringIO()
    configure_logging(stream=out, environ={"DISK_CACHE_LOG_FORMAT": "xml"})
    [line] = lines(out)
    assert "DISK_CACHE_LOG_FORMAT='xml' is not a log format (text or json)" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    again = io.StringIO()  # the CLI configures logging twice (its app, then its own level)
    configure_logging(stream=again, environ={"DISK_CACHE_LOG_FORMAT": "xml"})
    assert lines(again) == []  # said once a process


def test_without_a_stream_it_follows_sys_stderr(
    restore_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(fmt="json")
    logging.getLogger("cachemgr").warning("to stderr")
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["message"] == "to stderr"


def test_the_app_factory_logs_json_when_the_environment_asks(
    restore_root: None,
    settings: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from api import create_app

    monkeypatch.setenv("DISK_CACHE_LOG_FORMAT", "json")
    create_app({"CACHEMGR_SETTINGS": settings})
    logging.getLogger("cachemgr.api").warning("ready", extra={"port": 8080})
    record = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert record["logger"] == "cachemgr.api" and record["port"] == 8080


def test_the_web_process_logs_gunicorns_own_lines_as_json_when_asked(monkeypatch):
    from gunicorn.config import Config

    from api.gunicorn_logs import CacheLogger

    cfg = Config()
    cfg.set("accesslog", "-")
    said = '"GET / HTTP/1.1" 200'
    record = logging.LogRecord("gunicorn.access", logging.INFO, "", 0, said, (), None)
    monkeypatch.setenv("DISK_CACHE_LOG_FORMAT", "json")
    for logger in (CacheLogger(cfg).error_log, CacheLogger(cfg).access_log):
        line = logger.handlers[0].format(record)
        assert json.loads(line)["message"] == said
    monkeypatch.setenv("DISK_CACHE_LOG_FORMAT", "text")
    assert not CacheLogger(cfg).access_log.handlers[0].format(record).startswith("{")


def test_celerys_expected_failure_line_leaves_its_traceback_out(restore_root: None) -> None:
    """Each refused task (NotOnDisk...) logged, besides our one line, Celery's INFO "raised
    expected" line with its `data` extra, traceback and all: 2 KB a task."""
    for fmt in ("text", "json"):
        out = io.StringIO()
        configure_logging(stream=out, fmt=fmt)
        trace = logging.getLogger("celery.app.trace")
        data = {"id": "t1", "name": "cachemgr.register_directory", "exc": "NotOnDisk('x')",
                "traceback": "Traceback (most recent call last):\n  File ...", "args": "('x',)"}
        trace.info("Task %(name)s[%(id)s] raised expected: %(exc)s", data, extra={"data": data})
        trace.error("Task %(name)s[%(id)s] raised unexpected: %(exc)s", data,
                    extra={"data": data})  # fmt: skip
        expected, unexpected = out.getvalue().splitlines()[:2]
        assert "raised expected: NotOnDisk" in expected and "Traceback" not in expected, fmt
        assert "Traceback" in unexpected, fmt  # a bug's traceback stays


def test_a_worker_with_management_off_says_so_in_its_log(settings, redis_client, root, caplog):
    """The spec's first 'cache not working' cause: the worker's log showed only 'serving
    node', then every task 'succeeded' (Celery's INFO line of the 'disabled' answer)."""
    import logging

    from cachemgr import DiskCache
    from cachemgr.cleanup import cleanup
    from workers.app import _announce

    off = DiskCache(settings.with_(enable_disk_cache_management=False), redis_client)
    with caplog.at_level(logging.INFO, logger="cachemgr"):
        assert _announce(off) is True
        assert cleanup(off) == {"status": "disabled"}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ENABLE_DISK_CACHE_MANAGEMENT is false: this worker registers" in m for m in warned)
    assert "cleanup did nothing: ENABLE_DISK_CACHE_MANAGEMENT is false" in warned
