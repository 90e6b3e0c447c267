"""Every CLI command against the real Redis (click's runner), with JSON output and exit codes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REDIS_URL, make_tree, side_db


def run(runner, *args):
    return runner.invoke(args=list(args))


def test_stats_json_and_table(runner, cache, root):
    make_tree(root, "a", files=4)
    cache.register("a")
    result = run(runner, "stats", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["directory_count"] == 1
    table = run(runner, "stats")  # the runner is not a terminal: JSON by default
    assert json.loads(table.stdout)["total_bytes"] == 5 * 4096


def test_ls_filters_and_sorts(runner, cache, root):
    make_tree(root, "small", files=1)
    make_tree(root, "big", files=8)
    cache.register("small")
    cache.register("big")
    cache.access("small")
    out = json.loads(run(runner, "ls", "--json").stdout)
    assert [d["path"] for d in out] == ["small", "big"]
    out = json.loads(run(runner, "ls", "--sort", "size", "--json").stdout)
    assert [d["path"] for d in out] == ["big", "small"]
    out = json.loads(run(runner, "ls", "--larger-than", "20KiB", "--json").stdout)
    assert [d["path"] for d in out] == ["big"]
    out = json.loads(run(runner, "ls", "--idle-for", "1d", "--json").stdout)
    assert out == []
    out = json.loads(run(runner, "ls", "--sort", "hits", "--json").stdout)
    assert out[0]["path"] == "small"


def test_info_register_rm_via_worker_and_inline(runner, cache, root):
    make_tree(root, "a")
    make_tree(root, "b")
    assert run(runner, "register", "a", "--json").exit_code == 0
    assert run(runner, "register", "b", "--now", "--json").exit_code == 0
    assert json.loads(run(runner, "info", "a", "--json").stdout)["path"] == "a"
    assert run(runner, "rm", "a", "--files").exit_code == 0
    assert not (root / "a").exists()
    assert run(runner, "rm", "b", "--now").exit_code == 0 and (root / "b").is_dir()


def test_exit_codes_and_one_line_errors(runner, root):
    bad = run(runner, "info", "../etc")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert bad.output.strip().count("\n") == 0
    missing = run(runner, "info", "nope")
    assert missing.exit_code == 3 and "not tracked" in missing.output
    assert run(runner, "register", "nope", "--now").exit_code == 3
    assert run(runner, "ls", "--larger-than", "12XB").exit_code == 2


def test_a_pin_beyond_a_week_is_refused_in_one_line_and_not_stored(runner, cache, root):
    make_tree(root, "a")
    cache.register("a")
    for ttl in ("1000000w", "99999999999999999999w", "0s"):
        result = run(runner, "pin", "a", "--ttl", ttl)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"--ttl '{ttl}'" in result.output and result.output.strip().count("\n") == 0
    assert cache.client.zscore(cache.keys.pins, "a") is None
    assert run(runner, "info", "a").exit_code == 0


def test_an_unreachable_result_backend_is_exit_4_in_one_line():
    import click

    from api.cli_errors import friendly

    scope: dict = {"__name__": "celery.backends.asynchronous"}
    exec("def give_up():\n    raise RuntimeError('Retry limit exceeded')", scope)
    with pytest.raises(click.ClickException) as caught:
        friendly(scope["give_up"])()
    assert caught.value.exit_code == 4 and "result backend" in caught.value.message

    def other() -> None:
        raise RuntimeError("Retry limit exceeded")  # the same words, raised elsewhere

    with pytest.raises(RuntimeError):
        friendly(other)()


def test_cleanup_dry_run_matches_the_act(runner, cache, root):
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    plan = json.loads(run(runner, "cleanup", "--dry-run", "--json").stdout)
    assert cache.store.count_entries() == 20
    act = json.loads(run(runner, "cleanup", "--json").stdout)
    assert plan["evict"]["plan"] == act["evict"]["plan"] and len(act["evict"]["plan"]) == 4


def test_reconcile_dry_run_and_now(runner, cache, root, monkeypatch):
    import api.cli

    make_tree(root, "found")
    sent = []
    real = api.cli.wait_task
    monkeypatch.setattr(api.cli, "wait_task", lambda *a, **k: sent.append(a) or real(*a, **k))
    plan = json.loads(run(runner, "reconcile", "--dry-run", "--json").stdout)
    assert plan["registered"] == ["found"] and cache.store.count_entries() == 0
    # Planned by the worker, which sees the disk as the real run does (its user, its mount):
    # the shell's plan said "resized" where the worker's said "unreadable".
    assert sent == [("reconcile",)]
    done = run(runner, "reconcile", "--now", "--json")
    assert done.exit_code == 0 and cache.store.count_entries() == 1


def test_reconcile_now_past_the_threshold_sends_a_quota_pass(runner, cache, root):
    import time

    from cachemgr.cleanup import cleanup

    make_tree(root, "d00", files=9)  # 40 KiB each with the directory, quota 400 KiB
    cache.register("d00")
    cleanup(cache)  # the marker: a plain reconcile below, not a rebuild (which holds)
    for i in range(1, 12):
        make_tree(root, f"d{i:02d}", files=9)  # lost registrations
    result = run(runner, "reconcile", "--now", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["over_threshold"] is True
    deadline = time.monotonic() + 20
    while cache.store.total_bytes() > cache.settings.target_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.store.total_bytes() <= cache.settings.target_bytes


def test_pin_unpin_and_events(runner, cache, root):
    make_tree(root, "a")
    cache.register("a")
    assert run(runner, "pin", "a", "--ttl", "10m").exit_code == 0
    assert cache.info("a").pinned_until is not None
    assert run(runner, "unpin", "a").exit_code == 0
    cache.remove("a")
    lines = run(runner, "events", "--limit", "5").output.strip().splitlines()
    assert json.loads(lines[-1])["event"] == "removed"


HUGE = "9" * 400


@pytest.mark.parametrize(
    "args,option",
    [
        (["ls", "--larger-than", HUGE], "--larger-than"),
        (["ls", "--larger-than", "9223372036854775808"], "--larger-than"),
        (["ls", "--idle-for", HUGE], "--idle-for"),
        (["ls", "--idle-for", "3651d"], "--idle-for"),
        (["ls", "--idle-for", "0.5"], "--idle-for"),
        (["ls", "--larger-than", ""], "--larger-than"),  # an unset variable: not "no filter"
        (["ls", "--idle-for", ""], "--idle-for"),
        (["pin", "a", "--ttl", HUGE], "--ttl"),
    ],
)
def test_huge_option_values_are_one_line_usage_errors(runner, args, option):
    # OverflowError tracebacks before: int(float("9" * 400)).
    result = run(runner, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().count("\n") == 0 and option in result.output
    assert len(result.output) < 200


def test_an_events_limit_past_what_redis_takes_is_a_usage_error(runner, cache, root):
    # XREVRANGE's COUNT overflowed: a redis ResponseError traceback.
    result = run(runner, "events", "--limit", "99999999999999999999")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "--limit" in result.output and "10000" in result.output
    assert run(runner, "events", "--limit", "10000").exit_code == 0


@pytest.mark.parametrize(
    "env,name",
    [
        ({"DISK_CACHE_MAX_BYTES": HUGE}, "DISK_CACHE_MAX_BYTES"),
        ({"DISK_CACHE_TTL_SECONDS": HUGE}, "DISK_CACHE_TTL_SECONDS"),
        ({"DISK_CACHE_CLEANUP_INTERVAL": HUGE}, "DISK_CACHE_CLEANUP_INTERVAL"),
        ({"DISK_CACHE_LOG_LEVEL": "BOGUS"}, "DISK_CACHE_LOG_LEVEL='BOGUS': not a log level"),
        ({"DISK_CACHE_API_READ_AUTH": "maybe"}, "DISK_CACHE_API_READ_AUTH='maybe'"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/abc"}, "REDIS_URL="),
        ({"REDIS_URL": "notaurl"}, "REDIS_URL='notaurl': not a Redis URL: it must start with"),
        ({"REDIS_URL": "foo://x"}, "redis+sentinel://, redis+cluster://"),
        ({"REDIS_URL": "redis://[::1"}, "REDIS_URL='redis://[::1': not a Redis URL"),
        # Not UTF-8 (a shell's stray byte): each command failed in the codec's words.
        ({"DISK_CACHE_CLUSTER": "a\udcffb"}, "DISK_CACHE_CLUSTER='a\\udcffb': not UTF-8"),
        ({"CACHEMGR_QUEUE": "a\udcffb"}, "CACHEMGR_QUEUE='a\\udcffb': not UTF-8"),
        ({"DISK_CACHE_CLUSTER": "two words"}, "DISK_CACHE_CLUSTER='two words': 1 to 200"),
    ],
)
def test_bad_settings_stop_every_command_in_one_line_with_exit_5(tmp_path, env, name):
    from click.testing import CliRunner

    from api.cli import main

    full = {"DISK_CACHE_ROOT": str(tmp_path), **env}
    result = CliRunner().invoke(main, ["stats"], env=full)
    assert result.exit_code == 5 and "Traceback" not in result.output, result.output
    assert result.output.strip().count("\n") == 0 and name in result.output


def test_a_commands_error_is_not_preceded_by_celerys_retry_lines(tmp_path, caplog):
    """The result backend away: `cachemgr register` printed Celery's "Connection to Redis
    lost: Retry (0/2) now." twice before its own one-line error, which says the same."""
    import logging

    from celery.backends.redis import E_LOST
    from click.testing import CliRunner

    from api.cli import main

    env = {"DISK_CACHE_ROOT": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = CliRunner().invoke(main, ["stats"], env=env)
    assert result.exit_code == 4 and result.output.count("\n") == 1, result.output
    backend = logging.getLogger("celery.backends.redis")
    with caplog.at_level(logging.ERROR, logger="celery.backends.redis"):
        backend.error(E_LOST.strip(), 0, 2, "now")
        backend.error("something else the backend says")
    assert [r.getMessage() for r in caplog.records] == ["something else the backend says"]


def test_management_off_stops_the_inline_writes_too(settings, redis_client, worker, root):
    from api import create_app

    off = settings.with_(enable_disk_cache_management=False)
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": off, "REDIS_CLIENT": redis_client})
    runner = app.test_cli_runner()
    make_tree(root, "a")
    # --now ran the domain directly and registered, deleted and reconciled all the same.
    for args in (
        ("register", "a", "--now"),
        ("rm", "a", "--files", "--now"),
        ("reconcile", "--now"),
        ("cleanup", "--now"),
        ("pin", "a"),
        ("unpin", "a"),
    ):
        result = run(runner, *args, "--json")
        assert result.exit_code == 1, args
        assert json.loads(result.stdout) == {"status": "disabled"}, args
        assert "disabled: ENABLE_DISK_CACHE_MANAGEMENT is false" in result.stderr, args
    assert (root / "a").is_dir()
    assert redis_client.hlen(app.extensions["cachemgr"].cache.keys.entries) == 0


def test_pin_unpin_and_events_take_json_like_the_others(runner, cache, root):
    make_tree(root, "a")
    cache.register("a")
    pinned = run(runner, "pin", "a", "--ttl", "10m", "--json")
    assert pinned.exit_code == 0 and json.loads(pinned.stdout)["path"] == "a"
    assert json.loads(run(runner, "unpin", "a", "--json").stdout)["unpinned"] is True
    cache.remove("a")
    events = run(runner, "events", "--json")
    assert events.exit_code == 0
    assert json.loads(events.stdout.splitlines()[-1])["event"] == "removed"


def test_help_and_an_unknown_command_need_no_good_settings(tmp_path):
    # A new user's first `cachemgr --help`, in a directory without ./downloads, printed a
    # traceback above the help; `cachemgr nosuch` answered with the missing root.
    from click.testing import CliRunner

    from api.cli import main

    env = {"DISK_CACHE_ROOT": str(tmp_path / "missing")}
    helped = CliRunner().invoke(main, ["--help"], env=env)
    assert helped.exit_code == 0 and "Traceback" not in helped.output, helped.output
    assert "stats" in helped.output and "--app" not in helped.output  # not Flask's options
    # A name not of ours may be the app's (flask-smorest's `openapi`), which cannot load here:
    # both are said, with the bad setting's exit code.
    for name in ("nosuch", "openapi"):
        unknown = CliRunner().invoke(main, [name], env=env)
        assert unknown.exit_code == 5 and "Traceback" not in unknown.output, unknown.output
        assert f"'{name}' is not one of cachemgr's own commands" in unknown.output
        assert "DISK_CACHE_ROOT=" in unknown.output


def test_an_unknown_command_with_good_settings_is_no_such_command(tmp_path):
    from click.testing import CliRunner

    from api.cli import main

    env = {"DISK_CACHE_ROOT": str(tmp_path)}
    unknown = CliRunner().invoke(main, ["nosuch"], env=env)
    assert unknown.exit_code == 2 and "No such command 'nosuch'" in unknown.output
    spec = CliRunner().invoke(main, ["openapi", "print"], env=env)  # the app's own command
    assert spec.exit_code == 0 and '"openapi"' in spec.output, spec.output


def test_reads_work_with_the_root_gone_and_the_stats_say_so(settings, root):
    # An unmounted disk: the stats are what an operator reads to find out, so they must run.
    from click.testing import CliRunner

    from api.cli import main

    env = {
        "DISK_CACHE_ROOT": str(root / "unmounted"),
        "REDIS_URL": settings.redis_url,
        "DISK_CACHE_KEY_PREFIX": settings.key_prefix,
    }
    result = CliRunner().invoke(main, ["stats", "--json"], env=env)
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert any("is not a directory (is the disk mounted?)" in w for w in warnings), warnings
    assert CliRunner().invoke(main, ["ls", "--json"], env=env).exit_code == 0
    write = CliRunner().invoke(main, ["register", "a", "--now"], env=env)
    assert write.exit_code == 5 and "DISK_CACHE_ROOT=" in write.output  # writes still refuse


def test_register_now_past_the_threshold_sends_a_quota_pass_as_the_task_does(
    runner, cache, root
):
    # `register --now` put the directory on the books and stopped there: usage stayed over the
    # threshold (found by exploratory testing), where a registration through a worker evicts.
    import time

    for i in range(10):
        make_tree(root, f"d{i:02d}", files=9)  # 40 KiB each with the directory, quota 400 KiB
    for i in range(9):
        cache.register(f"d{i:02d}")  # at the threshold, not above it
    result = run(runner, "register", "d09", "--now", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["over_threshold"] is True
    deadline = time.monotonic() + 20
    while (root / "d01").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (root / "d00").exists() and not (root / "d01").exists()  # least recently used
    assert (root / "d02").is_dir() and cache.store.total_bytes() <= cache.settings.target_bytes


def test_a_write_through_the_workers_fails_at_once_when_none_is_alive(runner, cache, root):
    # It waited two minutes in silence, and the task ran whenever a worker came up.
    import time

    from celery.signals import after_task_publish

    make_tree(root, "a")
    cache.client.delete(cache.keys.alive)
    sent: list[str] = []

    def published(sender=None, **kwargs):
        sent.append(sender)

    after_task_publish.connect(published, weak=False)
    try:
        started = time.monotonic()
        result = run(runner, "register", "a")
    finally:
        after_task_publish.disconnect(published)
    assert result.exit_code == 1 and time.monotonic() - started < 5
    assert "no worker of node" in result.output and "--now" in result.output
    assert sent == []  # nothing queued behind the user's back
    assert cache.store.info("a") is None
    assert run(runner, "register", "a", "--now").exit_code == 0


def test_a_write_whose_last_worker_stops_meanwhile_says_so_not_after_two_minutes(
    runner, cache, root, monkeypatch
):
    """The node's only worker killed just after the send: the CLI waited its whole 120 s,
    then said only "no answer". Once no worker has been alive for GONE_SECONDS (30 s; 1 here),
    it says so."""
    import threading
    import time

    from api import cli_tasks
    from api.cli_tasks import state as _state
    from cachemgr import connect

    monkeypatch.setattr(cli_tasks, "GONE_SECONDS", 1.0)
    make_tree(root, "a")
    with runner.app.app_context():
        tasks = _state().tasks
    nobody = f"nobody-{cache.keys.prefix.rstrip(':')}"  # a queue no worker reads: never run
    monkeypatch.setattr(tasks, "send", lambda name, *a, **k: tasks.send_to(nobody, name, *a, **k))
    lapse = threading.Timer(1.0, cache.client.delete, [cache.keys.alive])  # its heartbeat
    lapse.start()
    started = time.monotonic()
    try:
        result = run(runner, "register", "a")
    finally:
        lapse.cancel()
        left = connect(tasks.broker_url)
        left.delete(nobody, f"_kombu.binding.{nobody}", f"_kombu.binding_permanent.{nobody}")
        left.close()
    assert result.exit_code == 1 and time.monotonic() - started < 10, result.output
    assert result.output.startswith(
        f"Error: register_directory: no worker of node {cache.settings.node} is alive (no "
        "heartbeat) for 1 s while this waited: the task ("
    ), result.output
    assert "see `cachemgr events` before doing it here with --now" in result.output


def test_a_write_waits_out_a_worker_that_stops_cleanly_while_it_finishes_the_task(
    runner, cache, root, monkeypatch
):
    """A worker stopped by SIGTERM takes the node's heartbeat down at once and finishes the
    task it runs: the write stopped within a second, told to do again with --now what was
    being done. Its answer, a moment later, is the command's."""
    import threading

    from api.cli_tasks import state as _state

    make_tree(root, "a")
    with runner.app.app_context():
        app = _state().tasks.app
    real = app.send_task
    monkeypatch.setattr(app, "send_task", lambda *a, **k: real(*a, countdown=2, **k))
    lapse = threading.Timer(0.3, cache.client.delete, [cache.keys.alive])  # its goodbye
    lapse.start()
    try:
        result = run(runner, "register", "a", "--json")
    finally:
        lapse.cancel()
    assert result.exit_code == 0, result.output
    assert cache.store.info("a") is not None


def test_a_write_to_a_broker_the_nodes_workers_do_not_read_says_so_when_it_gives_up(
    runner, cache, root, monkeypatch
):
    """A shell whose CELERY_BROKER_URL is not the workers' (`up`'s export line without it):
    the client warns at the send; the CLI's wait then ended in "no answer ... see `cachemgr
    events`", where nothing can come. Not refused up front: the workers may know the same
    server by another name (`redis` in a container) that this shell cannot tell apart."""
    from api import cli_tasks
    from api.cli_tasks import state as _state
    from cachemgr import connect
    from cachemgr.connection import broker_id

    monkeypatch.setattr(cli_tasks, "TASK_WAIT_SECONDS", 1.0)
    make_tree(root, "a")
    theirs = broker_id(side_db(13))
    cache.registry.publish(cache.settings, broker=theirs)  # the workers read another broker
    with runner.app.app_context():
        tasks = _state().tasks
    nobody = f"nobody-{cache.keys.prefix.rstrip(':')}"  # unread, as that broker is
    monkeypatch.setattr(tasks, "send", lambda name, *a, **k: tasks.send_to(nobody, name, *a, **k))
    try:
        result = run(runner, "register", "a")
        # Another node's entry unreadable: the hint is best effort, the message stands (it
        # said "register_directory failed: Expecting value").
        cache.client.hset(cache.registry.nodes_key, "garbled", "not json")
        garbled = run(runner, "register", "a")
    finally:
        left = connect(tasks.broker_url)
        left.delete(nobody, f"_kombu.binding.{nobody}", f"_kombu.binding_permanent.{nobody}")
        left.close()
    assert result.exit_code == 1, result.output
    assert "no answer within 1 s" in result.output, result.output
    assert f"and the node's workers read {theirs}: set CELERY_BROKER_URL" in result.output
    assert garbled.exit_code == 1 and "no answer within 1 s" in garbled.output, garbled.output


def test_scheduler_stop_and_start_from_the_cli(runner, cache):
    # The stats' warning for a stopped scheduler names a command the CLI did not have.
    stopped = run(runner, "scheduler", "stop", "--json")
    assert stopped.exit_code == 0 and json.loads(stopped.stdout) == {"scheduler_running": False}
    warnings = json.loads(run(runner, "stats", "--json").stdout)["warnings"]
    assert any("`cachemgr scheduler start`" in w for w in warnings), warnings
    assert not cache.scheduler_running()
    assert run(runner, "scheduler", "start").exit_code == 0 and cache.scheduler_running()
    assert run(runner, "scheduler", "pause").exit_code == 2


def test_info_and_ls_show_expiry_by_the_workers_ttl(settings, redis_client, cache, root):
    # A shell whose DISK_CACHE_TTL_SECONDS differs from the workers' showed an expiry time
    # already past for a directory Redis keeps a day more (the sweep goes by the workers').
    from datetime import datetime

    from api import create_app

    make_tree(root, "a")
    cache.register("a")
    cache.publish_config()  # the workers' settings: a day
    shell = settings.with_(disk_cache_ttl_seconds=100)
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": shell, "REDIS_CLIENT": redis_client})
    runner = app.test_cli_runner()
    info = json.loads(run(runner, "info", "a", "--json").stdout)
    listed = json.loads(run(runner, "ls", "--json").stdout)

    def ttl(entry):
        parse = datetime.fromisoformat
        return (parse(entry["expires_at"]) - parse(entry["last_access"])).total_seconds()

    assert ttl(info) == ttl(listed[0]) == settings.disk_cache_ttl_seconds
    # The API's read said the API's own TTL.
    reply = app.test_client().get("/cache/directories/a").get_json()
    assert ttl(reply) == settings.disk_cache_ttl_seconds


def test_an_unreachable_redis_cluster_is_exit_4_in_one_line(tmp_path):
    # redis-py's cluster client asks for the nodes when it is made, with an exception of its
    # own: it came out as a traceback.
    from click.testing import CliRunner

    from api.cli import main

    env = {"DISK_CACHE_ROOT": str(tmp_path), "REDIS_URL": "redis+cluster://127.0.0.1:1"}
    result = CliRunner().invoke(main, ["stats"], env=env)
    assert result.exit_code == 4 and "Traceback" not in result.output, result.output
    assert result.output.strip().count("\n") == 0 and "Redis cannot be reached" in result.output


def test_pin_names_the_option_the_user_typed(runner, cache, root):
    make_tree(root, "a")
    result = run(runner, "pin", "a", "--ttl", "0")
    assert result.exit_code == 2 and "--ttl '0': must be more than 0 s" in result.output


def test_register_now_past_the_threshold_registers_even_when_no_pass_can_be_sent(
    runner, cache, root, monkeypatch
):
    # The quota pass is best effort: the directory is on the books either way, and the user
    # is told how to evict by hand.
    from kombu.exceptions import OperationalError

    from api.cli_tasks import state as _state

    for i in range(10):
        make_tree(root, f"d{i:02d}", files=9)
    for i in range(9):
        cache.register(f"d{i:02d}")
    with runner.app.app_context():
        tasks = _state().tasks
    sent: list[str] = []

    def broker_down(name, *args, **kwargs):
        sent.append(name)
        raise OperationalError("connection refused")

    monkeypatch.setattr(tasks, "send", broker_down)
    result = run(runner, "register", "d09", "--now", "--json")
    assert result.exit_code == 0 and cache.store.info("d09") is not None, result.output
    assert sent == ["cleanup"] and "cachemgr cleanup --now" in result.stderr
    cache.client.delete(cache.keys.alive)  # no worker: nothing is sent at all
    cache.remove("d09")
    sent.clear()
    result = run(runner, "register", "d09", "--now", "--json")
    assert result.exit_code == 0 and sent == [] and "no worker of the node" in result.stderr


def test_a_result_backend_that_gives_up_is_exit_4(runner, cache, root, monkeypatch):
    # Celery's "Retry limit exceeded ... must be restarted" came out as exit 1 in its words.
    from api.cli_tasks import state as _state

    scope: dict = {"__name__": "celery.backends.asynchronous"}
    exec("def give_up(**kw):\n    raise RuntimeError('Retry limit exceeded')", scope)

    class Result:
        id = "task-1"
        get = staticmethod(scope["give_up"])

    with runner.app.app_context():
        monkeypatch.setattr(_state().tasks, "send", lambda *a, **k: Result())
    make_tree(root, "a")
    result = run(runner, "register", "a")
    assert result.exit_code == 4 and "result backend cannot be reached" in result.output
    assert "restarted" not in result.output
    # Sent: it may have run (it had: read as a failure, nothing done).
    assert "register_directory was sent (task task-1)" in result.output, result.output
    assert "may have run" in result.output


def test_inline_writes_use_the_workers_quota_and_policy(settings, redis_client, root):
    """A shell whose environment differs (a quota of 1 MB, another policy) once evicted by its
    own quota and rebuilt its own policy's structures: --now acts with the workers'."""
    from api import create_app
    from tests.conftest import BROKER_URL, published_workers

    theirs = published_workers(settings, redis_client, root)
    shell = settings.with_(disk_cache_max_bytes=5 * 4096, disk_cache_eviction_policy="lru")
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": shell, "REDIS_CLIENT": redis_client,
                      "CELERY_BROKER_URL": BROKER_URL})  # fmt: skip
    result = run(app.test_cli_runner(), "cleanup", "--now", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["evict"]["count"] == 0  # under the workers' quota
    assert redis_client.get(theirs.keys.policy_name) == "s3fifo-a"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert any("DISK_CACHE_MAX_BYTES=" in n and "this shell: 20480" in n for n in notes)
    assert any("DISK_CACHE_EVICTION_POLICY=s3fifo-a (this shell: lru)" in n for n in notes)
    assert any("no worker of the node is alive" in n and "forget-node" in n for n in notes)
    # A registration past the shell's quota but under the workers' sends no quota pass.
    make_tree(root, "d", files=4)
    registered = run(app.test_cli_runner(), "register", "d", "--now", "--json")
    assert registered.exit_code == 0, registered.output
    assert "past the threshold" not in registered.stderr and "note:" in registered.stderr
    theirs.registry.heartbeat(theirs.keys)  # a worker alive: its settings are current
    alive = run(app.test_cli_runner(), "cleanup", "--now", "--json")
    assert "no worker of the node is alive" not in alive.stderr and "note:" in alive.stderr


def test_inline_cleanup_spares_what_the_workers_keep_as_too_young(settings, redis_client, root):
    """Only the quota, TTL and policy were taken from the workers: a shell with no
    DISK_CACHE_MIN_AGE_SECONDS of its own evicted the albums they kept as too young, unsaid."""
    from api import create_app
    from cachemgr import DiskCache
    from tests.conftest import BROKER_URL

    workers = settings.with_(disk_cache_max_bytes=5 * 4096, disk_cache_min_age_seconds=3600)
    theirs = DiskCache(workers, redis_client)
    theirs.registry.publish(workers)
    for name in ("a", "b", "c", "d"):
        make_tree(root, name, files=4)
        theirs.register(name)
    shell = workers.with_(disk_cache_min_age_seconds=0, disk_cache_entry_depth=2)
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": shell, "REDIS_CLIENT": redis_client,
                      "CELERY_BROKER_URL": BROKER_URL})  # fmt: skip
    result = run(app.test_cli_runner(), "cleanup", "--now", "--json")
    assert result.exit_code == 0, result.output
    evict = json.loads(result.stdout)["evict"]
    assert evict["count"] == 0 and sorted(evict["skipped_young"]) == ["a", "b", "c", "d"]
    assert theirs.store.count_entries() == 4 and all((root / n).is_dir() for n in "abcd")
    notes = result.stderr
    assert "DISK_CACHE_MIN_AGE_SECONDS=3600 (this shell: 0)" in notes
    assert "DISK_CACHE_ENTRY_DEPTH=1 (this shell: 2)" in notes
    # How they act is taken, not warned of in the stats (as their quota and TTL are).
    shell_stats = DiskCache(shell, redis_client).stats()["warnings"]
    assert not any("MIN_AGE" in w or "ENTRY_DEPTH" in w for w in shell_stats), shell_stats


