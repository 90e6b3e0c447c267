from __future__ import annotations

import pytest

from cachemgr.settings import GIB, Settings, SettingsError, parse_duration, parse_size


def test_defaults_are_the_seeds(tmp_path):
    s = Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path)})
    assert s.enable_disk_cache_management is True
    assert s.disk_cache_ttl_seconds == 86400
    assert s.disk_cache_max_bytes == 10 * GIB
    assert s.disk_cache_cleanup_interval == 3600
    assert s.disk_cache_lru_eviction_threshold == 0.9
    assert s.disk_cache_lru_eviction_target == 0.8
    assert s.key_prefix == ""  # the seed's key names exactly
    assert s.threshold_bytes == int(10 * GIB * 0.9)


def test_every_setting_is_read_from_the_environment(tmp_path):
    env = {
        "ENABLE_DISK_CACHE_MANAGEMENT": "false",
        "DISK_CACHE_TTL_SECONDS": "2h",
        "DISK_CACHE_MAX_BYTES": "500MB",
        "DISK_CACHE_CLEANUP_INTERVAL": "60",
        "DISK_CACHE_LRU_EVICTION_THRESHOLD": "0.95",
        "DISK_CACHE_LRU_EVICTION_TARGET": "0.5",
        "DISK_CACHE_ROOT": str(tmp_path),
        "REDIS_URL": "redis://example:6380/3",
        "DISK_CACHE_KEY_PREFIX": "mine:",
    }
    s = Settings.from_env(env)
    assert s.enable_disk_cache_management is False
    assert s.disk_cache_ttl_seconds == 7200
    assert s.disk_cache_max_bytes == 500_000_000
    assert s.disk_cache_cleanup_interval == 60
    assert s.disk_cache_lru_eviction_threshold == 0.95
    assert s.disk_cache_lru_eviction_target == 0.5
    assert s.redis_url == "redis://example:6380/3"
    assert s.key_prefix == "mine:"


@pytest.mark.parametrize(
    "text,expected",
    [("10GiB", 10 * GIB), ("500MB", 500_000_000), ("1024", 1024), ("1.5KiB", 1536), ("2 kb", 2000),
     ("10G", 10**10), ("1EiB", 2**60), ("2pb", 2 * 10**15)],
)  # fmt: skip
def test_sizes_take_units(text, expected):
    assert parse_size(text) == expected


def test_a_size_means_the_same_in_a_setting_and_in_the_simulator():
    """`--size 10G` was 10 GiB in the simulator and 10^10 bytes in DISK_CACHE_MAX_BYTES: a
    quota picked from a simulation came out 7% larger than the cache simulated."""
    from cachemgr.simulate import parse_size as cache_size

    for text in ("10G", "128M", "128MiB", "2GB", "1.5KiB", "4096", "1EiB"):
        assert cache_size(text).bytes == parse_size(text), text


def test_durations_take_units():
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("90s") == 90


@pytest.mark.parametrize(
    "threshold,target", [("0.7", 0.622222), ("0.8", 0.711111), ("0.85", 0.8), ("0.95", 0.8)]
)
def test_a_threshold_set_alone_brings_the_target_along(tmp_path, threshold, target):
    env = {"DISK_CACHE_ROOT": str(tmp_path), "DISK_CACHE_LRU_EVICTION_THRESHOLD": threshold}
    s = Settings.from_env(env)
    assert s.disk_cache_lru_eviction_target == target
    # Both given: taken as they are, and a target above the threshold still refused.
    env["DISK_CACHE_LRU_EVICTION_TARGET"] = "0.75"
    if float(threshold) >= 0.75:
        assert Settings.from_env(env).disk_cache_lru_eviction_target == 0.75
    else:
        with pytest.raises(SettingsError, match="DISK_CACHE_LRU_EVICTION_TARGET=0.75"):
            Settings.from_env(env)


