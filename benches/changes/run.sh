#!/usr/bin/env bash
# Incremental changes at scale (issue 17, SPEC §2.1): change-to-enforcement
# latency and the cost of in-place changes at 1,000,000 keys, 100,000 warm.
#
#   benches/changes/run.sh
#   KEYS=200000 LOAD_KEYS=20000 TRIALS=20 benches/changes/run.sh   # quicker
#
# What it does
#   1. Builds target/release/keyward (SKIP_BUILD=1 skips) and a snapshot of
#      KEYS API keys over ORGS organizations as benches/load/snapshot_scale.sh
#      does (token i = "wvz_" + sha256("bench-i")[:40]), plus an empty
#      `changes` table (SPEC §2.1).
#   2. Starts nginx (upstream) and keyward (shipped routes, THREADS threads,
#      poll interval POLL_MS), warms the verdict cache with wrk over LOAD_KEYS
#      distinct keys for DURATION s.
#   3. Under that wrk load (LOAD_KEYS keys, all 200):
#      (a) in place: TRIALS times, a key outside wrk's set is made warm, then
#          revoked in one transaction with its `changes` row; latency from
#          the COMMIT to the first 401 (probe.py, one keep-alive connection);
#      (b) by rename: RENAMES times, the same with a prepared copy renamed
#          over the snapshot (full path: cache refilled).
#   4. Throughput: wrk DURATION s with no writes, then DURATION s while
#      probe.py writes RATE logged in-place revocations per second; req/s of
#      both and the verdict cache hit ratio (hit / (hit + miss)) over the run
#      with writes, and keyward_snapshot_swaps_total by path.
#
# Environment: KEYS=1000000 ORGS=10000 LOAD_KEYS=100000 THREADS=2 POLL_MS=1000
#   DURATION=15 TRIALS=50 RENAMES=5 RATE=10 CONNECTIONS=32 SKIP_BUILD=0 KEEP_TMP=0
#   CACHE_CAPACITY=2*LOAD_KEYS CACHE_TTL_S=3600 (cache.capacity, cache.ttl_s)
# Results go to stdout and target/load-bench/changes-<timestamp>.txt.
set -euo pipefail

KEYS=${KEYS:-1000000}
ORGS=${ORGS:-10000}
LOAD_KEYS=${LOAD_KEYS:-100000}
THREADS=${THREADS:-2}
POLL_MS=${POLL_MS:-1000}
DURATION=${DURATION:-15}
TRIALS=${TRIALS:-50}
RENAMES=${RENAMES:-5}
RATE=${RATE:-10}
CONNECTIONS=${CONNECTIONS:-32}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
CACHE_CAPACITY=${CACHE_CAPACITY:-$((2 * LOAD_KEYS))}
CACHE_TTL_S=${CACHE_TTL_S:-3600}
export ORGS

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/benches/changes
KEYWARD=$ROOT/target/release/keyward
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

