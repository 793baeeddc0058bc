#!/usr/bin/env bash
# deploy/check.sh: proves deploy/prometheus and deploy/grafana work against a
# real keyward.
#   1. promtool check rules + promtool test rules (the alert unit tests);
#   2. builds keyward (debug), starts it on free loopback ports with the
#      shipped config/keyward.toml, a fresh snapshot and minted keys, in front
#      of a python3 http.server upstream;
#   3. starts a Prometheus server scraping keyward's /metrics every second and
#      loading the rules, sends ~10 s of mixed traffic (forwarded, 401, 403,
#      429), then evaluates through the HTTP API every Grafana panel query
#      ($__rate_interval = 1m, $job/$instance = .*), every recording rule
#      (must return >= 1 series) and every alert expression (must parse).
# Exits non-zero on any failure. Needs promtool and prometheus (Debian package
# `prometheus`, installed when missing), python3 and cargo. Loopback only.
# KEYWARD_BIN=path skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RULES=$ROOT/deploy/prometheus/keyward-rules.yml
RULE_TESTS=$ROOT/deploy/prometheus/keyward-rules.test.yml
DASHBOARD=$ROOT/deploy/grafana/keyward.json
TRAFFIC_SECONDS=${TRAFFIC_SECONDS:-10}

# Debian's `prometheus` package has both the server and promtool
# (scripts/setup.sh installs it for promtool already).
need=()
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== promtool check rules"
promtool check rules "$RULES"
echo "== promtool test rules"
promtool test rules "$RULE_TESTS"
echo "== every alert has a case that fires and one that stays quiet"
python3 - "$RULES" "$RULE_TESTS" <<'PY'
import re, sys
rules, tests = (open(f).read() for f in sys.argv[1:])
alerts = re.findall(r"^\s*- alert:\s*(\S+)", rules, re.M)
# each alert_rule_test case: "alertname: X" then "exp_alerts: []" (quiet)
# or "exp_alerts:" followed by a list (firing)
cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", tests)
missing = []
for a in alerts:
    kinds = {"quiet" if empty else "firing" for name, empty in cases if name == a}
    for k in ("firing", "quiet"):
        if k not in kinds:
            missing.append(f"{a}: no {k} case")
unknown = sorted({n for n, _ in cases} - set(alerts))
if missing or unknown:
    sys.exit("rule tests incomplete:\n  " + "\n  ".join(missing + [f"{u}: tested but not in the rules" for u in unknown]))
print(f"{len(alerts)} alerts, each with a firing and a quiet case")
PY

if [ -z "${KEYWARD_BIN:-}" ]; then
  echo "== cargo build --bin keyward"
  cargo build --bin keyward   # the same build as the test suite (default features)
  KEYWARD_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/keyward
fi
[ -x "$KEYWARD_BIN" ] || { echo "no keyward binary at $KEYWARD_BIN" >&2; exit 1; }
KEYWARD_BIN=$(realpath "$KEYWARD_BIN")   # the script cds into its temp dir
START=$(date +%s)

T=$(mktemp -d "${TMPDIR:-/tmp}/keyward-deploy-check.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.2
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    for f in keyward.log prometheus.log upstream.log; do
      [ -s "$T/$f" ] && { echo "---- $f (tail)" >&2; tail -n 20 "$T/$f" >&2; }
    done
  fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------- python helper
cat >"$T/helper.py" <<'PY'
import json, re, socket, sys, time, urllib.parse, urllib.request, http.client

def ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks: s.close()

def wait_http(url, timeout, expect=200):
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == int(expect): return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {url}")

def traffic(port, seconds, good, unknown):
    # one round: forwarded (429 once the plan's 60/window is spent),
    # no credential (401), unknown key (401, then 429 from the per-IP
    # auth-failure throttle), another workspace (403)
    ws1 = "/api/v1/workspaces/ws_1/connections"
    round_ = [(ws1, good), (ws1, None), (ws1, unknown), ("/api/v1/workspaces/ws_2/connections", good)]
    counts = {}
    end = time.time() + float(seconds)
    while time.time() < end:
        for path, key in round_:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
            h = {"Authorization": f"Bearer {key}"} if key else {}
            try:
                c.request("GET", path, headers=h)
                st = c.getresponse().status
            except Exception as e:
                st = type(e).__name__
            finally:
                c.close()
            counts[st] = counts.get(st, 0) + 1
        time.sleep(0.05)
    print("traffic statuses:", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str)))
    if not any(k == 404 or k == 200 for k in counts):
        sys.exit("no request was forwarded to the upstream")

def api(prom, path, **params):
    url = f"http://{prom}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)

def subst(expr):
    for var in ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}", "$__range", "${__range}"):
        expr = expr.replace(var, "1m")
    return re.sub(r"\$\{?(job|instance)\}?", ".*", expr)

def panel_queries(dashboard):
    d = json.load(open(dashboard))
    out = []
    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p["title"], t.get("refId", "?"), t["expr"]))
    walk(d.get("panels", []))
    return out

