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
