#!/usr/bin/env bash
# The test command: set-up (venv, install, Redis) then the whole suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The tests' server (CACHEMGR_TEST_REDIS_URL), not the one REDIS_URL may name for the app.
REDIS_URL="${CACHEMGR_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}" bash scripts/ensure-redis.sh
bash scripts/ensure-debian.sh chromium chromium fonts-dejavu-core  # the status page, in a browser
bash scripts/ensure-debian.sh promtool prometheus  # the alert rules' unit tests (no service run)
bash scripts/ensure-debian.sh curl curl  # the seed's curl examples, run as written
.venv/bin/ruff check .
.venv/bin/mypy
# Two processes: most of the suite's time is spent waiting (timeouts, restarts, workers), and
# each process has a Celery worker and Redis databases of its own (tests/conftest.py).
# CACHEMGR_TEST_PROCESSES=0 runs it in this one process.
exec .venv/bin/python -m pytest -n "${CACHEMGR_TEST_PROCESSES:-2}" --dist worksteal "$@"
