#!/usr/bin/env bash
# Instructions per proxied request (issue 30, step 1): keyward or bare_core
# under valgrind's callgrind, 1 worker, the load benchmark's request
# (shipped route table, scoped key, nginx upstream answering `ok`).
#
#   benches/load/profile.sh                    # keyward (target/release/keyward)
#   TARGET=bare_core benches/load/profile.sh   # the bare job on keyward's forwarding
#   KEYWARD=/tmp/kw-before benches/load/profile.sh
#
# Counted only while wrk runs (callgrind --instr-atstart=no, switched on and
# off with callgrind_control after a warm-up), so start-up, snapshot load
# and shutdown are left out. Instructions, not seconds: the count repeats
# for the same binary and inputs whatever else the machine does (within a
# few percent: timers and pool expiry depend on time).
#
# Prints instructions per request and the top functions by inclusive and by
# self cost (callgrind_annotate); the raw profile stays in
# target/load-bench/profile-<timestamp>/callgrind.out for kcachegrind.
#
# Environment: DURATION=8 (seconds counted), CONNECTIONS=4, TOP=40,
# SKIP_BUILD=0, KEYWARD=path. Needs valgrind, nginx, wrk, curl, python3.
set -euo pipefail

DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-4}
TOP=${TOP:-40}
TARGET=${TARGET:-keyward}
SKIP_BUILD=${SKIP_BUILD:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEYWARD=${KEYWARD:-$ROOT/target/release/keyward}
BARE_CORE=$ROOT/target/release/examples/bare_core
BENCH_PATH=/api/v1/workspaces/ws_bench/connections

die() { echo "profile.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

need_pkgs=()
command -v valgrind >/dev/null || need_pkgs+=(valgrind)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get install -y "${need_pkgs[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
case $TARGET in keyward|bare_core) ;; *) die "TARGET must be keyward or bare_core" ;; esac

if [ "$SKIP_BUILD" != 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet --features bench-proxy --bin keyward --example bare_core)
fi

# shellcheck source=lib.sh
source "$ROOT/benches/load/lib.sh"
bench_lock
TMP=$(mktemp -d /tmp/keyward-profile.XXXXXX)
OUT=$ROOT/target/load-bench/profile-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
PIDS=()
trap 'kill_and_wait "${PIDS[@]}"; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_200() {
    for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$@")" = 200 ] && return 0
        sleep 0.1
    done
    die "no 200 from $*"
}

UPSTREAM_PORT=$(free_port)
PORT=$(free_port)
ADMIN=$(free_port)
start_ok_upstream "$UPSTREAM_PORT"
BENCH_ORG=org_bench BENCH_WS=ws_bench
make_bench_snapshot "$TMP/keyward"
write_bench_conf "$TMP/keyward/keyward.toml" "$PORT" "$ADMIN" 1 "$UPSTREAM_PORT"

VG=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out")
if [ "$TARGET" = keyward ]; then
    (cd "$TMP/keyward" && KEYWARD_LOG=info exec "${VG[@]}" "$KEYWARD" run --config keyward.toml \
        >"$TMP/keyward/stdout.log" 2>"$TMP/keyward/stderr.log" 9>&-) &
    AUTH=(-H "Authorization: Bearer $BENCH_KEY")
else
    (exec "${VG[@]}" "$BARE_CORE" "127.0.0.1:$PORT" "127.0.0.1:$UPSTREAM_PORT" 1 \
        >"$TMP/stdout.log" 2>"$TMP/stderr.log" 9>&-) &
    AUTH=(-H "Authorization: Bearer x")
fi
PIDS+=($!)
VPID=$!
wait_200 "${AUTH[@]}" "http://127.0.0.1:$PORT$BENCH_PATH"
log "warm-up"
wrk -t1 -c"$CONNECTIONS" -d3s "${AUTH[@]}" "http://127.0.0.1:$PORT$BENCH_PATH" >/dev/null
callgrind_control -i on "$VPID" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "${AUTH[@]}" "http://127.0.0.1:$PORT$BENCH_PATH" >"$OUT/wrk.txt"
callgrind_control -i off "$VPID" >/dev/null
callgrind_control -d "$VPID" >/dev/null
sleep 1
kill_and_wait "$VPID"
PIDS=("${PIDS[@]/$VPID}")

REQS=$(awk '/requests in/{print $1}' "$OUT/wrk.txt")
NON2XX=$(awk '/Non-2xx/{print $NF}' "$OUT/wrk.txt")
[ -z "$NON2XX" ] || die "wrk saw $NON2XX non-2xx responses (see $OUT/wrk.txt)"
# callgrind_control -d writes callgrind.out.N parts; the dump holds the counted span
PARTS=("$OUT"/callgrind.out.*)
TOTAL=$(callgrind_annotate "${PARTS[@]}" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
[ -n "$TOTAL" ] || die "no totals in ${PARTS[*]}"
{
    echo "target: $TARGET ($( [ "$TARGET" = keyward ] && echo "$KEYWARD" || echo "$BARE_CORE"))"
    echo "requests: $REQS over ${DURATION}s at -c$CONNECTIONS (under valgrind)"
    echo "instructions: $TOTAL"
    echo "instructions/request: $((TOTAL / REQS))"
    echo
    echo "## inclusive"
    callgrind_annotate --inclusive=yes "${PARTS[@]}" 2>/dev/null | sed -n '1,/^-- Auto/p' | head -n $((TOP + 25))
    echo
    echo "## self"
    callgrind_annotate "${PARTS[@]}" 2>/dev/null | sed -n '1,/^-- Auto/p' | head -n $((TOP + 25))
} >"$OUT/summary.txt"
head -4 "$OUT/summary.txt"
echo "profile: $OUT/summary.txt"