@pytest.mark.parametrize(
    "env,names",
    [
        ({"DISK_CACHE_TTL_SECONDS": "-5"}, "DISK_CACHE_TTL_SECONDS='-5'"),
        ({"DISK_CACHE_LRU_EVICTION_THRESHOLD": "1.5"}, "DISK_CACHE_LRU_EVICTION_THRESHOLD=1.5"),
        # The text as typed, not the converted 0.0.
        ({"DISK_CACHE_LRU_EVICTION_THRESHOLD": "0"}, "DISK_CACHE_LRU_EVICTION_THRESHOLD=0:"),
        # float() took other scripts' digits: '١' was 1.0 (a size or a duration refused it).
        ({"DISK_CACHE_LRU_EVICTION_THRESHOLD": "١"}, "THRESHOLD='١': not a number (e.g. 0.9)"),
        ({"DISK_CACHE_LRU_EVICTION_TARGET": "8_5e-2"}, "TARGET='8_5e-2': not a number"),
        (
            {"DISK_CACHE_LRU_EVICTION_TARGET": "0.95"},
            "DISK_CACHE_LRU_EVICTION_TARGET=0.95",
        ),
        ({"DISK_CACHE_MAX_BYTES": "10XB"}, "DISK_CACHE_MAX_BYTES='10XB'"),
        ({"ENABLE_DISK_CACHE_MANAGEMENT": "maybe"}, "ENABLE_DISK_CACHE_MANAGEMENT='maybe'"),
        ({"DISK_CACHE_EVICTION_POLICY": "random"}, "DISK_CACHE_EVICTION_POLICY='random'"),
        # Longer than `?node=` and forget-node take: a node nothing could name.
        ({"DISK_CACHE_NODE": "n" * 101}, "(101 characters): 1 to 100 of"),
        ({"DISK_CACHE_NODE": "a b"}, "DISK_CACHE_NODE='a b': 1 to 100 of"),
    ],
)
def test_bad_values_stop_with_one_line_naming_setting_and_value(tmp_path, env, names):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path), **env})
    message = str(err.value)
    assert names in message
    assert "\n" not in message


def test_missing_root_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="DISK_CACHE_ROOT=.*does not exist"):
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path / "nope")})
    (tmp_path / "a-file").write_text("")  # it said "does not exist" of a file
    with pytest.raises(SettingsError, match=r"DISK_CACHE_ROOT=.*a-file': is not a directory \("):
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path / "a-file")})


def test_a_named_node_gets_one_hash_tag(tmp_path):
    s = Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path), "DISK_CACHE_NODE": "alpha"})
    assert s.key_prefix == "{alpha}:"
    assert s.node == "alpha"


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    full = {**os.environ, **env}
    done = subprocess.run(
        [sys.executable, *args], cwd=repo, env=full, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return done.returncode, done.stderr.strip()


@pytest.mark.parametrize("name", ["DISK_CACHE_CLUSTER", "CACHEMGR_QUEUE"])
def test_beat_and_workers_refuse_a_bad_name_in_one_line(name):
    # Beat read DISK_CACHE_CLUSTER alone, unchecked: a name the workers refuse.
    code, err = _run(["-c", "import celeryconfig"], {name: "two words"})
    assert code == 5 and "Traceback" not in err, err
    assert err == f"cachemgr stopping: {name}='two words': 1 to 200 printable characters, no spaces"


@pytest.mark.parametrize("value", ["abc", "-5", "0", "0.5"])
def test_beat_refuses_a_bad_cleanup_interval_in_one_line(value):
    # celeryconfig is what beat (and every worker) loads: an interval of 0 flooded the queue.
    code, err = _run(["-c", "import celeryconfig"], {"DISK_CACHE_CLEANUP_INTERVAL": value})
    assert code == 5 and "Traceback" not in err, err
    assert err.splitlines() == [err] and "DISK_CACHE_CLEANUP_INTERVAL" in err and value in err
    # Worded as the settings word it everywhere else (it said "'0': must be at least 1 s").
    try:
        Settings.from_env({"DISK_CACHE_CLEANUP_INTERVAL": value, "DISK_CACHE_ROOT": "/tmp"})
    except SettingsError as exc:
        assert err == f"cachemgr stopping: {exc}"
    else:
        pytest.fail(f"{value!r} was taken")


@pytest.mark.parametrize(
    "env,name",
    [({"DISK_CACHE_TTL_SECONDS": "abc"}, "DISK_CACHE_TTL_SECONDS"), ({"PORT": "abc"}, "PORT")],
)
def test_serve_refuses_bad_settings_in_one_line_before_starting(tmp_path, env, name):
    full = {"DISK_CACHE_ROOT": str(tmp_path), **env}
    code, err = _run(["-m", "api.cli", "serve"], full)
    assert code == 5 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and name in err


def test_a_quota_beyond_what_redis_counts_is_refused(tmp_path):
    # 100000000 TiB passed before, then broke GET /cache/stats (a 64-bit overflow).
    with pytest.raises(SettingsError, match="DISK_CACHE_MAX_BYTES=.*at most 9223372036854775807"):
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path),
                           "DISK_CACHE_MAX_BYTES": "100000000TiB"})  # fmt: skip


