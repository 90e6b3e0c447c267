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
    # Some gauges exist only after a cleanup, and the over-threshold one only while usage is
    # above the threshold: books marked initialized, so that the cleanup keeps the fake usage.
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
