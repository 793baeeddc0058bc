#!/usr/bin/env bash
# Load benchmark (issues 9 and 19): keyward against nginx, nginx + Lua and
# bare pingora proxies, on loopback, at 1 and at 2 workers, in one
# interleaved run.
#
#   benches/load/run.sh                         # full run (DURATION=10 ROUNDS=3, 1 and 2 workers)
#   DURATION=3 ROUNDS=1 benches/load/run.sh     # quick check
#   PIN=1 benches/load/run.sh                   # 1-worker case pinned (see PIN)
#   cp target/release/keyward /tmp/kw-before    # before a change, then rebuild and:
#   KEYWARD_BEFORE=/tmp/kw-before TARGETS="nginx_lua keyward_before keyward" benches/load/run.sh
#
# What it reports (target/load-bench/<timestamp>/summary.txt, also printed)
#   - per target and worker count: req/s (median of the rounds, min, max),
#     p50 and p99 (median), the CPU other processes used, the connections
#     the upstream accepted, and "2w/1w": the median req/s at 2 workers over
#     the median at 1 worker (what a second worker adds; both worker counts
#     run in the same invocation, one after the other);
#   - per worker count, the RATIOS keyward/nginx_lua, keyward/nginx,
#     keyward/bare, keyward/bare_core (and keyward/keyward_before when
#     measured), computed PER ROUND — keyward's round r against the other
#     target's round r, run back to back, so that a slow moment of the
#     machine hits both — then their median and min–max spread over the
#     rounds, and every round's value; likewise keyward's p99 against
#     nginx_lua's p99;
#   - per thread of each target: CPU in % of one core during the run,
#     median by rank over the rounds (a pingora worker's threads all carry
#     the service's name; two workers at very different CPU show
#     connections spread unevenly), and the target's CPU per request in µs
#     (its CPU over the round / the requests wrk saw), with keyward's per
#     request over nginx_lua's, nginx's and keyward_before's, per round.
#   - instructions per request: benches/load/profile.sh (callgrind).
#
# What it does
#   1. Builds target/release/keyward and target/release/examples/bare_proxy
#      (cargo is a no-op when they are fresh; SKIP_BUILD=1 skips it).
#   2. Starts an nginx upstream (1 worker) answering `200 ok\n` on a free
#      loopback port. It echoes the X-Org-ID it received as X-Upstream-Org,
#      which the pre-flight check uses to prove every proxy injected it.
#   3. For each worker/thread count in THREADS_LIST (default "1 2") starts the
#      targets, all with that many workers/threads:
#        direct     wrk straight to the upstream (reference, 1 upstream worker)
#        nginx      nginx reverse proxy, upstream keepalive, a static
#                   `map $http_authorization` check (401 when absent), injects
#                   X-Org-ID: bare — a proxy that decides nothing
#        nginx_lua  nginx + Lua (Debian libnginx-mod-http-lua, the OpenResty
#                   engine Kong runs on) doing keyward's job in
#                   access_by_lua: Bearer token → SHA-256 (LuaJIT FFI into
#                   libcrypto; LUA_HASH=sha1 uses ngx.sha1_bin) → lookup in a
#                   1000-key Lua table → workspace in the path checked against
#                   the key's list → per-organization fixed-window count in a
#                   lua_shared_dict → X-Org-ID / X-Workspace-ID / X-Auth-Method /
#                   X-Api-Key-ID toward the upstream and X-RateLimit-* on the
#                   response (header_filter_by_lua)
#        bare       benches/bare_proxy.rs: pingora-proxy with keyward's server
#                   settings; 401 without Authorization, injects X-Org-ID
#        bare_core  benches/bare_core.rs: the same job as a direct loop on
#                   pingora-core's HTTP sessions and connection pool (what
#                   keyward's proxy is built on since issue 9), no pingora-proxy
#        keyward    target/release/keyward with the shipped route table
#                   (config/keyward.toml), a snapshot of 1000 API keys, the
#                   benchmark key scoped to the path's workspace, plan limit
#                   1e9/window (never triggers), access log at info to a file
#   4. Checks each target answers 200 on the benchmark request with the
#      expected headers (fails loudly otherwise), warms it up, then runs
#      ROUNDS rounds; each round runs wrk once against every target in turn.
#      Every target gets the same path and Authorization header.
#   5. Prints the report above and fails if wrk saw any non-2xx response or
#      socket error. Raw results (results.tsv: one line per wrk run;
#      threads.tsv: per-thread CPU) and the wrk outputs go to
#      target/load-bench/<timestamp>/.
#
# Environment
#   DURATION=10        seconds per wrk run
#   ROUNDS=3           rounds (each round cycles through all targets)
#   THREADS_LIST="1 2" worker/thread counts to measure, in order
#   TARGETS="direct nginx nginx_lua bare bare_core keyward"   subset / order
#                      (add keyward_before with KEYWARD_BEFORE=/path/to/an/earlier/keyward
#                      to measure a change before/after in the same run)
#   CONNECTIONS=32     wrk -c; WRK_THREADS=1 wrk -t
#   WARMUP=2           seconds of wrk warm-up per target before the rounds
#   PIN=0              1: in the 1-worker case, wrk and the upstream run on
#                      CPU 0 and the target under test (all its processes and
#                      threads) on CPU 1, so that the proxy has one core of
#                      its own and does not compete with its client. The
#                      2-worker case always runs unpinned (2 cores cannot
#                      isolate a client, an upstream and a 2-worker proxy).
#                      Needs taskset (util-linux) and at least 2 CPUs.
#   ACCESS_LOG=1       1: nginx proxies and keyward write an access log line
#                      per request to a file in the temp dir (keyward at
#                      info, as an operator runs it); 0: nginx access_log off
#                      and KEYWARD_LOG=warn
#   LUA_HASH=sha256    sha256 (FFI into libcrypto) or sha1 (ngx.sha1_bin)
#   QUIET_WAIT=30      before each wrk run, wait up to this many seconds for
#                      other processes (not started by this script) to use
#                      < 20% of a core; the CPU they used during each run is
#                      reported anyway (column "other%")
#   SKIP_BUILD=0       1: use the binaries as they are
#   KEYWARD=path       the keyward binary to measure (default
#                      target/release/keyward; a copy set aside keeps a
#                      build by someone else in the same tree out of the run)
#   KEEP_TMP=0         1: keep the temp dir (configs, logs) for inspection
#   TRACING_SAMPLE=    a ratio (0.01, 1.0): the `keyward` target (not
#                      keyward_before) runs with [tracing] at that
#                      sample_ratio, exporting to a local OTLP/HTTP sink
#                      (python3, answers 200, discards). The cost of tracing:
#                      KEYWARD_BEFORE=target/release/keyward TRACING_SAMPLE=0.01 \
#                        TARGETS="keyward_before keyward" benches/load/run.sh
#                      (keyward/keyward_before = traced/untraced, same binary)
#
# Needs nginx, libnginx-mod-http-lua, wrk, curl, python3 (installed with
# apt-get when missing). Everything runs as the current user under a mktemp
# dir; every process it starts is stopped on exit.
# Only one load benchmark runs at a time (lock: target/load-bench/.lock).
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
THREADS_LIST=${THREADS_LIST:-"1 2"}
TARGETS=${TARGETS:-"direct nginx nginx_lua bare bare_core keyward"}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
WARMUP=${WARMUP:-2}
ACCESS_LOG=${ACCESS_LOG:-1}
LUA_HASH=${LUA_HASH:-sha256}
QUIET_WAIT=${QUIET_WAIT:-30}
PIN=${PIN:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
TRACING_SAMPLE=${TRACING_SAMPLE:-}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)   # other work on the machine skews every figure
KEYWARD=${KEYWARD:-$ROOT/target/release/keyward}
BARE=$ROOT/target/release/examples/bare_proxy
BARE_CORE=$ROOT/target/release/examples/bare_core
NGINX_MODULES=/usr/lib/nginx/modules
BENCH_PATH=/api/v1/workspaces/ws_bench/connections

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# ------------------------------------------------------------------ tools
need_pkgs=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
[ -f $NGINX_MODULES/ngx_http_lua_module.so ] || need_pkgs+=(libnginx-mod-http-lua)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get install -y "${need_pkgs[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for m in ndk_http_module.so ngx_http_lua_module.so; do
    [ -f $NGINX_MODULES/$m ] || die "$NGINX_MODULES/$m missing (dpkg -L libnginx-mod-http-lua libnginx-mod-http-ndk)"
