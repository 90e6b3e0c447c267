#!/usr/bin/env bash
# The test command: set-up (venv, install, Redis) then the whole suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/ensure-redis.sh
bash scripts/ensure-chromium.sh  # the status page is tested in a real headless browser
bash scripts/ensure-promtool.sh  # the alert rules' unit tests (promtool)
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
