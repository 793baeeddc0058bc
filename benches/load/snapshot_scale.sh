#!/usr/bin/env bash
# Snapshot at scale (issue 9): keyward on a 1,000,000-key snapshot.
#
#   benches/load/snapshot_scale.sh
#   KEYS=200000 DURATION=5 benches/load/snapshot_scale.sh     # quicker
#
# What it does
#   1. Builds target/release/keyward (no-op when fresh; SKIP_BUILD=1 skips).
#   2. Builds a snapshot with KEYS API keys over ORGS organizations (one
#      workspace each) in one SQLite transaction with python3's sqlite3, on the
#      schema `keyward snapshot init` creates. Token i is
#      "wvz_" + sha256("bench-i")[:40] hex, stored as lowercase hex
#      sha256(token) like src/snapshot/schema.rs `token_hash_hex`; every 4th
#      key is workspace-scoped to its org's workspace, the others org-wide.
#      Also writes LOAD_KEYS of those tokens (with their workspace path) for wrk.
#   3. Times the load of that file alone (`keyward check`: open, schema check,
#      count every table — the work a reload does — plus process start).
#   4. Starts keyward (shipped route table, THREADS threads, every plan at 1e9
#      requests/window, poll interval POLL_MS, access log at info to a file)
#      and reports startup time and RSS (/proc/PID/status: VmRSS split into
#      RssAnon and RssFile — mmap is off, so "snapshot mmap" should stay 0 —
#      and VmHWM) after startup, after a warm run with one key,
#      and after a warm run over LOAD_KEYS distinct keys (fills the verdict
#      cache; every first use of a key is a SQLite lookup).
#   5. Reload time, idle: RELOADS times, republish the snapshot the way a
#      control plane does (copy, change, write generated_at — prepared before
#      the clock starts — then rename over snapshot.db) and measure from the
#      rename until /metrics keyward_snapshot_generation changes. This
#      includes waiting for the watcher's next poll (0..POLL_MS); POLL_MS=50
#      shows the load-and-swap cost itself.
#   6. Reload under load, twice: wrk for RELOADS*(RELOAD_EVERY+1)+4 s while a
#      new snapshot is published every RELOAD_EVERY s (plus up to 0.9 s of
#      jitter, to sample the whole poll cycle), first with the one
#      benchmark key, then over LOAD_KEYS distinct keys (each swap refills the
#      verdict cache from the new snapshot, within a time budget). Reports req/s, p50,
#      p99, wrk's non-2xx and socket errors, and keyward's own counters
#      (requests forwarded or not, snapshot reloads ok/failed). Exits 3 when
#      any request failed or a reload failed.
#
# Environment
#   KEYS=1000000       API keys in the snapshot
#   ORGS=10000         organizations (and workspaces, one per org)
#   LOAD_KEYS=100000   distinct keys wrk cycles through in the multi-key runs
#   THREADS=2          keyward server.threads
#   POLL_MS=1000       snapshot.poll_interval_ms (keyward's default)
#   DURATION=10        seconds per warm run
#   RELOADS=5          reloads measured idle, and in each run under load
#   RELOAD_EVERY=3     seconds between reloads under load (+ 0..0.9 s jitter)
#   CONNECTIONS=32     wrk -c (wrk -t1)
#   SKIP_BUILD=0       1: use target/release/keyward as it is
#   KEEP_TMP=0         1: keep the temp dir (snapshot, config, log)
#
# Disk: the temp dir holds the snapshot and up to RELOADS prepared copies
# (about 216 MiB each at 1M keys).
#
# Needs nginx (the upstream), wrk, curl, python3 (installed with apt-get when
# missing).
# Results go to stdout and target/load-bench/snapshot-<timestamp>.txt.
# Only one load benchmark runs at a time (lock: target/load-bench/.lock).
set -euo pipefail

KEYS=${KEYS:-1000000}
ORGS=${ORGS:-10000}
LOAD_KEYS=${LOAD_KEYS:-100000}
THREADS=${THREADS:-2}
POLL_MS=${POLL_MS:-1000}
DURATION=${DURATION:-10}
RELOADS=${RELOADS:-5}
RELOAD_EVERY=${RELOAD_EVERY:-3}
CONNECTIONS=${CONNECTIONS:-32}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
[ "$LOAD_KEYS" -le "$KEYS" ] || LOAD_KEYS=$KEYS

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)   # other work on the machine skews every figure
KEYWARD=$ROOT/target/release/keyward

die() { echo "snapshot_scale.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
now() { date +%s.%N; }
elapsed_ms() { python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) * 1000:.0f}')" "$1" "$2"; }

need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get install -y "${need_pkgs[@]}" >/dev/null
fi
if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release --bin keyward"
    (cd "$ROOT" && cargo build --release --quiet --bin keyward)
