#!/usr/bin/env bash
# Makes sure promtool (Debian's prometheus package) is there for the alert rules' unit tests
# (tests/test_alerts.py). Without it those tests are skipped, saying so; nothing else needs it.
set -euo pipefail
command -v promtool >/dev/null && exit 0
echo "promtool missing: installing Debian's prometheus package" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: cannot install promtool; the alert rule tests will be skipped" >&2
  exit 0
fi
apt-get update -qq
# No service is started here: only the promtool binary is used.
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  prometheus >/dev/null; then
  echo "prometheus did not install: the alert rule tests will be skipped" >&2
fi
exit 0
