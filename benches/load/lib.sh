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
