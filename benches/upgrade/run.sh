#!/usr/bin/env bash
# Binary upgrades under load (issue 17): UPGRADES times in a row,
# `keyward run --upgrade` takes the listeners of the running keyward, which
# gets SIGQUIT, while two wrk clients keep sending — one on keep-alive
# connections, one with a new connection per request (`Connection: close`).
# Reports the failed requests (socket errors, non-2xx) and p99 during the
# upgrades, beside a run of the same length without upgrades.
#
#   benches/upgrade/run.sh                 # 10 upgrades (~90 s)
#   UPGRADES=3 benches/upgrade/run.sh      # quick check
#
# Environment: UPGRADES=10, THREADS=2 (keyward workers), GRACE=2
# (server.shutdown_grace_s), SKIP_BUILD=0, KEEP_TMP=0.
# Needs nginx (upstream), wrk, curl, python3. Not part of `cargo test`.
set -euo pipefail

UPGRADES=${UPGRADES:-10}
THREADS=${THREADS:-2}
GRACE=${GRACE:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/benches/load/lib.sh"
log() { printf '[upgrade-bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in nginx wrk curl python3; do
    command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk curl >/dev/null; break; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --bin keyward)
fi
KEYWARD=$ROOT/target/release/keyward
bench_lock

TMP=$(mktemp -d /tmp/keyward-upgrade-bench.XXXXXX)
PIDS=()
cleanup() {
    kill_and_wait "${PIDS[@]}" 2>/dev/null || true
    pkill -INT -f "keyward run --upgrade --config $TMP" 2>/dev/null || true
    pkill -INT -f "keyward run --config $TMP" 2>/dev/null || true
    [ "${KEEP_TMP:-0}" = 1 ] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# upstream: nginx, 1 worker, `200 ok`
UP=$(free_port); PORT=$(free_port); ADMIN=$(free_port)
start_ok_upstream "$UP"

# snapshot with one key; config: the shipped one on our ports
"$KEYWARD" snapshot init "$TMP/snapshot.db" >/dev/null
KEY=$("$KEYWARD" keys create --snapshot "$TMP/snapshot.db" --org org_bench)
python3 - "$ROOT/config/keyward.toml" "$TMP/keyward.toml" "$PORT" "$ADMIN" "$THREADS" "$UP" "$TMP" "$GRACE" <<'EOF'
import re, sys
src, dst, port, admin, threads, up, tmp, grace = sys.argv[1:]
text = open(src).read()
for pat, rep in [
    (r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"'),
    (r'(?m)^admin_listen = .*$', f'admin_listen = "127.0.0.1:{admin}"'),
    (r'(?m)^threads = .*$', f'threads = {threads}'),
    (r'(?m)^address = .*$', f'address = "127.0.0.1:{up}"'),
    (r'(?m)^path = "snapshot.db".*$', f'path = "{tmp}/snapshot.db"'),
    (r'(?m)^shutdown_grace_s = .*$', f'shutdown_grace_s = {grace}'),
    (r'(?m)^upgrade_sock = .*$', f'upgrade_sock = "{tmp}/upgrade.sock"'),
    (r'(?m)^requests_per_window = .*$', 'requests_per_window = 1000000000'),
]:
    text, n = re.subn(pat, rep, text)
    assert n >= 1, pat
open(dst, "w").write(text)
EOF
export KEYWARD_LOG=warn
start_keyward() { # [--upgrade]
    "$KEYWARD" run "$@" --config "$TMP/keyward.toml" >>"$TMP/keyward.log" 2>&1 9>&- &
    echo $!
}
OLD=$(start_keyward)
for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && break; sleep 0.05; done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/api/v1/flows")" = 200 ] \
    || die "keyward does not answer 200 (see $TMP/keyward.log)"

SECS=$((UPGRADES * (5 + GRACE + 2) + 5))
wrk_pair() { # NAME SECONDS
    wrk -t1 -c16 -d"$2s" --latency -H "Authorization: Bearer $KEY" \
        "http://127.0.0.1:$PORT/api/v1/flows" >"$TMP/$1-keepalive.txt" 2>&1 &
    local a=$!
    wrk -t1 -c4 -d"$2s" --latency -H "Authorization: Bearer $KEY" -H "Connection: close" \
        "http://127.0.0.1:$PORT/api/v1/flows" >"$TMP/$1-close.txt" 2>&1 &
    WRK_PIDS="$a $!"
}
summary() { # FILE
    python3 - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
req = re.search(r'(\d+) requests in', t)
p99 = re.search(r'99%\s+(\S+)', t)
errs = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', t)
non2xx = re.search(r'Non-2xx or 3xx responses: (\d+)', t)
e = sum(map(int, errs.groups())) if errs else 0
print(f"requests={req.group(1) if req else '?'} p99={p99.group(1) if p99 else '?'} "
      f"socket_errors={e}{' ' + str(errs.groups()) if errs else ''} non2xx={non2xx.group(1) if non2xx else 0}")
EOF
}

log "baseline: ${SECS}s of load, no upgrade"
wrk_pair baseline "$SECS"
wait $WRK_PIDS

log "$UPGRADES upgrades during ${SECS}s of load"
wrk_pair upgrades "$SECS"
sleep 2
for i in $(seq "$UPGRADES"); do
    rm -f "$TMP/upgrade.sock.admin"
    NEW=$(start_keyward --upgrade)
    for _ in $(seq 200); do [ -S "$TMP/upgrade.sock.admin" ] && break; sleep 0.05; done
    sleep 0.3
    kill -QUIT "$OLD"
    for _ in $(seq 300); do kill -0 "$OLD" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$OLD" 2>/dev/null && die "upgrade $i: the old process did not exit"
    kill -0 "$NEW" 2>/dev/null || die "upgrade $i: the new process exited (see $TMP/keyward.log)"
    log "upgrade $i: pid $OLD -> $NEW"
    OLD=$NEW
done
wait $WRK_PIDS
kill -INT "$OLD"

echo "| run | client | result |"
echo "|---|---|---|"
for run in baseline upgrades; do
    for c in keepalive close; do
        echo "| $run | $c | $(summary "$TMP/$run-$c.txt") |"
    done
done