done
case $LUA_HASH in sha256|sha1) ;; *) die "LUA_HASH must be sha256 or sha1" ;; esac
case $PIN in 0) ;; 1) command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
    [ "$(nproc)" -ge 2 ] || die "PIN=1 needs at least 2 CPUs" ;;
    *) die "PIN must be 0 or 1" ;; esac

if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release --features bench-proxy --bin keyward --example bare_proxy --example bare_core"
    (cd "$ROOT" && cargo build --release --quiet --features bench-proxy --bin keyward --example bare_proxy --example bare_core)
fi
[ -x "$KEYWARD" ] || die "$KEYWARD missing"
case " $TARGETS " in *" bare "*) [ -x "$BARE" ] || die "$BARE missing" ;; esac
case " $TARGETS " in *" bare_core "*) [ -x "$BARE_CORE" ] || die "$BARE_CORE missing" ;; esac

# ------------------------------------------------------------------ processes
# shellcheck source=lib.sh
source "$ROOT/benches/load/lib.sh"
bench_lock

TMP=$(mktemp -d /tmp/keyward-load.XXXXXX)
OUT=$ROOT/target/load-bench/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
PIDS=()
cleanup() {
    kill_and_wait "${PIDS[@]}"
    PIDS=()
    if [ "$KEEP_TMP" = 1 ]; then echo "temp dir kept: $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run private copies of the binaries, so that a rebuild during the run cannot
# change what is measured halfway; note what they were built from.
REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo '+dirty')"
BUILT=$(date -r "$KEYWARD" +%Y-%m-%dT%H:%M:%S)
mkdir -p "$TMP/bin"
cp -p "$KEYWARD" "$TMP/bin/keyward"
for b in "$BARE" "$BARE_CORE"; do [ -x "$b" ] && cp -p "$b" "$TMP/bin/"; done
KEYWARD=$TMP/bin/keyward
BARE=$TMP/bin/bare_proxy
BARE_CORE=$TMP/bin/bare_core