def test_tables_show_the_since_reset_figures_and_a_pending_switch(
    runner, cache, root, monkeypatch
):
    import api.cli

    monkeypatch.setattr(api.cli, "_json_wanted", lambda as_json: bool(as_json))  # a terminal
    make_tree(root, "a", files=4)
    cache.register("a")
    cache.access("a")
    cache.access("gone", miss_bytes=4096)
    before = run(runner, "stats").stdout
    assert "hits / misses        1 / 1 (50.0 % of requests)" in before
    assert "since reset" not in before
    assert "last cleanup         none yet" in before
    import time

    from cachemgr import history

    history.record(cache, time.time() - 90, {"status": "failed", "error": "RootMissing: x"})
    shown = run(runner, "stats").stdout  # `resolved` was seen only in the JSON
    assert "last cleanup         failed, 1.5m ago, RootMissing: x" in shown
    stray = {"files": 2, "bytes": 8192, "example": "x.flac"}
    history.record(cache, time.time(), {"status": "done", "untracked": {
        "count": 0, "examples": [], "stray": stray}})  # fmt: skip
    assert "stray files          2 (8.0 KiB), e.g. x.flac" in run(runner, "stats").stdout
    cache.access("a")
    after = run(runner, "stats", "--reset").stdout
    assert "2 / 1 (66.7 % of requests)" in after  # overall
    assert "  since reset        0 / 0 (– of requests)" in after and "  reset at" in after
    # A plan made right after a policy switch says it read structures the real run rebuilds.
    redis_client = cache.client
    redis_client.set(cache.keys.policy_name, "fifo")
    plan = run(runner, "cleanup", "--dry-run", "--now").stdout
    assert "evict: 0 directories" in plan and "policy switch pending" in plan


