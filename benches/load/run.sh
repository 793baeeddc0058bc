#!/usr/bin/env bash
# Load benchmark for issue 9: keyward against nginx, nginx + Lua and a bare
# pingora proxy, on loopback, in one interleaved run.
#
#   benches/load/run.sh                         # full run (DURATION=10 ROUNDS=3)
#   DURATION=3 ROUNDS=1 benches/load/run.sh     # quick check
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
#   5. Prints req/s, p50, p99 per target (median of the rounds, plus the
#      spread of req/s, the CPU other processes used meanwhile, and how many
#      connections the upstream accepted) and the ratios keyward/nginx_lua
#      and keyward/bare, and fails if wrk saw any non-2xx response or socket
#      error.
#      Raw results (one line per wrk run) and the wrk outputs go to
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
#   KEEP_TMP=0         1: keep the temp dir (configs, logs) for inspection
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
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)   # other work on the machine skews every figure
KEYWARD=$ROOT/target/release/keyward
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

if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release --features bench-proxy --bin keyward --example bare_proxy --example bare_core"
    (cd "$ROOT" && cargo build --release --quiet --features bench-proxy --bin keyward --example bare_proxy --example bare_core)
fi
[ -x "$KEYWARD" ] || die "$KEYWARD missing"
[ -x "$BARE" ] || die "$BARE missing"

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
cp -p "$KEYWARD" "$BARE" "$BARE_CORE" "$TMP/bin/"
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
    "$NGINX" -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$TMP/$name/nginx.conf" >"$TMP/$name/stdout.log" 2>&1 9>&- &
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
# Snapshot: 999 filler keys plus the benchmark key, scoped to BENCH_WS.
make_snapshot() {
    local db=$TMP/keyward/snapshot.db
    mkdir -p "$TMP/keyward"
    "$KEYWARD" snapshot init "$db" >/dev/null
    BENCH_KEY=$("$KEYWARD" keys create --snapshot "$db" --org "$BENCH_ORG" --workspace "$BENCH_WS")
    python3 - "$db" <<'EOF'
import hashlib, json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
with db:
    for i in range(1, 1000):
        tok = f"wvz_filler{i}" + "x" * 30
        db.execute("INSERT OR IGNORE INTO organizations (id, plan) VALUES (?, 'free')", (f"org_{i}",))
        perms = None
        if i % 2 == 0:
            db.execute("INSERT INTO workspaces (id, organization_id) VALUES (?, ?)", (f"ws_{i}", f"org_{i}"))
            perms = json.dumps({"scope": "workspace", "workspaceIds": [f"ws_{i}"]})
        db.execute(
            "INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, permissions) VALUES (?, ?, ?, ?, ?)",
            (f"key_{i}", f"org_{i}", hashlib.sha256(tok.encode()).hexdigest(), tok[:8], perms))
EOF
}

# config/keyward.toml with its route table, on our ports, N threads, every
# plan at 1e9 requests per window.
# write_keyward_conf THREADS PORT ADMIN_PORT [NAME]: config for target NAME
# (keyward or keyward_before), beside the shared snapshot in $TMP/keyward.
write_keyward_conf() {
    local threads=$1 port=$2 admin=$3 name=${4:-keyward}
    python3 - "$ROOT/config/keyward.toml" "$TMP/keyward/$name-$threads.toml" \
        "$port" "$admin" "$threads" "$UPSTREAM_PORT" <<'EOF'
import re, sys, tomllib
src, dst, port, admin, threads, up = sys.argv[1:]
text = open(src).read()
subs = [
    (r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"'),
    (r'(?m)^admin_listen = .*$', f'admin_listen = "127.0.0.1:{admin}"'),
    (r'(?m)^threads = .*$', f'threads = {threads}'),
    (r'(?m)^address = .*$', f'address = "127.0.0.1:{up}"'),
    (r'(?m)^path = "snapshot.db".*$', 'path = "snapshot.db"'),
    (r'(?m)^requests_per_window = .*$', 'requests_per_window = 1000000000'),
]
for pat, rep in subs:
    text, n = re.subn(pat, rep, text)
    assert n >= 1, f"pattern {pat!r} not found in {src}"
cfg = tomllib.loads(text)
assert cfg["server"]["threads"] == int(threads)
open(dst, "w").write(text)
EOF
    "$KEYWARD" check --config "$TMP/keyward/$name-$threads.toml" >"$TMP/keyward/check-$name-$threads.txt" \
        || die "keyward check failed for $TMP/keyward/$name-$threads.toml"
}

# ------------------------------------------------------------------ wrk
# wrk_run NAME PORT SECONDS OUTFILE
wrk_run() {
    local port=$2 secs=$3 out=$4
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency \
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

write_upstream_conf
start_nginx upstream
UPSTREAM_PID=$LAST_PID
wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" upstream

RAW=$OUT/results.tsv
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
    declare -A PORT=()
    started=()
    PORT[direct]=$UPSTREAM_PORT
    for t in $TARGETS; do
        case $t in
            direct) ;;
            nginx)
                PORT[nginx]=$(free_port)
                write_nginx_conf nginx "$N" "${PORT[nginx]}"
                start_nginx nginx; started+=("$LAST_PID")
                wait_port "${PORT[nginx]}" "$LAST_PID" nginx ;;
            nginx_lua)
                PORT[nginx_lua]=$(free_port)
                write_nginx_lua_conf nginx_lua "$N" "${PORT[nginx_lua]}"
                start_nginx nginx_lua; started+=("$LAST_PID")
                wait_port "${PORT[nginx_lua]}" "$LAST_PID" nginx_lua ;;
            bare|bare_core)
                PORT[$t]=$(free_port)
                mkdir -p "$TMP/$t"
                bin=$BARE; [ "$t" = bare_core ] && bin=$BARE_CORE
                "$bin" "127.0.0.1:${PORT[$t]}" "127.0.0.1:$UPSTREAM_PORT" "$N" \
                    >"$TMP/$t/stdout-$N.log" 2>&1 9>&- &
                PIDS+=($!); started+=($!)
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
                    "$bin" run --config "$TMP/keyward/$t-$N.toml" >"$kw_log" 2>"$TMP/keyward/stderr-$t-$N.log" 9>&- &
                PIDS+=($!); started+=($!)
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
            wrk_run "$t" "${PORT[$t]}" "$DURATION" "$f"
            m2=$(cpu_mark)
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
    unset PORT