# Stop the processes started for one thread count (nginx: QUIT = graceful,
# INT/TERM = fast; pingora: INT = fast).
stop_pids() {
    local pid keep=()
    kill_and_wait "$@"
    for pid in "${PIDS[@]}"; do
        [[ " $* " == *" $pid "* ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

# pin_tree CPULIST PID: set the CPU affinity of PID, all its threads and
# all its child processes (an nginx master and its workers).
pin_tree() {
    local cpus=$1 p
    for p in $2 $(pgrep -P "$2" || true); do
        taskset -a -p -c "$cpus" "$p" >/dev/null
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Wait until http://127.0.0.1:PORT answers at all (any status).
wait_port() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at start (see $TMP)"
        curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
        sleep 0.05
    done
    die "$name did not listen on $port"
}

# ------------------------------------------------------------------ nginx
# Common top of every nginx config: own prefix, pid, temp dirs, no daemon.
nginx_conf_head() {
    local name=$1 workers=$2
    cat <<EOF
daemon off;
master_process on;
worker_processes $workers;
pid $TMP/$name/nginx.pid;
error_log $TMP/$name/error.log warn;
events { worker_connections 4096; multi_accept on; }
EOF
}
nginx_http_common() {
    local name=$1
    cat <<EOF
    client_body_temp_path $TMP/$name/body;
    proxy_temp_path $TMP/$name/proxy;
    fastcgi_temp_path $TMP/$name/fastcgi;
    uwsgi_temp_path $TMP/$name/uwsgi;
    scgi_temp_path $TMP/$name/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
EOF
}
nginx_access_log() {
    local name=$1
    if [ "$ACCESS_LOG" = 1 ]; then
        echo "    access_log $TMP/$name/access.log combined buffer=64k flush=1s;"
    else
        echo "    access_log off;"
    fi
}
nginx_upstream_block() {
    cat <<EOF
    upstream app {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
EOF
}
start_nginx() {
    local name=$1
    "$NGINX" -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$TMP/$name/nginx.conf" -t -q 2>"$TMP/$name/test.err" \
        || { cat "$TMP/$name/test.err" >&2; die "nginx config $name invalid"; }
    "${ON_TARGET[@]}" "$NGINX" -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$TMP/$name/nginx.conf" >"$TMP/$name/stdout.log" 2>&1 9>&- &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

write_upstream_conf() {
    mkdir -p "$TMP/upstream"
    {
        nginx_conf_head upstream 1
        cat <<EOF
http {
$(nginx_http_common upstream)
    access_log off;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT reuseport backlog=4096;
        location / {
            add_header X-Upstream-Org \$http_x_org_id;
            return 200 "ok\n";
        }
        # connections the upstream accepted: read between runs only
        location = /__upstream_status { stub_status; }
    }
}
EOF
    } >"$TMP/upstream/nginx.conf"
}

write_nginx_conf() {
    local name=$1 workers=$2 port=$3
    mkdir -p "$TMP/$name"
    {
        nginx_conf_head "$name" "$workers"
        cat <<EOF
http {
$(nginx_http_common "$name")
$(nginx_access_log "$name")
$(nginx_upstream_block)
    map \$http_authorization \$no_auth { "" 1; default 0; }
    server {
        listen 127.0.0.1:$port reuseport backlog=4096;
        location / {
            if (\$no_auth) { return 401; }
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Org-ID bare;
            proxy_pass http://app;
        }
    }
}
EOF
    } >"$TMP/$name/nginx.conf"
}

# The Lua peer. Keys are a Lua table built at init: 999 filler keys plus the
# benchmark key, keyed by the raw digest of the token, each with its org,
# id, workspace set (nil = org-wide) and rate limit.
write_nginx_lua_conf() {
    local name=$1 workers=$2 port=$3
    local hash_init
    mkdir -p "$TMP/$name"
    if [ "$LUA_HASH" = sha256 ]; then
        hash_init='
        local ffi = require "ffi"
        ffi.cdef[[unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);]]
        local crypto = ffi.load("libcrypto.so.3")
        local buf = ffi.new("unsigned char[32]")
        local ffi_string = ffi.string
        HASH = function(s) crypto.SHA256(s, #s, buf); return ffi_string(buf, 32) end'
    else
        hash_init='
        HASH = ngx.sha1_bin'
    fi
    {
        echo "load_module $NGINX_MODULES/ndk_http_module.so;"
        echo "load_module $NGINX_MODULES/ngx_http_lua_module.so;"
        nginx_conf_head "$name" "$workers"
        cat <<EOF
http {
$(nginx_http_common "$name")
$(nginx_access_log "$name")
$(nginx_upstream_block)
    lua_shared_dict ratelimit 16m;
    init_by_lua_block {
        $hash_init
        WINDOW = 60
        KEYS = {}
        for i = 1, 999 do
            KEYS[HASH("wvz_filler" .. i .. "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")] = {
                org = "org_" .. i, id = "key_" .. i,
                workspaces = (i % 2 == 0) and { ["ws_" .. i] = true } or nil,
                limit = 1000000000,
            }
        end
        KEYS[HASH("$BENCH_KEY")] = {
            org = "$BENCH_ORG", id = "key_bench",
            workspaces = { ["$BENCH_WS"] = true },
            limit = 1000000000,
        }
    }
    server {
        listen 127.0.0.1:$port reuseport backlog=4096;
        location / {
            access_by_lua_block {
                local auth = ngx.var.http_authorization
                if not auth or #auth < 8 or auth:sub(1, 7):lower() ~= "bearer " then
                    return ngx.exit(401)
                end
                local key = KEYS[HASH(auth:sub(8))]
                if not key then return ngx.exit(401) end
                local m = ngx.re.match(ngx.var.uri, "^/api/v1/workspaces/([^/]+)", "jo")
                local ws = m and m[1]
                if ws and key.workspaces and not key.workspaces[ws] then
                    return ngx.exit(403)
                end
                local now = ngx.time()
                local window = now - now % WINDOW
                local count, err = ngx.shared.ratelimit:incr(key.org .. ":" .. window, 1, 0, WINDOW)
                if not count then
                    ngx.log(ngx.ERR, "ratelimit: ", err)
                    return ngx.exit(500)
                end
                local remaining = key.limit - count
                ngx.ctx.rl = { key.limit, remaining < 0 and 0 or remaining, window + WINDOW }
                if remaining < 0 then return ngx.exit(429) end
                ngx.req.set_header("X-Org-ID", key.org)
                ngx.req.set_header("X-Auth-Method", "api_key")
                ngx.req.set_header("X-Api-Key-ID", key.id)
                if ws then ngx.req.set_header("X-Workspace-ID", ws) end
            }
            header_filter_by_lua_block {
                local rl = ngx.ctx.rl
                if rl then
                    ngx.header["X-RateLimit-Limit"] = rl[1]
                    ngx.header["X-RateLimit-Remaining"] = rl[2]
                    ngx.header["X-RateLimit-Reset"] = rl[3]
                end
            }
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }
    }
}
EOF
    } >"$TMP/$name/nginx.conf"
}

# ------------------------------------------------------------------ keyward
# Snapshot (lib.sh): 999 filler keys plus the benchmark key, scoped to BENCH_WS.
make_snapshot() { make_bench_snapshot "$TMP/keyward"; }

# write_keyward_conf THREADS PORT ADMIN_PORT [NAME]: config for target NAME
# (keyward or keyward_before), beside the shared snapshot in $TMP/keyward
# (lib.sh's write_bench_conf), traced when TRACING_SAMPLE is set.
write_keyward_conf() {
    local threads=$1 port=$2 admin=$3 name=${4:-keyward}
    local dst=$TMP/keyward/$name-$threads.toml
    write_bench_conf "$dst" "$port" "$admin" "$threads" "$UPSTREAM_PORT"
    if [ -n "$TRACING_SAMPLE" ] && [ "$name" = keyward ]; then
        printf '\n[tracing]\nendpoint = "http://127.0.0.1:%s/v1/traces"\nsample_ratio = %s\n' \
            "$OTLP_PORT" "$TRACING_SAMPLE" >>"$dst"
        "$KEYWARD" check --config "$dst" >"$dst.check.txt" || die "keyward check failed for $dst"
    fi
}

# ------------------------------------------------------------------ wrk
# wrk_run NAME PORT SECONDS OUTFILE
wrk_run() {
    local port=$2 secs=$3 out=$4
    "${ON_CLIENT[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency \
        -H "Authorization: Bearer $BENCH_KEY" \
        "http://127.0.0.1:$port$BENCH_PATH" >"$out" 2>&1
}

# Pre-flight: the benchmark request answers 200 with the expected headers.
check_target() {
    local name=$1 port=$2 hdrs status org
    hdrs=$(curl -s -D - -o /dev/null -H "Authorization: Bearer $BENCH_KEY" \
        "http://127.0.0.1:$port$BENCH_PATH") || die "$name: curl failed"
    status=$(printf '%s' "$hdrs" | awk 'NR==1{print $2}')
    [ "$status" = 200 ] || { printf '%s\n' "$hdrs" >&2; die "$name answered $status, not 200"; }
    org=$(printf '%s' "$hdrs" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-upstream-org"{print $2}')
    local want_org=bare rate=0
    case $name in
        direct) want_org= ;;
        nginx_lua|keyward|keyward_before) want_org=$BENCH_ORG; rate=1 ;;
    esac
    [ "$org" = "$want_org" ] || { printf '%s\n' "$hdrs" >&2; die "$name: upstream saw X-Org-ID '$org', want '$want_org'"; }
    if [ $rate = 1 ]; then
        printf '%s' "$hdrs" | grep -qi '^x-ratelimit-remaining:' \
            || { printf '%s\n' "$hdrs" >&2; die "$name: no X-RateLimit-Remaining"; }
    fi
    # and without a credential: 401
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$BENCH_PATH")
    if [ "$name" != direct ] && [ "$status" != 401 ]; then
        die "$name answered $status without Authorization, not 401"
    fi
    log "$name on :$port answers 200 (X-Upstream-Org: ${org:--})"
}

# ------------------------------------------------------------------ run
BENCH_ORG=org_bench
BENCH_WS=ws_bench
UPSTREAM_PORT=$(free_port)
make_snapshot
log "benchmark key ${BENCH_KEY:0:8}… path $BENCH_PATH"

if [ -n "$TRACING_SAMPLE" ]; then
    # the OTLP/HTTP receiver: reads each export, answers 200, keeps nothing
    OTLP_PORT=$(free_port)
    python3 - "$OTLP_PORT" >"$TMP/otlp-sink.log" 2>&1 9>&- <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
    PIDS+=($!)
    wait_port "$OTLP_PORT" "$!" otlp-sink
    log "keyward traced at sample_ratio $TRACING_SAMPLE into the sink on :$OTLP_PORT"
fi

write_upstream_conf
start_nginx upstream
UPSTREAM_PID=$LAST_PID
wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" upstream

RAW=$OUT/results.tsv
THREADS_TSV=$OUT/threads.tsv
printf 'threads\tround\ttarget\ttid\tthread\tcpu_pct\n' >"$THREADS_TSV"
printf 'threads\tround\ttarget\treq_per_s\tp50_ms\tp99_ms\tnon2xx\tsocket_errors\tother_cpu_pct\tupstream_conns\n' >"$RAW"

# Connections the upstream has accepted so far (stub_status): the difference
# over a run shows whether a proxy kept its upstream connections alive.
upstream_accepts() {
    curl -s "http://127.0.0.1:$UPSTREAM_PORT/__upstream_status" | awk 'NR==3{print $1}'
}

# CPU accounting, so that a run disturbed by other work on the machine shows.
# cpu_mark prints "monotonic_s machine_busy_jiffies our_jiffies", where ours
# is this shell, its children already reaped (wrk) and every live descendant
# (nginx workers, pingora). other_cpu MARK1 MARK2 prints the CPU the rest of
# the machine used in between, in % of one core.
cpu_mark() {
    python3 - "$$" <<'EOF'
import os, sys, time
root = int(sys.argv[1])
f = open("/proc/stat").readline().split()[1:]
busy = sum(int(x) for i, x in enumerate(f[:8]) if i not in (3, 4))  # minus idle, iowait
procs = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(pid)] = (int(rest[1]), sum(map(int, rest[11:15])))  # ppid, utime+stime+cutime+cstime
me = os.getpid()
ours, todo = 0, [root]
while todo:
    p = todo.pop()
    if p == me or p not in procs:
        continue
    ours += procs[p][1]
    todo += [c for c, (pp, _) in procs.items() if pp == p]
print(time.monotonic(), busy, ours)
EOF
}
other_cpu() {
    python3 -c '
import os, sys
t1, b1, o1 = map(float, sys.argv[1].split()); t2, b2, o2 = map(float, sys.argv[2].split())
hz = os.sysconf("SC_CLK_TCK")
print(f"{max(0.0, ((b2 - b1) - (o2 - o1)) / hz / (t2 - t1) * 100):.0f}")' "$1" "$2"
}
# Wait (up to QUIET_WAIT s) until the rest of the machine is nearly idle.
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT)) a b busy
    while :; do
        a=$(cpu_mark); sleep 1; b=$(cpu_mark)
        busy=$(other_cpu "$a" "$b")
        [ "$busy" -lt 20 ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            log "other processes use ${busy}% of a core; measuring anyway"
            return 0
        fi
        log "other processes use ${busy}% of a core; waiting"
        sleep 2
    done
}