def test_a_redis_out_of_memory_is_exit_4_in_one_line(runner, cache, root, monkeypatch):
    """maxmemory reached with noeviction: `register --now` and `pin` printed tracebacks."""
    import redis

    from cachemgr.store import Store

    make_tree(root, "a")
    script_oom = redis.ResponseError(
        "Error running script (call to f_0a1b): @user_script:12: @user_script: 12: -OOM "
        "command not allowed when used memory > 'maxmemory'."
    )
    for failure in (script_oom, redis.exceptions.OutOfMemoryError("command not allowed")):

        def full(*args, failure=failure, **kwargs):
            raise failure

        monkeypatch.setattr(Store, "register", full)
        result = run(runner, "register", "--now", "a")
        assert result.exit_code == 4 and "Traceback" not in result.output, result.output
        assert "Redis refuses it now" in result.output and "user_script" not in result.output
        assert result.output.strip().count("\n") == 0


@pytest.mark.parametrize(
    "args,said",
    [
        (["ls", "--sort", "bogus"], "Invalid value for '--sort'"),
        (["events", "--limit", "0"], "Invalid value for '--limit'"),
        (["scheduler"], "Missing argument '{start|stop}'. Choose from: start, stop"),
        (["nosuch"], "No such command 'nosuch'"),
        (["--bogus"], "No such option '--bogus'. (`cachemgr --help`"),
        (["pin", "x", "--ttl"], "requires an argument. (`cachemgr pin --help`"),
    ],
)
def test_bad_usage_is_one_line_like_every_other_refusal(settings, monkeypatch, args, said):
    """click's own usage errors took three lines (the usage, a hint, the error)."""
    from click.testing import CliRunner

    from api.cli import main

    monkeypatch.setenv("DISK_CACHE_ROOT", str(settings.root))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    result = CliRunner().invoke(main, args, prog_name="cachemgr")
    out = result.output.strip()
    assert result.exit_code == 2 and out.splitlines() == [out], out
    assert out.startswith("Error: ") and said in out and "--help` says how" in out