done

# ------------------------------------------------------------------ report
report() {
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "# $("$NGINX" -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), keyward $REV at start (binary built $BUILT)"
    echo "# load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS round(s), ACCESS_LOG=$ACCESS_LOG, LUA_HASH=$LUA_HASH, path $BENCH_PATH"
    python3 - "$RAW" <<'EOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
threads = list(dict.fromkeys(r['threads'] for r in rows))
targets = list(dict.fromkeys(r['target'] for r in rows))
med = {}
bad = []
print(f"{'target':<10} {'threads':>7} {'req/s':>9} {'min':>9} {'max':>9} {'p50 ms':>8} {'p99 ms':>8} {'other%':>6} {'up conns':>8}")
for n in threads:
    for t in targets:
        rs = [r for r in rows if r['threads'] == n and r['target'] == t]
        rps = [float(r['req_per_s']) for r in rs]
        p50 = st.median(float(r['p50_ms']) for r in rs)
        p99 = st.median(float(r['p99_ms']) for r in rs)
        med[(n, t)] = (st.median(rps), p99)
        other = max(int(r['other_cpu_pct']) for r in rs)
        upc = st.median(int(r['upstream_conns']) for r in rs)
        print(f"{t:<10} {n:>7} {st.median(rps):>9.0f} {min(rps):>9.0f} {max(rps):>9.0f} {p50:>8.3f} {p99:>8.3f} {other:>6} {upc:>8.0f}")
        for r in rs:
            if int(r['non2xx']) or int(r['socket_errors']):
                bad.append(f"threads={n} round={r['round']} {t}: non2xx={r['non2xx']} socket_errors={r['socket_errors']}")
print("(req/s, p50, p99: median of the rounds; min/max: spread of req/s;")
print(" other%: most CPU, in % of one core, that processes not started by this run used during a round;")
print(" up conns: connections the upstream accepted during a round, median: 33 for direct (wrk's 32")
print(" and its probe); a proxy that keeps its upstream connections alive opens few or none)")
for n in threads:
    def ratio(a, b):
        if (n, a) in med and (n, b) in med:
            return f"{a}/{b} = {med[(n, a)][0] / med[(n, b)][0]:.2f}"
        return None
    parts = [p for p in (ratio('keyward', 'keyward_before'), ratio('keyward', 'nginx_lua'), ratio('keyward', 'bare'), ratio('keyward', 'bare_core'), ratio('bare', 'nginx_lua'), ratio('bare_core', 'nginx_lua')) if p]
    p99 = ""
    if (n, 'keyward') in med and (n, 'nginx_lua') in med:
        p99 = f"; p99 keyward {med[(n, 'keyward')][1]:.3f} ms vs nginx_lua {med[(n, 'nginx_lua')][1]:.3f} ms"
    if parts:
        print(f"threads={n}: " + ", ".join(parts) + p99)
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