die() { echo "changes/run.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release --bin keyward"
    (cd "$ROOT" && cargo build --release --quiet --bin keyward)
fi
[ -x "$KEYWARD" ] || die "$KEYWARD missing"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# shellcheck source=../load/lib.sh
source "$ROOT/benches/load/lib.sh"
bench_lock

TMP=$(mktemp -d /tmp/keyward-changes.XXXXXX)
mkdir -p "$ROOT/target/load-bench"
REPORT=$ROOT/target/load-bench/changes-$(date +%Y%m%d-%H%M%S).txt
PIDS=()
cleanup() {
    kill_and_wait "${PIDS[@]}"
    if [ "$KEEP_TMP" = 1 ]; then echo "temp dir kept: $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
REV="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml || echo '+dirty')"
cp -p "$KEYWARD" "$TMP/keyward"
KEYWARD=$TMP/keyward

RESULTS=()
result() { local line; line=$(printf '%-46s %s' "$1:" "$2"); RESULTS+=("$line"); log "$line"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stats() { python3 -c '
import sys
v = sorted(float(x) for x in sys.argv[1:])
q = lambda p: v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
print(f"n {len(v)}, p50 {q(50):.1f} ms, p90 {q(90):.1f} ms, p99 {q(99):.1f} ms, max {v[-1]:.1f} ms")' "$@"; }

# ------------------------------------------------------------------ upstream
UPSTREAM_PORT=$(free_port)
start_ok_upstream "$UPSTREAM_PORT"

# ------------------------------------------------------------------ snapshot
SNAP=$TMP/snapshot.db
TOKENS=$TMP/tokens.txt
"$KEYWARD" snapshot init "$SNAP" >/dev/null
log "building a snapshot with $KEYS keys over $ORGS organizations"
python3 "$ROOT/benches/lib/snapshot.py" "$SNAP" --keys "$KEYS" --orgs "$ORGS" \
    --scoped-every 4 --scoped-rem 3 --changes --tokens "$TOKENS" --load-keys "$LOAD_KEYS"
result "snapshot" "$KEYS keys, $(du -m "$SNAP" | cut -f1) MiB, changes table (rollback journal)"

# ------------------------------------------------------------------ keyward
PORT=$(free_port)
ADMIN=$(free_port)
CONF=$TMP/keyward.toml
python3 - "$ROOT/config/keyward.toml" "$CONF" "$PORT" "$ADMIN" "$THREADS" "$UPSTREAM_PORT" "$POLL_MS" "$CACHE_CAPACITY" "$CACHE_TTL_S" <<'EOF'
import re, sys, tomllib
src, dst, port, admin, threads, up, poll, CACHE_CAPACITY, CACHE_TTL_S = sys.argv[1:]
text = open(src).read()
for pat, rep in [
    (r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"'),
    (r'(?m)^admin_listen = .*$', f'admin_listen = "127.0.0.1:{admin}"'),
    (r'(?m)^threads = .*$', f'threads = {threads}'),
    (r'(?m)^address = .*$', f'address = "127.0.0.1:{up}"'),
    (r'(?m)^path = "snapshot.db".*$', 'path = "snapshot.db"'),
    (r'(?m)^poll_interval_ms = .*$', f'poll_interval_ms = {poll}'),
    (r'(?m)^requests_per_window = .*$', 'requests_per_window = 1000000000'),
    # the probes' 401s (one per trial) must not throttle their address
    (r'(?m)^auth_failures_per_ip = \d+', 'auth_failures_per_ip = 0'),
    # room for every warm key and a TTL longer than the run: the hit ratio
    # then shows what changes cost, not capacity or TTL expiry (with the
    # shipped 100,000 entries and 60 s, 100,000 keys cycled miss ~6-14 %)
    (r'(?m)^capacity = \d+', f'capacity = {CACHE_CAPACITY}'),
    (r'(?m)^ttl_s = \d+', f'ttl_s = {CACHE_TTL_S}'),
]:
    text, n = re.subn(pat, rep, text)
    assert n >= 1, pat
tomllib.loads(text)
open(dst, "w").write(text)
EOF
metric() {
    curl -s "http://127.0.0.1:$ADMIN/metrics" | python3 -c '
import re, sys
pat = re.compile(sys.argv[1])
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in sys.stdin if not l.startswith("#") and pat.match(l))))' "$1"
}
BETTER_AUTH_SECRET=load-bench-secret KEYWARD_LOG=info \
    "$KEYWARD" run --config "$CONF" >"$TMP/keyward.log" 2>"$TMP/keyward.err" 9>&- &
KW_PID=$!
PIDS+=("$KW_PID")
BENCH_KEY=$(head -1 "$TOKENS" | cut -d' ' -f1)
BENCH_PATH=$(head -1 "$TOKENS" | cut -d' ' -f2)
for _ in $(seq 600); do
    kill -0 "$KW_PID" 2>/dev/null || { cat "$TMP/keyward.err" >&2; die "keyward exited at start"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" "http://127.0.0.1:$PORT$BENCH_PATH" || true)
    [ "$code" = 200 ] && break
    sleep 0.05
done
[ "$code" = 200 ] || die "keyward did not answer 200 (last: $code)"

cat >"$TMP/keys.lua" <<'EOF'
local reqs, n, i = {}, 0, 0
function init(args)
    for line in io.lines(args[1]) do
        local tok, path = line:match("^(%S+) (%S+)$")
        n = n + 1
        reqs[n] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. tok })
    end
    i = math.random(n) - 1
end
function request()
    i = i % n + 1
    return reqs[i]
end
EOF
wrk_run() { # SECONDS OUTFILE
    wrk -t1 -c"$CONNECTIONS" -d"${1}s" --latency -s "$TMP/keys.lua" "http://127.0.0.1:$PORT/" -- "$TOKENS" >"$2" 2>&1
}
wrk_summary() {
    python3 - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
rps = re.search(r'Requests/sec:\s+([\d.]+)', t).group(1)
lat = {p: re.search(rf'^\s+{p}%\s+(\S+)', t, re.M).group(1) for p in ("50", "99")}
m = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', t)
non2xx = int(m.group(1)) if m else 0
m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', t)
sock = sum(map(int, m.groups())) if m else 0
print(f"{float(rps):.0f} req/s, p50 {lat['50']}, p99 {lat['99']}, non-2xx {non2xx}, socket errors {sock}")
EOF
}
rps() { python3 -c 'import re,sys; print(re.search(r"Requests/sec:\s+([\d.]+)", open(sys.argv[1]).read()).group(1))' "$1"; }
hits() { echo "$(metric 'keyward_cache_lookups_total\{result="(hit|negative_hit)"\}') $(metric 'keyward_cache_lookups_total\{result="miss"\}')"; }
swaps() { echo "incremental $(metric 'keyward_snapshot_swaps_total\{path="incremental"'), full $(metric 'keyward_snapshot_swaps_total\{path="full"')"; }

log "warming $LOAD_KEYS keys for $DURATION s"
wrk_run "$DURATION" "$TMP/warm.txt"
result "warm-up, $LOAD_KEYS keys" "$(wrk_summary "$TMP/warm.txt")"

# (a) in place, under load
FIRST=$LOAD_KEYS
wrk_run $((TRIALS + 20)) "$TMP/load_a.txt" &
WRK=$!
sleep 2
mapfile -t A < <(python3 "$HERE/probe.py" inplace "$SNAP" "$PORT" "$TRIALS" "$FIRST")
wait "$WRK" || true
result "(a) in place + changes row → 401, under load" "$(stats "${A[@]}")"
result "    wrk meanwhile" "$(wrk_summary "$TMP/load_a.txt")"
result "    swaps so far" "$(swaps)"
FIRST=$((FIRST + TRIALS))

# (b) by rename, under load
wrk_run $((RENAMES * 6 + 10)) "$TMP/load_b.txt" &
WRK=$!
sleep 2
mapfile -t B < <(python3 "$HERE/probe.py" rename "$SNAP" "$PORT" "$RENAMES" "$FIRST")
wait "$WRK" || true
result "(b) rename → 401, under load (poll ${POLL_MS} ms)" "$(stats "${B[@]}")"
result "    wrk meanwhile" "$(wrk_summary "$TMP/load_b.txt")"
FIRST=$((FIRST + RENAMES))

# (c) + (d) throughput with and without in-place writes; hit ratio
log "re-warming after the renames"
wrk_run "$DURATION" "$TMP/rewarm.txt"
read -r q0 qm0 < <(hits)
wrk_run "$DURATION" "$TMP/quiet.txt"
read -r h0 m0 < <(hits)
result "(c) no writes" "$(wrk_summary "$TMP/quiet.txt")"
result "(d) cache hit ratio without writes" "$(python3 -c "h, m = $h0 - $q0, $m0 - $qm0; print(f'{h / max(1, h + m) * 100:.2f} % ({h} hits, {m} misses)')")"
s0=$(metric 'keyward_snapshot_swaps_total\{path="incremental"')
python3 "$HERE/probe.py" writer "$SNAP" "$DURATION" "$RATE" "$FIRST" >"$TMP/writes.txt" &
WRITER=$!
wrk_run "$DURATION" "$TMP/writes_wrk.txt"
wait "$WRITER"
read -r h1 m1 < <(hits)
s1=$(metric 'keyward_snapshot_swaps_total\{path="incremental"')
result "(c) $RATE in-place changes/s" "$(wrk_summary "$TMP/writes_wrk.txt"); $(cat "$TMP/writes.txt") changes written, $((s1 - s0)) incremental swaps"
result "(c) throughput with writes / without" "$(python3 -c "print(f'{$(rps "$TMP/writes_wrk.txt") / $(rps "$TMP/quiet.txt") * 100:.1f} %')")"
result "(d) cache hit ratio during the writes" "$(python3 -c "h, m = $h1 - $h0, $m1 - $m0; print(f'{h / max(1, h + m) * 100:.2f} % ({h} hits, {m} misses)')")"
result "swaps at the end" "$(swaps)"
result "reloads failed" "$(metric 'keyward_snapshot_reloads_total\{result="failed"\}')"

{
    echo "benches/changes/run.sh — $(date -Is) — $REV — load at start: $LOAD_START"
    echo "KEYS=$KEYS ORGS=$ORGS LOAD_KEYS=$LOAD_KEYS THREADS=$THREADS POLL_MS=$POLL_MS DURATION=$DURATION TRIALS=$TRIALS RENAMES=$RENAMES RATE=$RATE CONNECTIONS=$CONNECTIONS CACHE_CAPACITY=$CACHE_CAPACITY CACHE_TTL_S=$CACHE_TTL_S"
    printf '%s\n' "${RESULTS[@]}"
    echo "in-place latencies (ms): ${A[*]}"
    echo "rename latencies (ms): ${B[*]}"
} | tee "$REPORT"