def test_a_cli_host_whose_clock_is_ahead_reads_idle_times_by_redis_clock(
    runner, cache, root, monkeypatch
):
    """`ls --idle-for 1h` on a host two hours ahead listed every directory just played, and
    the table showed them idle for two hours and pins in force as lapsed."""
    import time

    from api import cli as cli_module
    from cachemgr.cleanup import cleanup

    make_tree(root, "fresh")
    cache.register("fresh")
    cache.pin("fresh", 1800)
    cleanup(cache)  # the stats table says how long ago
    real = time.time
    with monkeypatch.context() as host:
        host.setattr(time, "time", lambda: real() + 7200)  # this CLI host's clock
        host.setattr(cli_module, "_json_wanted", lambda as_json: bool(as_json))  # tables
        assert json.loads(run(runner, "ls", "--idle-for", "1h", "--json").stdout) == []
        table = run(runner, "ls").stdout
        stats = run(runner, "stats").stdout
    assert "(pinned)" in table and "2.0h" not in table, table
    assert "last cleanup" in stats and "2.0h ago" not in stats, stats


def test_pin_and_unpin_obey_the_workers_switch_as_now_does(settings, redis_client, worker, root):
    """The workers published ENABLE_DISK_CACHE_MANAGEMENT=false: `cleanup --now` answered
    disabled, but `pin` and `unpin` from a shell without the variable went ahead."""
    from api import create_app
    from cachemgr import DiskCache

    off = settings.with_(enable_disk_cache_management=False)
    DiskCache(off, redis_client).registry.publish(off)  # the node's workers, switched off
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": redis_client})
    runner = app.test_cli_runner()
    make_tree(root, "a")
    for args in (("cleanup", "--now"), ("pin", "a"), ("unpin", "a")):
        result = run(runner, *args, "--json")
        assert result.exit_code == 1, args
        assert json.loads(result.stdout) == {"status": "disabled"}, args
    assert redis_client.zcard(app.extensions["cachemgr"].cache.keys.pins) == 0