# Per-thread CPU of a target: thread_mark PID prints the ticks (utime +
# stime) of every thread of PID and of its child processes (nginx workers);
# thread_cpu MARK1 MARK2 prints "tid<TAB>name<TAB>% of one core" in between.
thread_mark() {
    python3 - "$1" <<'EOF'
import os, sys, time
root = int(sys.argv[1])
kids = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
print(time.monotonic())
todo = [root]
while todo:
    p = todo.pop()
    todo += kids.get(p, [])
    try:
        tids = os.listdir(f"/proc/{p}/task")
    except OSError:
        continue
    for tid in tids:
        try:
            raw = open(f"/proc/{p}/task/{tid}/stat").read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")].replace(" ", "_")
        rest = raw.rsplit(")", 1)[1].split()
        print(tid, name, int(rest[11]) + int(rest[12]))
EOF
}
thread_cpu() {
    python3 - "$1" "$2" <<'EOF'
import os, sys
def load(f):
    lines = open(f).read().split("\n")
    return float(lines[0]), {l.split()[0]: (l.split()[1], int(l.split()[2])) for l in lines[1:] if l.strip()}
t1, a = load(sys.argv[1]); t2, b = load(sys.argv[2])
hz = os.sysconf("SC_CLK_TCK")
for tid, (name, ticks) in b.items():
    pct = (ticks - a.get(tid, (name, 0))[1]) / hz / (t2 - t1) * 100
    print(f"{tid}\t{name}\t{pct:.0f}")
EOF
}

