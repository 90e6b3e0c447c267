"""deploy/prometheus-alerts.yml: valid rules that use only what /metrics exports.

With promtool (Debian's `prometheus` package) the rules are checked and their unit tests
(deploy/prometheus-alerts.test.yml) run; without it, the file is parsed and every metric name
in every expression is matched against a real scrape. The name check runs in both cases, since
promtool accepts a rule on a metric that nothing exports (it would just never fire).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-alerts.yml"
RULE_TESTS = RULES.with_name("prometheus-alerts.test.yml")
NAME = re.compile(r"\bcachemgr[a-zA-Z0-9_:]*")
PROMTOOL = shutil.which("promtool")


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_alerts_the_issue_asks_for_are_there():
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert {"CacheUsageAboveThreshold", "CacheCleanupFailing", "CacheHitRatioFalling"} <= set(
        alerts
    )
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        assert rule["annotations"]["summary"], name


def test_every_metric_in_every_expression_is_exported(client, cache):
    # Some gauges exist only after a cleanup (beat's, for the periodic one): books marked
    # initialized, so that the cleanup keeps the fake usage above the threshold.
    from cachemgr.cleanup import cleanup

    cache.client.set(cache.keys.initialized, "1")
    cache.client.set(cache.keys.bytes, cache.settings.threshold_bytes + 1)
    cleanup(cache, enforce=False, periodic=True)  # as beat runs it
    text = client.get("/metrics").get_data(as_text=True)
    exported = set()
    for family in text_string_to_metric_families(text):
        exported |= {s.name for s in family.samples}
    recorded = {r["record"] for r in rules() if "record" in r}
    used = {name for r in rules() for name in NAME.findall(r["expr"])}
    assert used, "no cachemgr metric found in the rules"
    assert used <= exported | recorded, sorted(used - exported - recorded)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def promtool_case(name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run one named group of deploy/prometheus-alerts.test.yml on its own, so that a pytest
    failure names the case."""
    assert PROMTOOL is not None
    doc = yaml.safe_load(RULE_TESTS.read_text())
    cases = [case for case in doc["tests"] if case.get("name") == name]
    assert len(cases) == 1, name
    one = tmp_path / "case.test.yml"
    one.write_text(yaml.safe_dump({**doc, "rule_files": [str(RULES)], "tests": cases}))
    return subprocess.run(
        [PROMTOOL, "test", "rules", one.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_alerts_do_not_miss_a_beat_that_never_ran_or_a_sliding_history():
    """Without promtool, the shape of the fixes at least: the usage alert goes by Prometheus'
    own record (the since-gauge's history reaches back too little under steady
    registrations), and the cleanup alert by the node's own judgement of overdue runs (a beat
    that never ran, a scheduler started again), with a `for:`."""
    usage = [r for r in rules() if r.get("alert") == "CacheUsageAboveThreshold"]
    assert usage and all("over_threshold_since" not in r["expr"] for r in usage)
    assert any("_over_time(" in r["expr"] or r.get("for") for r in usage)
    late = [r for r in rules() if r.get("alert") == "CacheCleanupNotRunning"]
    assert len(late) == 1 and "cachemgr_periodic_overdue" in late[0]["expr"] and late[0]["for"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_usage_alert_fires_under_steady_registrations(tmp_path):
    done = promtool_case("usage above the threshold under steady registrations", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_cleanup_not_running_fires_when_the_node_says_its_cleanups_are_overdue(tmp_path):
    done = promtool_case("periodic cleanups overdue", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