def test_register_behind_another_lock_says_it_is_queued_at_once(runner, cache, root, worker):
    """The task waits for the lock to lapse and is sent again: the CLI waited its full two
    minutes for it, then said "failed: The operation timed out" (and printed a traceback at
    exit), though the registration went on and was booked later."""
    import time

    make_tree(root, "a")
    cache.client.set(cache.keys.lock("a"), "a-killed-worker", px=6000)
    started = time.monotonic()
    result = run(runner, "register", "a", "--json")
    assert result.exit_code == 1 and time.monotonic() - started < 30
    said = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(said) == 1, result.stderr  # the session worker's own log lines aside
    assert said[0].startswith("Error: retry: register_directory is waiting for another's lock")
    answer = json.loads(result.stdout)  # a script reading the JSON gets an answer too
    assert answer["status"] == "retry" and answer["task_id"] in said[0]
    deadline = time.monotonic() + 30  # and it is booked once the lock lapses
    while not cache.store.tracked(["a"])[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cache.store.tracked(["a"]) == [True]


def test_read_auth_without_a_token_stops_the_api_not_the_cli(settings, monkeypatch):
    """The CLI checks no token: a shell that has DISK_CACHE_API_READ_AUTH=true but not the
    API's secret token got exit 5 on every command."""
    from click.testing import CliRunner

    from api import create_app
    from api.cli import main
    from cachemgr import SettingsError

    monkeypatch.setenv("DISK_CACHE_ROOT", str(settings.root))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("DISK_CACHE_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("DISK_CACHE_API_READ_AUTH", "true")
    monkeypatch.delenv("DISK_CACHE_API_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["stats", "--json"], prog_name="cachemgr")
    assert result.exit_code == 0, result.output
    with pytest.raises(SettingsError, match="needs DISK_CACHE_API_TOKEN"):
        create_app()  # serving: refused


def test_a_token_of_blanks_stops_the_api_not_the_cli(settings, monkeypatch):
    """DISK_CACHE_API_TOKEN=" " made the API listen on every address while no client could
    send a token of spaces (servers strip them): no write could ever be made."""
    from click.testing import CliRunner

    from api import create_app
    from api.cli import main
    from api.stack import web_bind
    from cachemgr import SettingsError

    monkeypatch.setenv("DISK_CACHE_ROOT", str(settings.root))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("DISK_CACHE_KEY_PREFIX", settings.key_prefix)
    for token in (" ", "secret "):
        monkeypatch.setenv("DISK_CACHE_API_TOKEN", token)
        with pytest.raises(SettingsError, match="DISK_CACHE_API_TOKEN has blanks at an end"):
            web_bind()
        with pytest.raises(SettingsError, match="DISK_CACHE_API_TOKEN has blanks at an end"):
            create_app()
        result = CliRunner().invoke(main, ["stats", "--json"], prog_name="cachemgr")
        assert result.exit_code == 0, result.output  # the CLI sends no token
    monkeypatch.setenv("DISK_CACHE_API_TOKEN", "secret")
    assert web_bind()[0] == "0.0.0.0"


def test_a_misspelt_settings_name_is_said_not_ignored_unsaid(settings, monkeypatch, caplog):
    """DISK_CACHE_MAX_BYTE=1MB left the quota at its default 10 GiB, without a word from the
    worker, the CLI or the stats."""
    from click.testing import CliRunner

    from api.cli import main
    from cachemgr.environment import unknown_names
    from workers import app as worker_app

    monkeypatch.setenv("DISK_CACHE_ROOT", str(settings.root))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("DISK_CACHE_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("DISK_CACHE_MAX_BYTE", "1MB")
    monkeypatch.setenv("DISK_CACHE_FOO", "1")
    assert unknown_names() == [
        "DISK_CACHE_FOO is no setting of cachemgr",
        "DISK_CACHE_MAX_BYTE is no setting of cachemgr (DISK_CACHE_MAX_BYTES?)",
    ]
    result = CliRunner().invoke(main, ["stats", "--json"], prog_name="cachemgr")
    assert result.exit_code == 0, result.output
    assert "note: DISK_CACHE_MAX_BYTE is no setting of cachemgr (DISK_CACHE_MAX_BYTES?): " \
        "ignored" in result.stderr  # fmt: skip
    with caplog.at_level("WARNING", logger="cachemgr"):
        worker_app._settings_or_stop()  # as a worker starts
    assert "DISK_CACHE_FOO is no setting of cachemgr: ignored" in caplog.text
    monkeypatch.delenv("DISK_CACHE_FOO")
    monkeypatch.delenv("DISK_CACHE_MAX_BYTE")
    assert unknown_names() == []  # the names the API, logging and beat read are known


def test_a_group_named_alone_shows_its_help(settings, monkeypatch):
    """`cachemgr trace` printed its whole help squeezed into one `Error: Usage: ...` line."""
    from click.testing import CliRunner

    from api.cli import main

    monkeypatch.setenv("DISK_CACHE_ROOT", str(settings.root))
    result = CliRunner().invoke(main, ["trace"], prog_name="cachemgr")
    assert result.output.startswith("Usage: cachemgr trace"), result.output
    assert "Error:" not in result.output and "\n  export" in result.output


def test_a_write_done_here_is_logged_as_a_workers_would_be(settings, cache, root):
    """The CLI logged at WARNING: a `cleanup --now` evicted, a `register --now` booked, and
    no log line said so (README: the logs record each registration and eviction)."""
    from tests.test_settings import _run

    make_tree(root, "a")
    env = {"DISK_CACHE_ROOT": str(root), "REDIS_URL": settings.redis_url,
           "DISK_CACHE_KEY_PREFIX": settings.disk_cache_key_prefix,
           "DISK_CACHE_CLUSTER": settings.disk_cache_cluster}  # fmt: skip
    code, err = _run(["-m", "api.cli", "register", "a", "--now", "--json"], env)
    assert code == 0 and " INFO cachemgr: registered a: " in err, err
    code, err = _run(["-m", "api.cli", "stats", "--json"], env)
    assert code == 0 and " INFO " not in err, err  # a read's answer is its output alone


def test_a_name_with_escapes_is_shown_escaped_in_tables_and_text_logs(
    runner, cache, root, monkeypatch
):
    """A directory named with a colour escape and a newline reached the terminal as they are
    (`cachemgr ls`, `info`, a worker's text log): colours, and a row split in two."""
    import logging

    import api.cli
    from cachemgr.logs import TextFormatter

    monkeypatch.setattr(api.cli, "_json_wanted", lambda as_json: bool(as_json))  # a terminal
    name = "red\x1b[31mx\nfake row"
    make_tree(root, name, files=1)
    cache.register(name)
    cache.pin(name, 3600, holder="player")  # a holder's name is printable (checks.holder)
    for args in (["ls"], ["info", name]):
        out = run(runner, *args)
        assert out.exit_code == 0, out.output
        assert "\x1b" not in out.stdout and "red\\x1b[31mx\\nfake row" in out.stdout
    assert "player until" in run(runner, "info", name).stdout
    record = logging.LogRecord("cachemgr", logging.INFO, "", 0, "evicted %s", (name,), None)
    record.path = name
    line = TextFormatter().format(record)
    assert "\x1b" not in line and "\n" not in line
    assert "evicted red\\x1b[31mx\\nfake row" in line and 'path="red\\u001b[31mx\\nfake' in line


def test_now_from_a_shell_whose_root_is_not_the_workers_is_refused_unrecorded(
    settings, redis_client, cache, root, tmp_path
):
    """`DISK_CACHE_ROOT=/wrong cachemgr cleanup --now`: the cleanup ran on the wrong
    directory, was refused for its root, and was recorded as the node's: its last cleanup
    "failed", a stats warning and a failing /readyz, while the workers were fine."""
    from api import create_app
    from cachemgr.cleanup import cleanup

    make_tree(root, "a")
    cache.register("a")
    cleanup(cache)  # the root marked as the books'
    cache.publish_config()  # the workers' root
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    make_tree(wrong, "other")
    shell = settings.with_(disk_cache_root=str(wrong))
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": shell, "REDIS_CLIENT": redis_client})
    runner = app.test_cli_runner()
    before = redis_client.hgetall(cache.keys.last_cleanup)
    for args in (["cleanup", "--now"], ["register", "other", "--now"],
                 ["rm", "a", "--files", "--now"], ["reconcile", "--now"],
                 ["reconcile", "--now", "--force"]):  # fmt: skip
        done = runner.invoke(args=args)
        assert done.exit_code == 5, (args, done.output)
        assert "is not the one the node's workers use" in done.output, done.output
        assert str(root) in done.output
        # Not the advice that made this directory the books' root: --force, here; but why.
        assert "reconcile --force" not in done.output, done.output
        assert "marker .cachemgr-books is missing" in done.output, done.output
    assert redis_client.hgetall(cache.keys.last_cleanup) == before
    assert cache.store.tracked(["a", "other"]) == [True, False] and (root / "a").is_dir()
    # Without --now the workers do it, on their root; untracking alone looks at no disk.
    assert runner.invoke(args=["rm", "a", "--now"]).exit_code == 0


def test_now_from_a_wrong_root_is_refused_before_the_nodes_first_cleanup(
    settings, redis_client, cache, root, tmp_path
):
    """Before the node's first cleanup the books held no mark of their root: a shell with a
    wrong DISK_CACHE_ROOT was let through, reconciled that directory into the books
    (untracking the real downloads) and evicted from it, files outside the cache. (The
    first registration marks the root now; books from before that were not marked.)"""
    from api import create_app

    make_tree(root, "a")
    cache.register("a")
    cache.publish_config()  # the workers' root, published; no cleanup has run
    redis_client.delete(cache.keys.root_mark)  # booked by a version that did not mark
    (root / ".cachemgr-books").unlink()
    wrong = tmp_path / "elsewhere"
    make_tree(wrong, "photos")
    shell = settings.with_(disk_cache_root=str(wrong), disk_cache_max_bytes=1)
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": shell, "REDIS_CLIENT": redis_client})
    runner = app.test_cli_runner()
    for args in (["cleanup", "--now"], ["register", "photos", "--now"], ["reconcile", "--now"]):
        done = runner.invoke(args=args)
        assert done.exit_code == 5, (args, done.output)
        assert "is not the one the node's workers use" in done.output
        assert "the books hold no mark of their root yet" in done.output, done.output
    assert (wrong / "photos").is_dir() and not (wrong / ".cachemgr-books").exists()
    assert cache.store.tracked(["a", "photos"]) == [True, False]


def test_a_server_that_is_not_redis_is_said_in_one_line(settings, tmp_path):
    """REDIS_URL at an HTTP server (a wrong port): every command ended in a 95-line traceback
    (redis.exceptions.InvalidResponse)."""
    import socket
    import threading

    from api import create_app
    from cachemgr import connect

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": settings.with_(redis_url=url),
                          "REDIS_CLIENT": connect(url, interactive=True)})  # fmt: skip
        done = app.test_cli_runner().invoke(args=["stats"])
        assert done.exit_code == 4, done.output
        assert "does not speak Redis" in done.output and "Traceback" not in done.output
        assert len(done.output.strip().splitlines()) == 1, done.output
    finally:
        server.close()


@pytest.mark.parametrize(
    "args,code,said",
    [(["--redis-url", REDIS_URL.rsplit("/", 1)[0] + "/99", "--prefix", "x:"], 5, "does not have"),
     (["--redis-url", "redis://[::1:6379/0", "--prefix", "x:"], 2, "bad Redis URL"),
     (["--prefix", "bad\udcff"], 2, "not valid UTF-8")],
)  # fmt: skip
def test_trace_export_says_bad_redis_settings_in_one_line(args, code, said):
    """A database the server does not have, a malformed URL, a prefix that is not UTF-8:
    tracebacks where every other command says one line."""
    from click.testing import CliRunner

    from api.cli_sim import trace_group

    done = CliRunner().invoke(trace_group, ["export", *args])
    assert done.exit_code == code, done.output
    assert said in done.output and "Traceback" not in done.output


@pytest.mark.parametrize("args", [["--help"], ["openapi", "write", "/dev/full"]])
def test_an_output_that_cannot_be_written_is_one_line(tmp_path, args):
    # `cachemgr stats > /dev/full` (a full disk under a redirect) printed a 40-line traceback.
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "DISK_CACHE_ROOT": str(tmp_path)}
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", *args], cwd=Path(__file__).resolve().parents[1],
            env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == "Error: cannot write its output: No space left on device\n"


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("CELERY_RESULT_BACKEND", "junk", "not a result backend Celery can use"),
        ("CELERY_BROKER_URL", "junk://x", "not a broker Celery can use (No such transport"),
        # kombu read a bare word as an AMQP host: the worker retried amqp://junk:5672// for ever
        ("CELERY_BROKER_URL", "junk", "not a broker Celery can use (not a URL (scheme://"),
        # "Error: Port out of range 0-65535" (exit 2), naming no setting
        ("CELERY_RESULT_BACKEND", "redis://127.0.0.1:99999/0",
         "not a result backend Celery can use (Port out of range 0-65535)"),
    ],
)
def test_a_celery_url_celery_cannot_load_stops_everything_in_one_line(
    tmp_path, monkeypatch, name, value, said
):
    # CELERY_RESULT_BACKEND=junk: the worker stopped in a 60-line traceback, each CLI write and
    # each API write failed in one, and `serve` booted gunicorn workers that died in one.
    from click.testing import CliRunner

    from api.cli import main
    from tests.test_settings import _run

    monkeypatch.setattr("api.cli_stack.os.execv", lambda *a: pytest.fail(f"gunicorn ran: {a}"))
    env = {"DISK_CACHE_ROOT": str(tmp_path), name: value}
    for args in (["register", "a"], ["serve"], ["stats"]):
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 5 and "Traceback" not in result.output, (args, result.output)
        assert result.output.startswith(f"Error: {name}={value!r}: {said}"), result.output
        assert result.output.count("\n") == 1, result.output
    # The worker, beat and Flower read it in celeryconfig.
    code, err = _run(["-c", "import celeryconfig"], env)
    assert code == 5 and err.startswith(f"cachemgr stopping: {name}="), err
    assert err.count("\n") == 0 and said in err, err  # one line (_run strips its end)