fi
[ -x "$KEYWARD" ] || die "$KEYWARD missing"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# shellcheck source=lib.sh
source "$ROOT/benches/load/lib.sh"
bench_lock

TMP=$(mktemp -d /tmp/keyward-snapshot.XXXXXX)
mkdir -p "$ROOT/target/load-bench"
REPORT=$ROOT/target/load-bench/snapshot-$(date +%Y%m%d-%H%M%S).txt
PIDS=()
cleanup() {
    kill_and_wait "${PIDS[@]}"
    if [ "$KEEP_TMP" = 1 ]; then echo "temp dir kept: $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy of the binary: a rebuild during the run cannot change it.
REV="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml || echo '+dirty')"
BUILT=$(date -r "$KEYWARD" +%Y-%m-%dT%H:%M:%S)
cp -p "$KEYWARD" "$TMP/keyward"
KEYWARD=$TMP/keyward

RESULTS=()
# result LABEL VALUE: collected for the report at the end, echoed now.
result() { local line; line=$(printf '%-44s %s' "$1:" "$2"); RESULTS+=("$line"); log "$line"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------------ upstream
# nginx, 1 worker, answering 200 "ok\n", as in run.sh.
UPSTREAM_PORT=$(free_port)
start_ok_upstream "$UPSTREAM_PORT"

# ------------------------------------------------------------------ snapshot
BASE=$TMP/base.db
SNAP=$TMP/snapshot.db
TOKENS=$TMP/tokens.txt
"$KEYWARD" snapshot init "$BASE" >/dev/null
log "building a snapshot with $KEYS keys over $ORGS organizations"
t0=$(now)
python3 "$ROOT/benches/lib/snapshot.py" "$BASE" --keys "$KEYS" --orgs "$ORGS" \
    --scoped-every 4 --scoped-rem 3 --tokens "$TOKENS" --load-keys "$LOAD_KEYS"
t1=$(now)
cp "$BASE" "$SNAP"
BENCH_KEY=$(head -1 "$TOKENS" | cut -d' ' -f1)
BENCH_PATH=$(head -1 "$TOKENS" | cut -d' ' -f2)
result "snapshot built" "$KEYS keys, $(du -m "$SNAP" | cut -f1) MiB, in $(elapsed_ms "$t0" "$t1") ms"

# ------------------------------------------------------------------ config
PORT=$(free_port)
ADMIN=$(free_port)
CONF=$TMP/keyward.toml
bench_conf "$CONF" "$PORT" "$ADMIN" "$THREADS" "$UPSTREAM_PORT" "$POLL_MS"

t0=$(now)
"$KEYWARD" check --config "$CONF" >"$TMP/check.txt" || { cat "$TMP/check.txt"; die "keyward check failed"; }
t1=$(now)
result "load alone (keyward check)" "$(elapsed_ms "$t0" "$t1") ms incl. process start: open, schema check, count every table; $(grep api_keys "$TMP/check.txt")"

# ------------------------------------------------------------------ keyward
metric() { # metric NAME_REGEX -> sum of matching series
    curl -s "http://127.0.0.1:$ADMIN/metrics" | python3 -c '
import re, sys
pat = re.compile(sys.argv[1])
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in sys.stdin if not l.startswith("#") and pat.match(l))))' "$1"
}
# VmRSS = RssAnon (heap: caches, rate state, SQLite page cache) + RssFile
# (mapped files: the keyward binary's own pages and the mmapped snapshot,
# also shown alone as "snapshot mmap") + RssShmem. VmHWM is the peak RSS.
rss() {
    python3 - "$KW_PID" <<'EOF'
import sys
pid = sys.argv[1]
st = {l.split(':')[0]: int(l.split()[1]) // 1024 for l in open(f"/proc/{pid}/status") if l.split(':')[0] in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
snap, cur = 0, None
for l in open(f"/proc/{pid}/smaps"):
    f = l.split()
    if len(f) >= 5 and '-' in f[0] and not f[0].endswith(':'):
        cur = l
    elif f[0] == "Rss:" and cur and "snapshot" in cur and ".db" in cur:
        snap += int(f[1])
print(f"VmRSS {st['VmRSS']} MiB = anon {st['RssAnon']} + file {st['RssFile']} (snapshot mmap {snap // 1024}); peak VmHWM {st['VmHWM']} MiB")
EOF
}

t0=$(now)
BETTER_AUTH_SECRET=load-bench-secret KEYWARD_LOG=info \
    "$KEYWARD" run --config "$CONF" >"$TMP/keyward.log" 2>"$TMP/keyward.err" 9>&- &
KW_PID=$!
PIDS+=("$KW_PID")
for _ in $(seq 600); do
    kill -0 "$KW_PID" 2>/dev/null || { cat "$TMP/keyward.err" >&2; die "keyward exited at start"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" \
        "http://127.0.0.1:$PORT$BENCH_PATH" || true)
    [ "$code" = 200 ] && break
    sleep 0.05
done
[ "$code" = 200 ] || die "keyward did not answer 200 (last: $code)"
t1=$(now)
result "startup to first 200" "$(elapsed_ms "$t0" "$t1") ms"
result "RSS after startup" "$(rss)"

# wrk script: cycles through the token file, one prebuilt request per key.
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

# wrk_run SECONDS OUTFILE [single|multi]
wrk_run() {
    local secs=$1 out=$2
    if [ "${3:-}" = multi ]; then
        wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency -s "$TMP/keys.lua" \
            "http://127.0.0.1:$PORT/" -- "$TOKENS" >"$out" 2>&1
    else
        wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency -H "Authorization: Bearer $BENCH_KEY" \
            "http://127.0.0.1:$PORT$BENCH_PATH" >"$out" 2>&1
    fi
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
total = re.search(r'(\d+) requests in', t).group(1)
print(f"{float(rps):.0f} req/s, p50 {lat['50']}, p99 {lat['99']}, {total} requests, non-2xx {non2xx}, socket errors {sock}")
EOF
}

wrk_run "$DURATION" "$TMP/warm1.txt"
result "warm run, 1 key" "$(wrk_summary "$TMP/warm1.txt")"
result "RSS after 1-key run" "$(rss)"
wrk_run "$DURATION" "$TMP/warm2.txt" multi
result "warm run, $LOAD_KEYS keys" "$(wrk_summary "$TMP/warm2.txt")"
result "RSS after $LOAD_KEYS-key run" "$(rss)"
result "cache lookups so far" "hit $(metric 'keyward_cache_lookups_total\{result="hit"\}'), miss $(metric 'keyward_cache_lookups_total\{result="miss"\}'); api_keys SQLite lookups $(metric 'keyward_snapshot_lookups_total\{table="api_keys"\}')"

# ------------------------------------------------------------------ reloads
# prepare N: a new version of the snapshot in the same directory (copy of the
# base, one more key, new generated_at), made before any timing starts so
# that the 216 MiB copy does not compete with keyward under load.
prepare() {
    local f
    f=$(mktemp -p "$TMP" next-XXXXXX.db)
    cp "$BASE" "$f"
    python3 - "$f" "$(basename "$f" .db)" <<'EOF'
import hashlib, sqlite3, sys, time
path, seq = sys.argv[1], sys.argv[2]
db = sqlite3.connect(path)
with db:
    tok = f"wvz_republished{seq}"
    db.execute("INSERT INTO api_keys (id, organization_id, key_hash, key_prefix) VALUES (?, 'org_0', ?, ?)",
               (f"key_re{seq}", hashlib.sha256(tok.encode()).hexdigest(), tok[:8]))
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generated_at', ?)", (str(int(time.time())),))
db.close()
EOF
    echo "$f"
}
# publish FILE: rename it over snapshot.db, as a control plane publishes, and
# wait for /metrics keyward_snapshot_generation to change. Prints the
# milliseconds from the rename to the new generation being served.
publish() {
    python3 - "$1" "$SNAP" "http://127.0.0.1:$ADMIN/metrics" <<'EOF'
import os, re, sys, time, urllib.request
path, target, url = sys.argv[1:]
def generation():
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return int(float(re.search(r'^keyward_snapshot_generation (\S+)$', body, re.M).group(1)))
before = generation()
t0 = time.monotonic()
os.rename(path, target)
while True:
    if generation() != before:
        break
    if time.monotonic() - t0 > 30:
        sys.exit("no new generation within 30 s")
    time.sleep(0.01)  # 10 ms resolution; polling harder would load the machine
print(f"{(time.monotonic() - t0) * 1000:.0f}")
EOF
}

stats() { python3 -c 'import statistics as s, sys; v=[float(x) for x in sys.argv[1:]]; print(f"min {min(v):.0f} ms, median {s.median(v):.0f} ms, max {max(v):.0f} ms")' "$@"; }

idle=()
for _ in $(seq "$RELOADS"); do
    f=$(prepare)
    sleep 0.$((RANDOM % 10))   # land at different points of the poll cycle
    idle+=("$(publish "$f")")
done
result "reload idle, rename → served (poll ${POLL_MS} ms)" "${idle[*]} ms → $(stats "${idle[@]}")"
result "RSS after idle reloads" "$(rss)"

# Reloads under load: wrk for RELOADS*(RELOAD_EVERY+1)+4 s, a publish every
# RELOAD_EVERY s (+ jitter) from the 2nd second. MODE: single (the one benchmark key,
# refilled in the cache after each swap) or multi (LOAD_KEYS keys: each swap
# re-reads the cached keys from the new snapshot; those not re-read in time
# go back to SQLite).
WRK_ERRORS=0
RELOADS_FAILED=0
NOT_FORWARDED=0
reload_under_load() {
    local mode=$1 label files=() times=() f t0 t1 rest
    [ "$mode" = multi ] && label="$LOAD_KEYS keys" || label="1 key"
    for _ in $(seq "$RELOADS"); do files+=("$(prepare)"); done
    local ok0 failed0 fwd0 all0 ok1 failed1 fwd1 all1
    ok0=$(metric 'keyward_snapshot_reloads_total\{result="ok"\}')
    failed0=$(metric 'keyward_snapshot_reloads_total\{result="failed"\}')
    fwd0=$(metric 'keyward_requests_total\{.*outcome="forwarded"')
    all0=$(metric 'keyward_requests_total\{')
    local secs=$((RELOADS * (RELOAD_EVERY + 1) + 4)) out=$TMP/reload-$mode.txt
    wrk_run "$secs" "$out" "$mode" 9>&- &
    local wrk_pid=$!
    sleep 2
    for f in "${files[@]}"; do
        t0=$(now)
        times+=("$(publish "$f")")
        t1=$(now)
        # up to 0.9 s of jitter so the renames land at different points of
        # the watcher's poll cycle
        rest=$(python3 -c "import random; print(max(0.0, $RELOAD_EVERY - ($t1 - $t0)) + random.random() * 0.9)")
        sleep "$rest"
    done
    wait "$wrk_pid"
    ok1=$(metric 'keyward_snapshot_reloads_total\{result="ok"\}')
    failed1=$(metric 'keyward_snapshot_reloads_total\{result="failed"\}')
    fwd1=$(metric 'keyward_requests_total\{.*outcome="forwarded"')
    all1=$(metric 'keyward_requests_total\{')
    result "reload under load, $label" "(${secs} s of wrk) ${times[*]} ms → $(stats "${times[@]}")"
    result "wrk during reloads, $label" "$(wrk_summary "$out")"
    result "keyward during reloads, $label" "$((all1 - all0)) requests, $((fwd1 - fwd0)) forwarded, $((all1 - all0 - fwd1 + fwd0)) not forwarded; snapshot reloads ok +$((ok1 - ok0)), failed +$((failed1 - failed0))"
    WRK_ERRORS=$((WRK_ERRORS + $(wrk_errors "$out")))
    RELOADS_FAILED=$((RELOADS_FAILED + failed1 - failed0))
    NOT_FORWARDED=$((NOT_FORWARDED + all1 - all0 - fwd1 + fwd0))
}
wrk_errors() { # non-2xx responses + socket errors in one wrk output
    python3 - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', t); bad = int(m.group(1)) if m else 0
m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', t); bad += sum(map(int, m.groups())) if m else 0
print(bad)
EOF
}
WRK_ERRORS=$(( $(wrk_errors "$TMP/warm1.txt") + $(wrk_errors "$TMP/warm2.txt") ))
reload_under_load single
reload_under_load multi
result "RSS after reloads under load" "$(rss)"
# From keyward's own log: how long requests took inside keyward (access log
# total_us / auth_us), to tell its own stalls from queueing in front of it,
# and pingora's pooled-connection races.
result "inside keyward, whole run" "$(python3 - "$TMP/keyward.log" <<'EOF'
import re, sys
tot, auth, races = [], [], 0
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r'auth_us=(\d+) total_us=(\d+)', line)
    if m:
        auth.append(int(m.group(1))); tot.append(int(m.group(2)))
    elif "failed to acquire reusable stream" in line:
        races += 1
tot.sort(); auth.sort()
q = lambda v, p: v[min(len(v) - 1, int(len(v) * p))] / 1000
print(f"{len(tot)} requests logged; total p99 {q(tot, .99):.2f} ms, max {tot[-1] / 1000:.1f} ms, {sum(t >= 50000 for t in tot)} ≥ 50 ms; "
      f"auth p99 {q(auth, .99):.2f} ms, max {auth[-1] / 1000:.1f} ms; pingora 'failed to acquire reusable stream': {races}")
EOF
)"

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $(nproc) cores; keyward $REV at start; binary built $BUILT; THREADS=$THREADS POLL_MS=$POLL_MS CONNECTIONS=$CONNECTIONS"
    echo "# load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%s\n' "${RESULTS[@]}"
} | tee "$REPORT"
echo "report: $REPORT" >&2

if [ "$WRK_ERRORS" != 0 ] || [ "$RELOADS_FAILED" != 0 ] || [ "$NOT_FORWARDED" != 0 ]; then
    echo "FAILED: wrk non-2xx/socket errors $WRK_ERRORS, requests not forwarded $NOT_FORWARDED, failed reloads $RELOADS_FAILED" >&2
    exit 3
fi
echo "no failed requests, no failed reloads" >&2
