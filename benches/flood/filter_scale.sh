#!/usr/bin/env bash
# The token filter at scale (issue 19): RSS of keyward on a KEYS-key
# snapshot (1,000,000 by default) before and after its token filter is
# built, how long the build takes (log line `token filter built`), and
# rename -> served times (the filter is built after the swap, off its path).
#   benches/flood/filter_scale.sh            KEYS=1000000 RELOADS=5
#   KEYWARD_BEFORE=/tmp/kw-before benches/flood/filter_scale.sh   # the same for an earlier binary first
set -euo pipefail
cd "$(dirname "$0")/../.."
KEYS="${KEYS:-1000000}"; RELOADS="${RELOADS:-5}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin keyward -q
KW=target/release/keyward
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
$KW snapshot init "$tmp/snap.db" >/dev/null
python3 benches/lib/snapshot.py "$tmp/snap.db" --keys "$KEYS" --orgs 10000 \
    --token "wvz_bench_{i}" --no-workspaces
ls -la "$tmp/snap.db" | awk '{printf "snapshot: %d keys, %d MiB\n", '"$KEYS"', $5/1048576}'
run_one() { # BINARY LABEL
  local bin=$1 label=$2 P A PID
  P=$(port); A=$(port)
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nthreads = 2\n[upstream]\naddress = "127.0.0.1:9"\n[snapshot]\npath = "%s"\npoll_interval_ms = 1000\n' "$P" "$A" "$tmp/snap.db" > "$tmp/kw.toml"
  "$bin" run --config "$tmp/kw.toml" > "$tmp/kw-$label.log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$A/readyz" >/dev/null && break; sleep 0.1; done
  rss() { awk '/VmRSS/{print int($2/1024)}' /proc/$PID/status; }
  hwm() { awk '/VmHWM/{print int($2/1024)}' /proc/$PID/status; }
  gen() { curl -s "http://127.0.0.1:$A/metrics" | awk '$1=="keyward_snapshot_generation"{print $2}'; }
  echo "#### $label: RSS when ready $(rss) MiB"
  sleep 5
  echo "  RSS 5 s later $(rss) MiB (peak $(hwm) MiB); $(grep -o 'keys=[0-9]* bytes=[0-9]* ms=[0-9]*' "$tmp/kw-$label.log" | tail -1)"
  local times=""
  for i in $(seq "$RELOADS"); do
    cp "$tmp/snap.db" "$tmp/next.db"
    sqlite3 "$tmp/next.db" "INSERT OR REPLACE INTO meta (key, value) VALUES ('generated_at', '$((1700000000 + i))')" 2>/dev/null \
      || python3 -c "import sqlite3,sys;c=sqlite3.connect(sys.argv[1]);c.execute(\"INSERT OR REPLACE INTO meta (key, value) VALUES ('generated_at', ?)\",(str(1700000000+$i),));c.commit()" "$tmp/next.db"
    local g0 t0 t1
    g0=$(gen); t0=$(date +%s%N)
    mv "$tmp/next.db" "$tmp/snap.db"
    while [ "$(gen)" = "$g0" ]; do sleep 0.005; done
    t1=$(date +%s%N)
    times="$times $(( (t1 - t0) / 1000000 ))"
    sleep 3
  done
  echo "  rename -> served (ms):$times"
  echo "  RSS after $RELOADS reloads $(rss) MiB (peak $(hwm) MiB); filter builds: $(grep -c 'token filter built' "$tmp/kw-$label.log" || true)"
  kill $PID; wait $PID 2>/dev/null || true
}
[ -n "${KEYWARD_BEFORE:-}" ] && run_one "$KEYWARD_BEFORE" before
run_one "$KW" keyward