HUGE = "9" * 400


@pytest.mark.parametrize(
    "name",
    [
        "DISK_CACHE_MAX_BYTES", "DISK_CACHE_TTL_SECONDS", "DISK_CACHE_CLEANUP_INTERVAL",
        "DISK_CACHE_MIN_AGE_SECONDS", "DISK_CACHE_MIN_FREE_BYTES", "DISK_CACHE_BATCH_SIZE",
        "DISK_CACHE_LOCK_TIMEOUT_SECONDS", "DISK_CACHE_EVENTS_MAXLEN",
        "DISK_CACHE_ACCESS_LOG_MAXLEN", "DISK_CACHE_MAX_EVICTIONS_PER_RUN",
        "DISK_CACHE_ENTRY_DEPTH",
    ],
)  # fmt: skip
@pytest.mark.parametrize("digits", [400, 5000])
def test_a_huge_number_is_a_settings_error_naming_the_setting(tmp_path, name, digits):
    # int(float(...)) raised OverflowError: a traceback from the CLI and from create_app().
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path), name: "9" * digits})
    message = str(err.value)
    assert message.startswith(f"{name}='99999") and "must be at most" in message
    assert "\n" not in message and len(message) < 200


@pytest.mark.parametrize(
    "name,value,bound",
    [
        # Each passed start-up, then broke the books or the API half-way.
        ("DISK_CACHE_TTL_SECONDS", "99999999999999999", "315360000 s (10 years)"),
        ("DISK_CACHE_TTL_SECONDS", str(10**30), "315360000 s (10 years)"),
        ("DISK_CACHE_CLEANUP_INTERVAL", "3651d", "315360000 s (10 years)"),
        ("DISK_CACHE_LOCK_TIMEOUT_SECONDS", "99999999999999999", "86400 s (a day)"),
        ("DISK_CACHE_LOCK_TIMEOUT_SECONDS", "2d", "86400 s (a day)"),
        ("DISK_CACHE_BATCH_SIZE", "100001", "100000"),
        ("DISK_CACHE_EVENTS_MAXLEN", "100000001", "100000000"),
        ("DISK_CACHE_ACCESS_LOG_MAXLEN", "100000001", "100000000"),
        ("DISK_CACHE_MAX_EVICTIONS_PER_RUN", "99999999999", "10000000"),
        ("DISK_CACHE_ENTRY_DEPTH", "101", "100"),
    ],
)
def test_settings_past_their_upper_bound_are_refused(tmp_path, name, value, bound):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path), name: value})
    assert str(err.value) == f"{name}={value}: must be at most {bound}"


def test_settings_at_their_upper_bound_are_taken(tmp_path):
    s = Settings.from_env({
        "DISK_CACHE_ROOT": str(tmp_path), "DISK_CACHE_TTL_SECONDS": "3650d",
        "DISK_CACHE_LOCK_TIMEOUT_SECONDS": "1d", "DISK_CACHE_BATCH_SIZE": "100000",
        "DISK_CACHE_EVENTS_MAXLEN": "100000000",
    })  # fmt: skip
    assert s.disk_cache_ttl_seconds == 3650 * 86400 and s.disk_cache_lock_timeout_seconds == 86400
    with pytest.raises(SettingsError, match="DISK_CACHE_BATCH_SIZE=100001: must be at most"):
        s.with_(disk_cache_batch_size=100001)  # the same bounds for settings made in code


def test_the_documented_maximum_quota_is_taken_exactly(tmp_path):
    # float() made it 2^63 and refused it as "=9223372036854775808: must be at most ...807".
    env = {"DISK_CACHE_ROOT": str(tmp_path), "DISK_CACHE_MAX_BYTES": "9223372036854775807"}
    assert Settings.from_env(env).disk_cache_max_bytes == 2**63 - 1
    with pytest.raises(SettingsError) as err:
        Settings.from_env({**env, "DISK_CACHE_MAX_BYTES": "9223372036854775808"})
    assert str(err.value).startswith("DISK_CACHE_MAX_BYTES=9223372036854775808: must be at most")
    assert parse_size("1.5KiB") == 1536 and parse_size("1.1MiB") == 1153433


