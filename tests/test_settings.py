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
    [("10GiB", 10 * GIB), ("500MB", 500_000_000), ("1024", 1024), ("1.5KiB", 1536), ("2 kb", 2000)],
)
def test_sizes_take_units(text, expected):
    assert parse_size(text) == expected


def test_durations_take_units():
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("90s") == 90


@pytest.mark.parametrize(
    "env,names",
    [
        ({"DISK_CACHE_TTL_SECONDS": "-5"}, "DISK_CACHE_TTL_SECONDS='-5'"),
        ({"DISK_CACHE_LRU_EVICTION_THRESHOLD": "1.5"}, "DISK_CACHE_LRU_EVICTION_THRESHOLD=1.5"),
        ({"DISK_CACHE_LRU_EVICTION_THRESHOLD": "0"}, "DISK_CACHE_LRU_EVICTION_THRESHOLD=0.0"),
        (
            {"DISK_CACHE_LRU_EVICTION_TARGET": "0.95"},
            "DISK_CACHE_LRU_EVICTION_TARGET=0.95",
        ),
        ({"DISK_CACHE_MAX_BYTES": "10XB"}, "DISK_CACHE_MAX_BYTES='10XB'"),
        ({"ENABLE_DISK_CACHE_MANAGEMENT": "maybe"}, "ENABLE_DISK_CACHE_MANAGEMENT='maybe'"),
        ({"DISK_CACHE_EVICTION_POLICY": "random"}, "DISK_CACHE_EVICTION_POLICY='random'"),
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


@pytest.mark.parametrize("value", ["abc", "-5", "0", "0.5"])
def test_beat_refuses_a_bad_cleanup_interval_in_one_line(value):
    # celeryconfig is what beat (and every worker) loads: an interval of 0 flooded the queue.
    code, err = _run(["-c", "import celeryconfig"], {"DISK_CACHE_CLEANUP_INTERVAL": value})
    assert code == 1 and "Traceback" not in err, err
    assert err.splitlines() == [err] and "DISK_CACHE_CLEANUP_INTERVAL" in err and value in err


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
