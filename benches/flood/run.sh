#!/usr/bin/env bash
# Random-token flood (issues 8 and 19): is memory bounded, does the valid
# client beside the flood keep its latency, do unknown tokens reach the
# store? Release keyward against an nginx upstream; wrk drives three phases
# of FLOOD_SECS each:
#   random     random tokens from one IP     -> per-IP throttle engages (429),
#                                                store lookups stop growing
#   random_ip  random tokens, random XFF IPs  -> (4 x FLOOD_SECS) no IP is throttled:
#                                                the token filter answers them
#                                                (no store lookup); before it, the
#                                                negative cache and the throttle
#                                                map fill to their caps; RSS flat
#   repeat     one bad token, random XFF IPs  -> negative cache / filter
# A valid key is measured beside the flood (its req/s, p99 and errors).
#
#   benches/flood/run.sh                    FLOOD_SECS=20, flood paced at FLOOD_RATE=10000 req/s
#   FLOOD_RATE=0 benches/flood/run.sh       unpaced (as fast as keyward answers, 32 connections)
#   PHASES=random_ip FLOOD_SECS=5 benches/flood/run.sh
#   cp target/release/keyward /tmp/kw-before    # before a change, then rebuild and:
#   KEYWARD_BEFORE=/tmp/kw-before benches/flood/run.sh   # both, one after the other, same snapshot
#
# Pacing: FLOOD_CONNS connections (100) each wait FLOOD_CONNS*1000/FLOOD_RATE
# ms (jittered) after a response, so the flood is at most FLOOD_RATE req/s
# and a faster keyward does not simply receive more of it (a slower one,
# whose latency adds to the delay, receives somewhat less).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${FLOOD_SECS:-20}"
RATE="${FLOOD_RATE:-10000}"
CONNS="${FLOOD_CONNS:-100}"
PHASES="${PHASES:-random random_ip repeat}"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk nginx-light; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin keyward -q
KW=target/release/keyward
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
E=$(port)
$KW snapshot init "$tmp/snap.db" >/dev/null
KEY=$($KW keys create --snapshot "$tmp/snap.db" --org org_1 --workspace ws_1)
$KW keys create --snapshot "$tmp/snap.db" --org org_1 >/dev/null
if [ "$RATE" -gt 0 ]; then
  DELAY=$(( CONNS * 1000 / RATE )); FLOOD_C=$CONNS
  echo "flood paced: $CONNS connections, ~${DELAY} ms between requests each (<= $RATE req/s)"
else
  DELAY=0; FLOOD_C=32
  echo "flood unpaced: 32 connections"
fi
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/nginx; proxy_temp_path $tmp/nginx; fastcgi_temp_path $tmp/nginx;
  uwsgi_temp_path $tmp/nginx; scgi_temp_path $tmp/nginx;
  server { listen 127.0.0.1:$E; keepalive_requests 100000; location / { return 200 "ok\n"; } }
}
NGX
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &

run_one() { # BINARY LABEL
  local bin=$1 label=$2 P A KWPID
  P=$(port); A=$(port)
  cat > "$tmp/kw.toml" <<CONF
[server]
listen = "127.0.0.1:$P"
admin_listen = "127.0.0.1:$A"
threads = 2
trusted_proxies = ["127.0.0.1/32"]
[upstream]
address = "127.0.0.1:$E"
[snapshot]
path = "$tmp/snap.db"
[cache]
capacity = 100000
negative_ttl_s = 5
[rate_limit]
auth_failures_per_ip = 30
[plans.free]
requests_per_window = 1000000000
[[route]]
path = "/api/v1/workspaces/{workspaceId}/**"
workspace = "path:workspaceId"
CONF
  "$bin" run --config "$tmp/kw.toml" > "$tmp/kw-$label.log" 2>&1 &
  KWPID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$A/readyz" >/dev/null && break; sleep 0.1; done
  rss() { awk '/VmRSS/{print $2}' /proc/$KWPID/status; }
  lookups() { curl -s "http://127.0.0.1:$A/metrics" | awk '/^keyward_snapshot_lookups_total\{table="api_keys"\}/{print $2}'; }
  metric() { curl -s "http://127.0.0.1:$A/metrics" | awk -v m="$1" '$1==m{print $2}'; }
  # the token filter (when this keyward has one) is built off the swap path
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$A/metrics" | grep -q '^keyward_token_filter' || break
    [ "$(metric 'keyward_token_filter_builds_total{result="ok"}')" != 0 ] && break
    sleep 0.1
  done
  echo "#### $label ($bin): pid $KWPID, RSS at start $(rss) KiB"
  for mode in $PHASES; do
    local l0 l1 secs samples FL VA
    l0=$(lookups)
    secs=$SECS; [ $mode = random_ip ] && secs=$((SECS * 4))
    FLOOD_MODE=$mode FLOOD_DELAY_MS=$DELAY wrk -t1 -c$FLOOD_C -d"${secs}s" -s benches/flood/flood.lua "http://127.0.0.1:$P" > "$tmp/flood.txt" &
    FL=$!
    # The valid client comes from its own (forwarded) IP, as another tenant would.
    wrk -t1 -c4 -d"${secs}s" --latency -H "Authorization: Bearer $KEY" -H "X-Forwarded-For: 192.0.2.7" \
      "http://127.0.0.1:$P/api/v1/workspaces/ws_1/flows" > "$tmp/valid.txt" &
    VA=$!
    samples=""
    for _ in $(seq $((secs / 5))); do sleep 5; samples="$samples $(( $(rss) / 1024 ))"; done
    wait $VA
    wait $FL
    l1=$(lookups)
    echo "== $label $mode (${secs}s)"
    echo "  flood:  $(grep -E '^Requests/sec' "$tmp/flood.txt")  $(grep statuses "$tmp/flood.txt")"
    echo "  api_keys lookups during phase: $((${l1%.*} - ${l0%.*}))   cache negative hits total: $(metric 'keyward_cache_lookups_total{result="negative_hit"}')   filter ruled out total: $(metric 'keyward_token_filter_total{result="ruled_out"}')"
    echo "  valid key beside it: $(grep -E '^Requests/sec' "$tmp/valid.txt")  p99 $(awk '$1=="99%"{print $2}' "$tmp/valid.txt")  $(grep -E 'Non-2xx|Socket errors' "$tmp/valid.txt" | tr '\n' ' ')"
    echo "  RSS every 5 s (MiB):$samples"
  done
  kill $KWPID; wait $KWPID 2>/dev/null || true
}

[ -n "${KEYWARD_BEFORE:-}" ] && run_one "$KEYWARD_BEFORE" before
run_one "$KW" keyward