@pytest.mark.parametrize("value", ["0.5", "1.9", "1.9s", "0.01m"])
def test_a_fraction_of_a_second_is_refused_not_truncated(tmp_path, value):
    # 0.5 became 0 ("=0: must be > 0"), 1.9 silently 1.
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path), "DISK_CACHE_TTL_SECONDS": value})
    assert str(err.value) == (
        f"DISK_CACHE_TTL_SECONDS={value!r}: not a whole number of seconds: {value!r}"
    )
    assert parse_duration("1.5m") == 90


@pytest.mark.parametrize(
    "name,value", [("DISK_CACHE_BATCH_SIZE", "2.5"), ("DISK_CACHE_EVENTS_MAXLEN", "1e4")]
)
def test_a_count_must_be_written_in_digits(tmp_path, name, value):
    with pytest.raises(SettingsError, match=f"{name}='{value}': not a whole number"):
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path), name: value})


@pytest.mark.parametrize(
    "url,why",
    [
        ("redis://127.0.0.1:6379/abc", "the database 'abc' is not a number"),
        ("redis://:secret@127.0.0.1:6379/abc", "the database 'abc' is not a number"),
        ("redis://127.0.0.1:6379/0?db=x", "the database 'x' is not a number"),
        ("redis://127.0.0.1:port/0", "not a Redis URL"),
        ("redis+sentinel://h:26379/mymaster/x", "the database 'x' is not a number"),
        ("redis+sentinel://:secret@h:26379/mymaster/x", "the database 'x' is not a number"),
        ("redis+sentinel://:secret@h/mymaster", "sentinel 'h' needs a host and a numeric port"),
        ("unix:///run/redis.sock?db=x", "the database 'x' is not a number"),
        # A traceback from `cachemgr serve` and `up`; a worker that never stopped.
        ("redis://[::1", "not a Redis URL (Invalid IPv6 URL)"),
        ("redis://:secret@[zz]:6379/0", "not a Redis URL"),
        ("redis://127.0.0.1:6379/0?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("redis+cluster://h:7000/0?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("redis://:p@secret@[zz]:6379/0", "not a Redis URL"),  # masked to the last @
        ("redis://:secret@[zz]:6379/0?x=a@b", "'redis://:***@[zz]:6379/0?x=a@b'"),  # not past
        # redis-py refused it at every connection, said as Redis unreachable
        ("redis+cluster://h:7000/1", "a Redis Cluster has database 0 alone, not 1"),
        ("redis+cluster://h:7000?db=2", "a Redis Cluster has database 0 alone, not 2"),
    ],
)
def test_a_redis_url_whose_database_is_not_a_number_is_refused(tmp_path, url, why):
    # redis-py reads `/abc` as database 0: another node's books, silently.
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path), "REDIS_URL": url})
    assert str(err.value).startswith("REDIS_URL=") and why in str(err.value)
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/3", "rediss://u:p@h:6380/1?ssl_cert_reqs=none",
        "redis+sentinel://a:26379,b:26380/mymaster/2", "redis+cluster://h:7000",
        "unix:///run/redis.sock?db=2",
    ],
)  # fmt: skip
def test_good_redis_urls_are_taken(tmp_path, url):
    assert Settings.from_env({"DISK_CACHE_ROOT": str(tmp_path), "REDIS_URL": url}).redis_url == url


def test_a_sentinel_url_with_a_password_gives_it_to_the_master():
    # The password was read as part of the first sentinel's host name (':secret@a'): taken,
    # then no sentinel could be reached.
    from cachemgr.connection import connect, sentinel_parts

    url = "redis+sentinel://app:s%40cret@a:26379,b:26380/media/2"
    parts = sentinel_parts(url)
    assert parts.sentinels == [("a", 26379), ("b", 26380)] and parts.master == "media"
    assert (parts.db, parts.username, parts.password) == ("2", "app", "s@cret")
    assert sentinel_parts("redis+sentinel://:pw@a:1/m").username is None
    assert sentinel_parts("redis+sentinel://a:1").password is None
    assert sentinel_parts("redis+sentinel://[::1]:26379/m").sentinels == [("::1", 26379)]
    client = connect(url)  # master_for connects at its first command
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["username"], kwargs["db"]) == ("s@cret", "app", 2)
    sentinel = client.connection_pool.sentinel_manager.sentinels[0].connection_pool
    assert sentinel.connection_kwargs["host"] == "a"
    assert sentinel.connection_kwargs.get("password") is None