def evaluate(prom, dashboard, rules_file):
    rows, failures = [], []
    def query(kind, name, expr, need_series):
        r = api(prom, "/api/v1/query", query=expr)
        if r.get("status") != "success":
            n = "ERR"
            failures.append(f"{kind} {name}: {r.get('errorType')}: {r.get('error')}")
        else:
            n = len(r["data"]["result"])
            if need_series and n == 0:
                failures.append(f"{kind} {name}: no series")
        rows.append((kind, name, n))
    for title, ref, expr in panel_queries(dashboard):
        query("panel", f"{title} [{ref}]", subst(expr), True)
    # the rules as Prometheus loaded them: all of them, healthy, evaluated
    expected = len(re.findall(r"^\s*- (?:record|alert):", open(rules_file).read(), re.M))
    groups = api(prom, "/api/v1/rules")["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    if len(loaded) != expected:
        failures.append(f"Prometheus loaded {len(loaded)} rules, the file has {expected}")
    for r in loaded:
        if r.get("health") != "ok":
            failures.append(f"rule {r['name']}: health {r.get('health')} {r.get('lastError', '')}")
        if r["type"] == "recording":
            query("record", r["name"], r["query"], True)
            query("record", r["name"] + " (stored)", r["name"], True)
        else:
            query(f"alert:{r.get('state', '?')}", r["name"], r["query"], False)
    w = max(len(n) for _, n, _ in rows)
    print(f"{'kind':<15} {'query':<{w}} series")
    for kind, name, n in rows:
        print(f"{kind:<15} {name:<{w}} {n}")
    print(f"{len(rows)} queries, {len(failures)} failures")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)

def wait_rules(prom, timeout):
    # every rule evaluated at least once with data in the TSDB
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        try:
            groups = api(prom, "/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("health") == "ok" for r in rules):
                return
        except Exception:
            pass
        time.sleep(0.5)
    sys.exit("rules not all evaluated healthy in time")

def wait_up(prom, timeout):
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        try:
            r = api(prom, "/api/v1/query", query='up{job="keyward"} == 1')
            if r["data"]["result"]: return
        except Exception:
            pass
        time.sleep(0.5)
    sys.exit("Prometheus never scraped keyward successfully")

cmd, *args = sys.argv[1:]
{"ports": ports, "wait_http": wait_http, "traffic": traffic, "evaluate": evaluate,
 "wait_rules": wait_rules, "wait_up": wait_up}[cmd](*args)
PY
py() { python3 "$T/helper.py" "$@"; }

# ------------------------------------------------------------- keyward
read -r PROXY ADMIN UPSTREAM PROM < <(py ports 4)
cd "$T"
"$KEYWARD_BIN" snapshot init snapshot.db >/dev/null
KEY=$("$KEYWARD_BIN" keys create --snapshot snapshot.db --org org_1 --workspace ws_1)
"$KEYWARD_BIN" keys create --snapshot snapshot.db --org org_2 --workspace ws_2 >/dev/null
# a well-formed key the snapshot does not hold
UNKNOWN="wvz_$(python3 -c 'import secrets,string; print("".join(secrets.choice(string.ascii_letters+string.digits) for _ in range(40)))')"
sed -e "s|^listen = .*|listen = \"127.0.0.1:$PROXY\"|" \
    -e "s|^admin_listen = .*|admin_listen = \"127.0.0.1:$ADMIN\"|" \
    -e "s|^shutdown_grace_s = .*|shutdown_grace_s = 1|" \
    -e "s|^address = .*|address = \"127.0.0.1:$UPSTREAM\"|" \
    "$ROOT/config/keyward.toml" >keyward.toml
for want in "listen = \"127.0.0.1:$PROXY\"" "admin_listen = \"127.0.0.1:$ADMIN\"" "address = \"127.0.0.1:$UPSTREAM\""; do
  grep -qxF "$want" keyward.toml || { echo "config/keyward.toml changed shape: could not set $want" >&2; exit 1; }
done
"$KEYWARD_BIN" check --config keyward.toml >/dev/null

mkdir www
python3 -m http.server "$UPSTREAM" --bind 127.0.0.1 --directory www >upstream.log 2>&1 &
PIDS+=($!)
"$KEYWARD_BIN" run --config keyward.toml >keyward.log 2>&1 &
PIDS+=($!)

# ------------------------------------------------------------- prometheus
cat >prometheus.yml <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $RULES
scrape_configs:
  - job_name: keyward
    static_configs:
      - targets: ["127.0.0.1:$ADMIN"]
EOF
prometheus --config.file=prometheus.yml --storage.tsdb.path="$T/tsdb" \
  --web.listen-address="127.0.0.1:$PROM" --log.level=warn >prometheus.log 2>&1 &
PIDS+=($!)

py wait_http "http://127.0.0.1:$ADMIN/readyz" 20
py wait_http "http://127.0.0.1:$UPSTREAM/" 10
py wait_http "http://127.0.0.1:$PROM/-/ready" 20
py wait_up "127.0.0.1:$PROM" 10
echo "== keyward :$PROXY (admin :$ADMIN), upstream :$UPSTREAM, prometheus :$PROM; ${TRAFFIC_SECONDS}s of traffic"
py traffic "$PROXY" "$TRAFFIC_SECONDS" "$KEY" "$UNKNOWN"
sleep 2 # two more scrapes and rule evaluations
py wait_rules "127.0.0.1:$PROM" 10
echo "== evaluating dashboard panels and rules through Prometheus"
py evaluate "127.0.0.1:$PROM" "$DASHBOARD" "$RULES"
echo "== deploy/check.sh OK in $(( $(date +%s) - START ))s after the build"
