# Shared by benches/load/*.sh (sourced, not run).

# Stop processes: SIGINT (fast shutdown for pingora and nginx), up to 5 s to
# exit, then SIGKILL; reap them.
kill_and_wait() {
    local pid
    for pid in "$@"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# One benchmark at a time (run.sh and snapshot_scale.sh share this lock on
# fd 9, held until the script exits): two runs at once would each measure
# the other. Needs ROOT and log() from the caller.
bench_lock() {
    mkdir -p "$ROOT/target/load-bench"
    exec 9>"$ROOT/target/load-bench/.lock"
    if ! flock -n 9; then
        log "another load benchmark is running; waiting for it"
        flock 9
    fi
}

# The upstream every load script proxies to: nginx, 1 worker, answering
# `200 ok` on 127.0.0.1:PORT, under $TMP/upstream. Needs TMP, NGINX and the
# PIDS array from the caller (the nginx pid is appended).
start_ok_upstream() {
    local port=$1
    mkdir -p "$TMP/upstream"
    cat >"$TMP/upstream/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/upstream/nginx.pid;
error_log $TMP/upstream/error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $TMP/upstream/body;
    proxy_temp_path $TMP/upstream/proxy;
    fastcgi_temp_path $TMP/upstream/fastcgi;
    uwsgi_temp_path $TMP/upstream/uwsgi;
    scgi_temp_path $TMP/upstream/scgi;
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
    "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" >"$TMP/upstream/stdout.log" 2>&1 9>&- &
    PIDS+=($!)
}

# The benchmark snapshot in DIR/snapshot.db: 999 filler keys (every second
# one scoped) plus the benchmark key, scoped to BENCH_WS; sets BENCH_KEY.
# Needs KEYWARD, ROOT, BENCH_ORG, BENCH_WS from the caller.
make_bench_snapshot() {
    local db=$1/snapshot.db
    mkdir -p "$1"
    "$KEYWARD" snapshot init "$db" >/dev/null
    BENCH_KEY=$("$KEYWARD" keys create --snapshot "$db" --org "$BENCH_ORG" --workspace "$BENCH_WS")
    # the filler keys nginx's Lua table holds too (run.sh's init_by_lua_block)
    python3 "$ROOT/benches/lib/snapshot.py" "$db" --keys 999 --first 1 \
        --token "wvz_filler{i}$(printf 'x%.0s' {1..30})" --scoped-every 2 --scoped-rem 0
}

# bench_conf DST PORT ADMIN_PORT THREADS UPSTREAM_PORT [POLL_MS]: the
# shipped config/keyward.toml with its route table, on these ports and
# threads, snapshot.db beside DST, every plan at 1e9 requests per window
# (and the snapshot poll interval, when given). Needs ROOT.
bench_conf() {
    python3 - "$ROOT/config/keyward.toml" "$@" <<'PY'
import re, sys, tomllib
src, dst, port, admin, threads, up, *poll = sys.argv[1:]
text = open(src).read()
subs = [
    (r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"'),
    (r'(?m)^admin_listen = .*$', f'admin_listen = "127.0.0.1:{admin}"'),
    (r'(?m)^threads = .*$', f'threads = {threads}'),
    (r'(?m)^address = .*$', f'address = "127.0.0.1:{up}"'),
    (r'(?m)^path = "snapshot.db".*$', 'path = "snapshot.db"'),
    (r'(?m)^requests_per_window = .*$', 'requests_per_window = 1000000000'),
]
if poll:
    subs.append((r'(?m)^poll_interval_ms = .*$', f'poll_interval_ms = {poll[0]}'))
for pat, rep in subs:
    text, n = re.subn(pat, rep, text)
    assert n >= 1, f"pattern {pat!r} not found in {src}"
cfg = tomllib.loads(text)
assert cfg["server"]["threads"] == int(threads)
open(dst, "w").write(text)
PY
}

# write_bench_conf DST PORT ADMIN_PORT THREADS UPSTREAM_PORT: bench_conf,
# checked with `keyward check`. Needs KEYWARD, ROOT, die().
write_bench_conf() {
    bench_conf "$@"
    "$KEYWARD" check --config "$1" >"$1.check.txt" || die "keyward check failed for $1"
}