def test_a_bad_log_level_names_the_setting_and_the_levels():
    from cachemgr.environment import log_level

    assert log_level({"DISK_CACHE_LOG_LEVEL": "debug"}) == "DEBUG"
    assert log_level({}, default="WARNING") == "WARNING"
    with pytest.raises(SettingsError) as err:
        log_level({"DISK_CACHE_LOG_LEVEL": "BOGUS"})
    assert str(err.value) == (
        "DISK_CACHE_LOG_LEVEL='BOGUS': not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
    )


@pytest.mark.parametrize("value", [HUGE, "99999999999999999", "1.5"])
def test_beat_refuses_a_huge_or_fractional_interval_in_one_line(value):
    code, err = _run(["-c", "import celeryconfig"], {"DISK_CACHE_CLEANUP_INTERVAL": value})
    assert code == 5 and "Traceback" not in err, err
    assert err.splitlines() == [err] and "DISK_CACHE_CLEANUP_INTERVAL" in err


@pytest.mark.parametrize(
    "env,name",
    [
        ({"WEB_CONCURRENCY": "abc"}, "WEB_CONCURRENCY"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
        ({"WEB_THREADS": "x"}, "WEB_THREADS"),
        ({"DISK_CACHE_API_READ_AUTH": "maybe"}, "DISK_CACHE_API_READ_AUTH"),
        ({"DISK_CACHE_MAX_BYTES": HUGE}, "DISK_CACHE_MAX_BYTES"),
    ],
)
def test_serve_refuses_bad_process_settings_in_one_line(tmp_path, env, name):
    code, err = _run(["-m", "api.cli", "serve"], {"DISK_CACHE_ROOT": str(tmp_path), **env})
    assert code == 5 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and name in err


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path):
    # gunicorn tried the port again and again, an error line each time, then exited 1.
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, err = _run(
            ["-m", "api.cli", "serve"], {"DISK_CACHE_ROOT": str(tmp_path), "PORT": str(port)}
        )
    assert code == 5 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and f"PORT={port}: cannot listen on 127.0.0.1:{port}" in err


def test_the_port_check_binds_an_ipv6_host_as_gunicorn_does():
    # An IPv4 socket refused HOST=:: ("Name or service not known") though gunicorn serves it.
    import socket

    from api.stack import check_free
    from cachemgr import SettingsError

    with socket.socket(socket.AF_INET6) as held:
        held.bind(("::1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SettingsError, match=f"PORT={port}: cannot listen on"):
            check_free("[::1]", port)
    check_free("::", port)  # free again: no error
    check_free("[::]", port)


def test_a_bad_web_concurrency_breaks_nothing_but_serve(tmp_path):
    # It was read when api.cli was imported: every command and create_app() failed on it.
    from tests.conftest import REDIS_URL

    env = {"WEB_CONCURRENCY": "abc", "DISK_CACHE_ROOT": str(tmp_path), "REDIS_URL": REDIS_URL}
    code, err = _run(["-c", "from api import create_app; create_app()"], env)
    assert code == 0, err
    code, err = _run(["-m", "api.cli", "stats", "--help"], env)
    assert code == 0, err


def test_up_refuses_a_bad_embedded_redis_port_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(CACHEMGR_REDIS_PORT="abc", CACHEMGR_STATE_DIR=str(tmp_path / "state"),
               DISK_CACHE_ROOT=str(tmp_path))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "up"], cwd=Path(__file__).resolve().parents[1],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    err = done.stderr.strip()
    assert done.returncode == 5 and "Traceback" not in err, err
    assert err.splitlines() == [err] and "CACHEMGR_REDIS_PORT='abc'" in err
    assert not (tmp_path / "state").exists()  # refused before anything was started or made
    # A state directory that cannot be made: its setting named (it was "Error: /x/y: No
    # such file or directory", exit 1); one a few levels deep is made whole.
    (tmp_path / "a-file").write_text("")
    env.update(CACHEMGR_REDIS_PORT="", CACHEMGR_STATE_DIR=str(tmp_path / "a-file" / "state"))
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "up"], cwd=Path(__file__).resolve().parents[1],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    err = done.stderr.strip()
    assert done.returncode == 5 and err.splitlines() == [err], err
    assert f"CACHEMGR_STATE_DIR='{tmp_path / 'a-file' / 'state'}': Not a directory" in err


