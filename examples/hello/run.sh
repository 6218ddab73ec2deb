#!/usr/bin/env bash
# Runs the `catalog` example: serves examples/hello/shop on 127.0.0.1 with Python's file
# server, RUNs the topology on a fresh embedded store, prints the report, stops the server.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${SHOP_PORT:-8089}"
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$here/shop" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python3 - "$port" <<'PY' && break
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
PY
  sleep 0.1
done
store="$(mktemp -d)/mend.db"
export SHOP_URL="http://127.0.0.1:$port"
cargo run -q -p mend-cli -- --store "$store" --topologies "$here/topologies" run catalog --wait "$@"