# Parse one wrk output into "rps p50_ms p99_ms non2xx socket_errors".
parse_wrk() {
    python3 - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r'([\d.]+)(us|ms|s)$', v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == 'us' else n * 1000 if u == 's' else n
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', t).group(1))
p50 = ms(re.search(r'^\s+50%\s+(\S+)', t, re.M).group(1))
p99 = ms(re.search(r'^\s+99%\s+(\S+)', t, re.M).group(1))
m = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', t)
non2xx = int(m.group(1)) if m else 0
m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', t)
sock = sum(map(int, m.groups())) if m else 0
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {non2xx} {sock}")
EOF
}

for N in $THREADS_LIST; do
    log "---- $N worker(s)/thread(s)"
    declare -A PORT=() PIDOF=()
    started=()
    # PIN=1, 1 worker: client and upstream on CPU 0, the target on CPU 1.
    ON_TARGET=() ON_CLIENT=()
    if [ "$PIN" = 1 ] && [ "$N" = 1 ]; then
        ON_TARGET=(taskset -c 1) ON_CLIENT=(taskset -c 0)
        pin_tree 0 "$UPSTREAM_PID"
        log "pinned: wrk and the upstream on CPU 0, the target on CPU 1"
    elif [ "$PIN" = 1 ]; then
        pin_tree "0-$(($(nproc) - 1))" "$UPSTREAM_PID"
    fi
    PORT[direct]=$UPSTREAM_PORT
    for t in $TARGETS; do
        case $t in
            direct) ;;
            nginx)
                PORT[nginx]=$(free_port)
                write_nginx_conf nginx "$N" "${PORT[nginx]}"
                start_nginx nginx; started+=("$LAST_PID"); PIDOF[nginx]=$LAST_PID
                wait_port "${PORT[nginx]}" "$LAST_PID" nginx ;;
            nginx_lua)
                PORT[nginx_lua]=$(free_port)
                write_nginx_lua_conf nginx_lua "$N" "${PORT[nginx_lua]}"
                start_nginx nginx_lua; started+=("$LAST_PID"); PIDOF[nginx_lua]=$LAST_PID
                wait_port "${PORT[nginx_lua]}" "$LAST_PID" nginx_lua ;;
            bare|bare_core)
                PORT[$t]=$(free_port)
                mkdir -p "$TMP/$t"
                bin=$BARE; [ "$t" = bare_core ] && bin=$BARE_CORE
                "${ON_TARGET[@]}" "$bin" "127.0.0.1:${PORT[$t]}" "127.0.0.1:$UPSTREAM_PORT" "$N" \
                    >"$TMP/$t/stdout-$N.log" 2>&1 9>&- &
                PIDS+=($!); started+=($!); PIDOF[$t]=$!
                wait_port "${PORT[$t]}" "$!" "$t" ;;
            keyward|keyward_before)
                # keyward_before: the binary in $KEYWARD_BEFORE (an earlier
                # build) on the same config and snapshot, for before/after.
                PORT[$t]=$(free_port)
                admin=$(free_port)
                write_keyward_conf "$N" "${PORT[$t]}" "$admin" "$t"
                bin=$KEYWARD; [ "$t" = keyward_before ] && bin=${KEYWARD_BEFORE:?set KEYWARD_BEFORE to an earlier keyward binary}
                kw_log=$TMP/keyward/access-$t-$N.log
                [ "$ACCESS_LOG" = 1 ] && kw_filter=info || kw_filter=warn
                BETTER_AUTH_SECRET=load-bench-secret KEYWARD_LOG=$kw_filter \
                    "${ON_TARGET[@]}" "$bin" run --config "$TMP/keyward/$t-$N.toml" >"$kw_log" 2>"$TMP/keyward/stderr-$t-$N.log" 9>&- &
                PIDS+=($!); started+=($!); PIDOF[$t]=$!
                wait_port "${PORT[$t]}" "$!" "$t" ;;
            *) die "unknown target $t" ;;
        esac
    done

    for t in $TARGETS; do
        check_target "$t" "${PORT[$t]}"
        if [ "$WARMUP" -gt 0 ]; then
            wrk_run "$t" "${PORT[$t]}" "$WARMUP" "$OUT/warmup-$N-$t.txt"
        fi
    done

    for r in $(seq "$ROUNDS"); do
        for t in $TARGETS; do
            f=$OUT/wrk-$N-$r-$t.txt
            if [ "$QUIET_WAIT" -gt 0 ]; then wait_quiet; fi
            a1=$(upstream_accepts)
            m1=$(cpu_mark)
            [ -n "${PIDOF[$t]:-}" ] && thread_mark "${PIDOF[$t]}" >"$TMP/threads-1"
            wrk_run "$t" "${PORT[$t]}" "$DURATION" "$f"
            [ -n "${PIDOF[$t]:-}" ] && thread_mark "${PIDOF[$t]}" >"$TMP/threads-2"
            m2=$(cpu_mark)
            if [ -n "${PIDOF[$t]:-}" ]; then
                thread_cpu "$TMP/threads-1" "$TMP/threads-2" | sed "s/^/$N\t$r\t$t\t/" >>"$THREADS_TSV"
            fi
            a2=$(upstream_accepts)
            other=$(other_cpu "$m1" "$m2")
            upconn=$((a2 - a1 - 1))   # minus the status request itself
            parsed=$(parse_wrk "$f") || { cat "$f" >&2; die "cannot parse $f"; }
            read -r rps p50 p99 non2xx sock <<<"$parsed"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$N" "$r" "$t" "$rps" "$p50" "$p99" "$non2xx" "$sock" "$other" "$upconn" >>"$RAW"
            log "threads=$N round=$r $t: $rps req/s p50 ${p50} ms p99 ${p99} ms non2xx=$non2xx socket_errors=$sock other_cpu=${other}% upstream_conns=$upconn"
        done
    done
    if [ -f "$TMP/keyward/access-keyward-$N.log" ]; then
        log "keyward log (threads=$N): $(wc -l <"$TMP/keyward/access-keyward-$N.log") lines"
    fi
    stop_pids "${started[@]}"
    unset PORT PIDOF