def test_the_workers_published_settings_replace_this_processs_only_where_they_differ():
    from cachemgr.published import enforced

    base = Settings(disk_cache_root="/tmp")
    published = {"max_bytes": base.disk_cache_max_bytes, "threshold": 0.9, "policy": "lru",
                 "enabled": True, "node": "elsewhere", "root": "/other"}  # fmt: skip
    assert enforced(base, published) is base  # the usual case: nothing copied
    assert enforced(base, {**published, "threshold": "0.9"}) is base  # equal once converted
    theirs = enforced(base, {**published, "max_bytes": 5 * 2**30, "ttl_seconds": 60})
    assert theirs.disk_cache_max_bytes == 5 * 2**30 and theirs.disk_cache_ttl_seconds == 60
    assert theirs.disk_cache_root == base.disk_cache_root  # only what the workers enforce


def test_requests_gunicorn_cannot_parse_are_answered_in_the_apis_json(tmp_path, prefix):
    # A 9 KB request line (a long download name) was answered with gunicorn's HTML page.
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DISK_CACHE_ROOT": str(tmp_path), "PORT": str(port),
           "WEB_CONCURRENCY": "1", "DISK_CACHE_KEY_PREFIX": prefix}  # fmt: skip
    serve = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve"], cwd=Path(__file__).resolve().parents[1],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ask(request: bytes) -> tuple[str, dict]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.decode().partition("\r\n\r\n")
        return head, json.loads(body)

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and serve.poll() is None
                time.sleep(0.2)
        long = b"GET /cache/directories/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        head, said = ask(long)
        assert head.startswith("HTTP/1.1 414 ") and "Content-Type: application/json" in head
        assert said == {"status": 414, "code": "uri_too_long",
                        "message": "Request Line is too large (9032 > 8190)"}  # fmt: skip
        head, said = ask(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert head.startswith("HTTP/1.1 400 ") and said["code"] == "bad_request"
        assert "Bad Header" in said["message"]
        # A transfer coding gunicorn does not take: a 501, said as one (it read "Bad Request").
        head, said = ask(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Transfer-Encoding: foo\r\n\r\n")  # fmt: skip
        assert head.startswith("HTTP/1.1 501 Not Implemented"), head
        assert said["code"] == "not_implemented", said
        # A chunked body gunicorn's reader cannot read, on any route: a 400, not a 500.
        for chunks in (b"zz\r\n", b"2\r\nabXY"):  # a size that is no number, no terminator
            head, said = ask(b"GET /cache/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                             + chunks)  # fmt: skip
            assert head.startswith("HTTP/1.1 400 "), (head, said)
            assert "body" in said["message"] and "could not be read" in said["message"], said
    finally:
        serve.terminate()
        serve.wait(timeout=30)


@pytest.mark.parametrize(
    "root", ["/", "/etc", "/usr/", "/var/lib/../lib", "/sbin", "/home/alice", "HOME"]
)
def test_a_system_or_home_directory_is_no_cache_root(root, monkeypatch, tmp_path):
    # DISK_CACHE_ROOT=/ was taken: a reconcile's plan booked boot, etc, home, usr ... as
    # downloads for the quota passes to evict.
    monkeypatch.setenv("HOME", str(tmp_path))
    kind = "a home directory" if root in ("HOME", "/home/alice") else "a system directory"
    root = str(tmp_path) if root == "HOME" else root
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DISK_CACHE_ROOT": root}, require_root=False)
    said = str(err.value)
    assert said.startswith("DISK_CACHE_ROOT=") and f": {kind} (" in said, said
    inside = tmp_path / "downloads"
    inside.mkdir()
    assert Settings.from_env({"DISK_CACHE_ROOT": str(inside)}).disk_cache_root == str(inside)
