#!/usr/bin/env bash
# Browser end-to-end test of the web UI: builds `mend`, starts a tiny target server and
# `mend serve` on free 127.0.0.1 ports with a temporary store and topologies, and runs
# e2e/ui.test.mjs in headless Debian chromium (playwright-core, never a downloaded browser).
#
#   bash e2e/run.sh                       screenshots go to $CARGO_TARGET_DIR/e2e-screenshots
#   bash e2e/run.sh --update-screenshots  ...to docs/screenshots/, the README's pictures
#
# MEND_BIN=path skips the build and tests that binary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mend-target}"
shots="$CARGO_TARGET_DIR/e2e-screenshots"
case "${1:-}" in
  "") ;;
  --update-screenshots) shots="$root/docs/screenshots" ;;
  *) echo "usage: bash e2e/run.sh [--update-screenshots]" >&2; exit 2 ;;
esac

if [ -z "${MEND_BIN:-}" ]; then
  cargo build -q -p mend-cli
  MEND_BIN="$CARGO_TARGET_DIR/debug/mend"
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "e2e: installing chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null 2>&1 || { echo "e2e: node (>= 20) is needed" >&2; exit 1; }
(cd e2e && npm ci --prefer-offline --no-audit --no-fund --silent)

work=$(mktemp -d -t mend-e2e.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Waits until `file` has a line matching `pattern` and prints the match's first group.
wait_for() {
  local file=$1 pattern=$2 what=$3
  for _ in $(seq 1 150); do
    if [ -s "$file" ] && grep -qE "$pattern" "$file"; then
      sed -nE "s#.*$pattern.*#\\1#p" "$file" | head -n1
      return 0
    fi
    sleep 0.1
  done
  echo "e2e: $what did not start:" >&2
  cat "$file" >&2
  return 1
}

node e2e/target.mjs >"$work/target.log" 2>&1 &
pids+=($!)
target_port=$(wait_for "$work/target.log" 'listening ([0-9]+)' 'the target server')
export E2E_TARGET_URL="http://127.0.0.1:$target_port"

mkdir -p "$work/topologies"
cat >"$work/topologies/products.yaml" <<'YAML'
# A product push whose target rejects a product without a name (422): it ends in the trash.
name: products
description: Products into the e2e marketplace; each needs its category there first.
systems:
  target:
    url: "${E2E_TARGET_URL}"
    timeout: 5s
events:
  run: push-product
nodes:
  push-product:
    http: { system: target, post: /products }
    requires:
      category:
        key: "category:{{ payload.category_id }}"
        check: { system: target, get: "/categories/{{ payload.category_id }}" }
        cache: { name: categories, ttl: 10m }
        sync: { topology: category-sync, event: run, data: { id: "{{ payload.category_id }}" } }
        max_wait: 10m
    next: { ok: delivered }
  delivered:
    map: "{id, delivered: true}"
YAML
cat >"$work/topologies/category-sync.yaml" <<'YAML'
name: category-sync
description: Creates one category in the e2e marketplace.
systems:
  target:
    url: "${E2E_TARGET_URL}"
    timeout: 5s
events:
  run: push-category
nodes:
  push-category:
    http: { system: target, post: /categories, json: { id: "{{ payload.id }}" } }
YAML

"$MEND_BIN" --store "$work/mend.db" --topologies "$work/topologies" serve --listen 127.0.0.1:0 \
  >"$work/mend.log" 2>&1 &
pids+=($!)
mend_url=$(wait_for "$work/mend.log" 'listening on (http://[0-9.:]+)' 'mend serve')

status=0
(cd e2e && MEND_URL="$mend_url" TARGET_URL="$E2E_TARGET_URL" SCREENSHOTS="$shots" \
  node --test --test-reporter=spec --test-concurrency=1 ui.test.mjs) || status=$?
echo "e2e: screenshots in $shots"
if [ "$status" -ne 0 ]; then
  echo "--- mend serve log (last 40 lines) ---" >&2
  tail -n 40 "$work/mend.log" >&2
fi
exit "$status"