def test_a_celery_url_naming_a_database_the_server_lacks_is_said_as_a_setting():
    """It was "the Celery broker cannot be reached: DB index is out of range", exit 4."""
    from kombu.exceptions import OperationalError

    from api.cli_errors import EXIT_CONFIG, Fail, friendly
    from api.errors import broker_said

    exc = OperationalError("DB index is out of range")
    said = broker_said(exc)
    assert said.startswith("CELERY_BROKER_URL or CELERY_RESULT_BACKEND (REDIS_URL where unset) "
                           "name a database this Redis server does not have"), said  # fmt: skip

    @friendly
    def send() -> None:
        raise exc

    with pytest.raises(Fail) as failed:
        send()
    assert failed.value.exit_code == EXIT_CONFIG and str(failed.value) == said


@pytest.mark.parametrize(
    ("host", "said"),
    [("a\udcffb", "not a host name)"), ("nosuchhost.invalid", "")],  # the resolver's words
)
def test_serve_on_a_host_it_cannot_listen_on_is_one_line(tmp_path, monkeypatch, host, said):
    # gunicorn said a host that does not resolve five times, a second apart, then exited 1;
    # one not UTF-8 in a traceback.
    from click.testing import CliRunner

    from api.cli import main

    def never(*args: object) -> None:
        raise AssertionError(f"gunicorn started: {args}")

    monkeypatch.setattr("api.cli_stack.os.execv", never)
    env = {"DISK_CACHE_ROOT": str(tmp_path), "DISK_CACHE_API_TOKEN": "t", "HOST": host}
    result = CliRunner().invoke(main, ["serve"], env=env)
    assert result.exit_code == 5, result.output
    assert result.output.startswith(f"Error: HOST={host!r}: cannot listen there ({said}")
    assert result.output.count("\n") == 1, result.output


