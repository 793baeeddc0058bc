#!/usr/bin/env bash
# Revocation to stream close (issue 17, SPEC §8.2 Streams): how long after a
# key's revocation is written its open SSE stream ends at the client.
#
#   benches/streams/run.sh
#   TRIALS=50 MODE=inplace benches/streams/run.sh
#
# What it does
#   1. Builds target/release/keyward (SKIP_BUILD=1 skips; KEYWARD=path uses
#      another binary) and a snapshot with one organization.
#   2. Starts a Python SSE upstream (an event every 100 ms, forever) and
#      keyward (THREADS threads, snapshot.poll_interval_ms POLL_MS).
#   3. TRIALS times: a fresh API key is written, an SSE request with it is
#      opened through keyward and its first event read; then the key is
#      revoked — MODE=rename: a copy with revoked_at set is renamed over the
#      snapshot (the recommended way); MODE=inplace: one UPDATE committed in
#      the file — and the time from the end of that write (rename returned /
#      COMMIT returned) to the client seeing the stream end (EOF) is taken.
#      Each stream must also carry the final `event: error`.
#   4. Prints min / p50 / p90 / p99 / max in ms.
#
# Environment: TRIALS=20 MODE=rename THREADS=2 POLL_MS=1000 SKIP_BUILD=0
#   KEYWARD=target/release/keyward KEEP_TMP=0
# Results go to stdout and target/load-bench/streams-<timestamp>.txt.
set -euo pipefail

TRIALS=${TRIALS:-20}
MODE=${MODE:-rename}
THREADS=${THREADS:-2}
POLL_MS=${POLL_MS:-1000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KEYWARD=${KEYWARD:-$ROOT/target/release/keyward}

if [[ "${SKIP_BUILD:-0}" != 1 && "$KEYWARD" == "$ROOT/target/release/keyward" ]]; then
  (cd "$ROOT" && cargo build --release --bin keyward)
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ "${KEEP_TMP:-0}" == 1 ]] || rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)

"$KEYWARD" snapshot init "$TMP/snapshot.db" >/dev/null
python3 - "$TMP/snapshot.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("INSERT INTO organizations (id, plan) VALUES ('org_bench', 'bench')")
c.commit()
PY

cat > "$TMP/keyward.toml" <<TOML
[server]
listen = "127.0.0.1:$PROXY"
admin_listen = "127.0.0.1:$ADMIN"
threads = $THREADS
upgrade_sock = "$TMP/upgrade.sock"
[upstream]
address = "127.0.0.1:$UP"
[snapshot]
path = "$TMP/snapshot.db"
poll_interval_ms = $POLL_MS
[plans.bench]
requests_per_window = 1000000
TOML

python3 "$ROOT/benches/streams/sse_upstream.py" "$UP" &
PIDS+=($!)
"$KEYWARD" run --config "$TMP/keyward.toml" >"$TMP/keyward.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

mkdir -p "$ROOT/target/load-bench"
OUT="$ROOT/target/load-bench/streams-$(date +%Y%m%d-%H%M%S).txt"
{
  echo "# revocation to stream close: $TRIALS trials, MODE=$MODE, threads=$THREADS, poll_interval_ms=$POLL_MS"
  echo "# binary: $KEYWARD ($(stat -c %y "$KEYWARD" | cut -d. -f1)), $(nproc) cores"
  python3 "$ROOT/benches/streams/revoke_to_close.py" "$TMP/snapshot.db" "$PROXY" "$ADMIN" "$TRIALS" "$MODE"
} | tee "$OUT"