done

# ------------------------------------------------------------------ report
report() {
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "# $("$NGINX" -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), keyward $REV at start (binary built $BUILT)"
    echo "# load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS round(s), ACCESS_LOG=$ACCESS_LOG, LUA_HASH=$LUA_HASH, path $BENCH_PATH"
    echo "# PIN=$PIN$([ "$PIN" = 1 ] && echo ' (1 worker: wrk and upstream on CPU 0, target on CPU 1; 2 workers unpinned)')"
    python3 - "$RAW" "$THREADS_TSV" <<'EOF'
import csv, statistics as st, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
trows = list(csv.DictReader(open(sys.argv[2]), delimiter='\t'))
threads = list(dict.fromkeys(r['threads'] for r in rows))
targets = list(dict.fromkeys(r['target'] for r in rows))
by = {(r['threads'], r['round'], r['target']): r for r in rows}
rounds = {n: sorted({r['round'] for r in rows if r['threads'] == n}, key=int) for n in threads}
med = {}
bad = []
print(f"{'target':<14} {'workers':>7} {'req/s':>9} {'min':>9} {'max':>9} {'p50 ms':>8} {'p99 ms':>8} {'other%':>6} {'up conns':>8} {'2w/1w':>6}")
for t in targets:
    for n in threads:
        rs = [r for r in rows if r['threads'] == n and r['target'] == t]
        if not rs:
            continue
        rps = [float(r['req_per_s']) for r in rs]
        p50 = st.median(float(r['p50_ms']) for r in rs)
        p99 = st.median(float(r['p99_ms']) for r in rs)
        med[(n, t)] = (st.median(rps), p99)
        other = max(int(r['other_cpu_pct']) for r in rs)
        upc = st.median(int(r['upstream_conns']) for r in rs)
        scale = ""
        if n == '2' and ('1', t) in med:
            scale = f"{med[(n, t)][0] / med[('1', t)][0]:.2f}"
        print(f"{t:<14} {n:>7} {st.median(rps):>9.0f} {min(rps):>9.0f} {max(rps):>9.0f} {p50:>8.3f} {p99:>8.3f} {other:>6} {upc:>8.0f} {scale:>6}")
        for r in rs:
            if int(r['non2xx']) or int(r['socket_errors']):
                bad.append(f"workers={n} round={r['round']} {t}: non2xx={r['non2xx']} socket_errors={r['socket_errors']}")
print("(req/s, p50, p99: median of the rounds; min/max: spread of req/s; other%: most CPU, in % of one")
print(" core, that processes not started by this run used during a round; up conns: connections the")
print(" upstream accepted during a round, median (33 for direct: wrk's 32 and its probe; a proxy that")
print(" keeps its upstream connections alive opens few or none); 2w/1w: median req/s at 2 workers over")
print(" the median at 1 worker, both from this run)")
print()
print("Ratios per round (keyward's round r over the other target's round r, measured back to back):")
print(f"{'ratio':<28} {'workers':>7} {'median':>7} {'min':>6} {'max':>6}  rounds")
pairs = [('keyward', 'keyward_before'), ('keyward', 'nginx_lua'), ('keyward', 'nginx'),
         ('keyward', 'bare'), ('keyward', 'bare_core'), ('bare_core', 'nginx_lua')]
for a, b in pairs:
    for n in threads:
        vals = [float(by[(n, r, a)]['req_per_s']) / float(by[(n, r, b)]['req_per_s'])
                for r in rounds[n] if (n, r, a) in by and (n, r, b) in by]
        if vals:
            print(f"{a + '/' + b:<28} {n:>7} {st.median(vals):>7.2f} {min(vals):>6.2f} {max(vals):>6.2f}  "
                  + " ".join(f"{v:.2f}" for v in vals))
for n in threads:
    vals = [(float(by[(n, r, 'keyward')]['p99_ms']), float(by[(n, r, 'nginx_lua')]['p99_ms']))
            for r in rounds[n] if (n, r, 'keyward') in by and (n, r, 'nginx_lua') in by]
    if vals:
        q = [k / l for k, l in vals]
        print(f"{'p99 keyward/nginx_lua':<28} {n:>7} {st.median(q):>7.2f} {min(q):>6.2f} {max(q):>6.2f}  "
              + " ".join(f"{k:.2f}/{l:.2f}ms" for k, l in vals))
if trows:
    print()
    print("CPU per thread, % of one core (median by rank over the rounds; threads under 1% left out):")
    groups = defaultdict(lambda: defaultdict(list))
    cpu_us = {}
    for r in trows:
        groups[(r['threads'], r['target'])][r['round']].append((int(r['cpu_pct']), r['thread']))
    for t in targets:
        for n in threads:
            g = groups.get((n, t))
            if not g:
                continue
            ranked = [sorted(v, reverse=True) for v in g.values()]
            width = min(len(v) for v in ranked)
            cols = []
            total = st.median(sum(p for p, _ in v) for v in ranked)
            for i in range(width):
                pct = st.median(v[i][0] for v in ranked)
                if pct >= 1:
                    cols.append(f"{ranked[0][i][1]} {pct:.0f}")
            # CPU per request: the target's CPU over the round / its requests
            per_req = [sum(p for p, _ in v) / 100 * 1e6 / float(by[(n, r, t)]['req_per_s'])
                       for r, v in g.items() if (n, r, t) in by]
            cpu_us[(n, t)] = {r: sum(p for p, _ in v) / 100 * 1e6 / float(by[(n, r, t)]['req_per_s'])
                              for r, v in g.items() if (n, r, t) in by}
            us = f" ({st.median(per_req):.1f} µs CPU/request)" if per_req else ""
            print(f"  {t:<14} {n}w: total {total:.0f}{us}: " + ", ".join(cols))
    print("CPU per request, per round (keyward's over the other's, same round; < 1: keyward spends less):")
    for a, b in [('keyward', 'nginx_lua'), ('keyward', 'nginx'), ('keyward', 'keyward_before')]:
        for n in threads:
            ka, kb = cpu_us.get((n, a), {}), cpu_us.get((n, b), {})
            q = [ka[r] / kb[r] for r in ka if r in kb]
            if q:
                print(f"  cpu/request {a + '/' + b:<26} {n}w: median {st.median(q):.2f}  "
                      + " ".join(f"{v:.2f}" for v in q))
if bad:
    print("ERRORS seen by wrk:")
    print("\n".join(bad))
    sys.exit(3)
print("wrk saw no non-2xx responses and no socket errors")
EOF
}
status=0
report >"$OUT/summary.txt" || status=$?
cat "$OUT/summary.txt"
echo "raw results: $RAW, wrk outputs and summary.txt in $OUT" >&2
exit "$status"