def test_a_sentinel_that_finds_no_master_is_said_in_a_short_line(tmp_path):
    # redis-py's message carries its client's repr: a 1,100-character "one line".
    from click.testing import CliRunner

    from api.cli import main

    env = {"DISK_CACHE_ROOT": str(tmp_path), "REDIS_URL": "redis+sentinel://127.0.0.1:1/gone"}
    result = CliRunner().invoke(main, ["stats"], env=env)
    assert result.exit_code == 4, result.output
    assert result.output == (
        "Error: Redis cannot be reached: No master found for 'gone' (no Sentinel at the URL "
        "answers, or none knows that name)\n"
    )


def test_names_that_were_taken_before_are_still_taken(monkeypatch):
    # The first check allowed letters, digits and _.:{}- alone: `media/prod`, `team@eu` and
    # `café` stopped workers that had run with them.
    from cachemgr.environment import cluster_of, queue_override
    from cachemgr.settings import Settings

    for name in ("media/prod", "team@eu", "café", "{eu}:media+1"):
        assert Settings(disk_cache_cluster=name).validate().disk_cache_cluster == name
        assert cluster_of({"DISK_CACHE_CLUSTER": name}) == name
        assert queue_override({"CACHEMGR_QUEUE": name}) == name
    assert cluster_of({}) == "cachemgr" and queue_override({}) is None


