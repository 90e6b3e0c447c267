#!/usr/bin/env bash
# Makes sure a Redis answers at REDIS_URL (default 127.0.0.1:6379): starts redis-server when
# nothing answers, installing Debian's package when it is missing.
set -euo pipefail
url=${REDIS_URL:-redis://127.0.0.1:6379/0}
hostport=${url#redis://}; hostport=${hostport%%/*}; hostport=${hostport##*@}
host=${hostport%%:*}; port=${hostport##*:}; [ "$port" = "$host" ] && port=6379
ping() { python3 - "$host" "$port" <<'PY'
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG")
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
ping && exit 0
if ! command -v redis-server >/dev/null; then
  echo "redis-server missing: installing Debian's package" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
echo "starting redis-server on $host:$port" >&2
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir /tmp --logfile "/tmp/cachemgr-redis-$port.log"
for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
echo "redis-server did not answer on $host:$port" >&2
exit 1