def test_a_celery_url_refused_is_shown_without_its_password(monkeypatch):
    from workers.urls import celery_url_problem

    monkeypatch.setenv("CELERY_RESULT_BACKEND", "junk://app:hunter2@db/x")
    said = celery_url_problem("redis://127.0.0.1:6379/0", "junk://app:hunter2@db/x")
    assert said is not None and "hunter2" not in said and "CELERY_RESULT_BACKEND=" in said


def test_every_password_of_a_failover_url_is_hidden():
    # Celery's failover URLs are split by ';': the second URL's password was shown.
    from cachemgr.connection import without_password

    shown = without_password("junk://:one@a:26379/0;junk://u:two@b:26379/0")
    assert shown == "junk://:***@a:26379/0;junk://u:***@b:26379/0"
    assert without_password("redis://h:6379/0") == "redis://h:6379/0"


def test_ctrl_c_ends_a_command_with_130_in_one_line(tmp_path, prefix):
    """Click said "Aborted!" and exited 1, as for a command that failed."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = {**os.environ, "DISK_CACHE_ROOT": str(tmp_path), "REDIS_URL": REDIS_URL,
           "DISK_CACHE_KEY_PREFIX": prefix}  # fmt: skip
    follow = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "events", "--follow"],
        cwd=Path(__file__).resolve().parents[1], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(4)  # past its imports: following the stream
        assert follow.poll() is None, follow.communicate()
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 130, err
    assert err.strip() == "interrupted", err


def test_node_option_takes_the_key_prefix_its_workers_published(
    settings, root, redis_client, monkeypatch
):
    """Workers run with DISK_CACHE_KEY_PREFIX: `cachemgr --node n2 ls` listed the empty books
    under `{n2}:` (exit 0), and its pin leased in keys no worker reads."""
    import uuid

    from click.testing import CliRunner

    from api.cli import main
    from cachemgr import DiskCache

    named = settings.with_(disk_cache_node=f"n2-{uuid.uuid4().hex[:6]}")  # prefix: the test's
    cache = DiskCache(named, redis_client)
    cache.publish_config()
    make_tree(root, "album")
    cache.register("album")
    monkeypatch.setenv("REDIS_URL", named.redis_url)
    monkeypatch.setenv("DISK_CACHE_ROOT", str(root))
    monkeypatch.setenv("DISK_CACHE_CLUSTER", named.disk_cache_cluster)
    for name in ("DISK_CACHE_NODE", "DISK_CACHE_KEY_PREFIX"):
        # Set, then unset: restored after, whatever --node writes into os.environ (the next
        # tests of this process took this node for theirs).
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    def cachemgr(*args: str):
        return CliRunner().invoke(main, ["--node", named.node, *args], prog_name="cachemgr")

    listed = cachemgr("ls", "--json")
    assert listed.exit_code == 0, listed.output
    assert [e["path"] for e in json.loads(listed.stdout)] == ["album"]
    pinned = cachemgr("pin", "album", "--ttl", "1h")
    assert pinned.exit_code == 0, pinned.output
    assert redis_client.zscore(cache.keys.pins, "album") is not None  # the workers' keys
    play = {"path": "album", "size": "4096", "hit": "1", "time": "1700000000.0"}
    redis_client.xadd(cache.keys.accesses, play)  # as the workers' access log keeps it
    export = cachemgr("trace", "export")
    assert export.exit_code == 0 and ",album," in export.stdout, export.output
    assert not list(redis_client.scan_iter(match=f"{{{named.node}}}:*"))


def test_node_option_naming_an_unnamed_node_reaches_its_books(settings, root):
    """A node run without DISK_CACHE_NODE goes by its host's name and the seed's key names:
    `cachemgr --node <that name> ls` read the empty books under `{name}:` (an empty list,
    exit 0), and its `register` failed."""
    import os
    import subprocess
    import sys

    from cachemgr import DiskCache, connect

    url = side_db(14)  # the seed's key names: a database of its own
    client = connect(url)
    client.flushdb()
    try:
        unnamed = settings.with_(disk_cache_key_prefix="", disk_cache_node="", redis_url=url)
        cache = DiskCache(unnamed, client)
        cache.publish_config()
        make_tree(root, "artist/album")
        cache.register("artist/album")
        env = {**os.environ, "REDIS_URL": url, "DISK_CACHE_ROOT": str(root),
               "DISK_CACHE_CLUSTER": unnamed.disk_cache_cluster}  # fmt: skip
        env.pop("DISK_CACHE_NODE", None)
        env.pop("DISK_CACHE_KEY_PREFIX", None)
        code = "import sys; from api.cli import main; sys.argv[0] = 'cachemgr'; main()"
        listed = subprocess.run(
            [sys.executable, "-c", code, "--node", unnamed.node, "ls", "--json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert [e["path"] for e in json.loads(listed.stdout)] == ["artist/album"]
    finally:
        client.flushdb()
        client.close()


def test_a_writes_wait_goes_on_while_the_books_redis_does_not_answer(cache, worker, monkeypatch):
    """The watch on the node's workers asks Redis each second: a Redis away a moment made the
    write stop with exit 4, blaming the result backend, where the answer came after."""
    import redis

    from api import cli_tasks

    monkeypatch.setattr(cli_tasks, "GONE_SECONDS", 0.0)
    watch = cli_tasks.worker_watch(cache)
    assert watch() is True  # the fixture's worker: alive

    def away(*_: object) -> bool:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(type(cache.registry), "alive", away)
    assert watch() is True  # not known gone: waited on
    monkeypatch.setattr(type(cache.registry), "alive", lambda *_: False)
    assert watch() is False  # known gone (past GONE_SECONDS, 0 here)
