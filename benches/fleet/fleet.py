#!/usr/bin/env python3
"""Fleet simulation (issue 18): N keyward replicas on loopback sharing one
snapshot origin (nginx, ETags) and one Redis topology, each under its own
load. Run through benches/fleet/run.sh, which builds keyward and installs
what is missing. Not part of `cargo test`.

Reports, for each topology (single, cluster of 3 masters, sentinel with a
forced failover mid-window) and each N in NS:
  (a) propagation: time from publishing a new signed snapshot at the origin
      (atomic rename into nginx's root) to the last replica serving it;
  (b) admitted requests of one organization in one window against its limit
      and the stated bound (limit + N x batch - 1);
  (c) 5xx and socket errors during the window (sentinel: through a failover).
A last row per N takes Redis away mid-window (outage) and checks the
fallback bound: each replica at most limit / N while Redis is down.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import snapshot  # noqa: E402  benches/lib/snapshot.py
import threading
import time
import hashlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KEYWARD = os.environ.get("KEYWARD", os.path.join(ROOT, "target/release/keyward"))
NS = [int(n) for n in os.environ.get("NS", "2 4 8").split()]
TOPOLOGIES = os.environ.get("TOPOLOGIES", "single cluster sentinel outage").split()
WINDOW_S = int(os.environ.get("WINDOW_S", "10"))
LIMIT = int(os.environ.get("LIMIT", "2000"))
BATCH = int(os.environ.get("BATCH", "16"))
THREADS_PER_REPLICA = int(os.environ.get("THREADS_PER_REPLICA", "3"))
POLL_MS = int(os.environ.get("POLL_MS", "500"))

PROCS = []


def log(*a):
    print("[fleet]", *a, file=sys.stderr, flush=True)


USED_PORTS = set()


def free_port(below=None):
    """A free loopback port not handed out before in this run."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if (below is None or p < below) and p not in USED_PORTS and p + 10000 not in USED_PORTS:
            USED_PORTS.add(p)
            return p


def start(args, log_path, env=None):
    f = open(log_path, "ab")
    p = subprocess.Popen(args, stdout=f, stderr=f, stdin=subprocess.DEVNULL, env=env)
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGINT):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_port(port, timeout=20):
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def redis_cli(port, *args, timeout=10):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=timeout).stdout.strip()


# ------------------------------------------------------------- snapshot
def make_snapshot(path, orgs, tag):
    """A snapshot with one API key per org; returns {org: token}."""
    if os.path.exists(path):
        os.remove(path)
    subprocess.run([KEYWARD, "snapshot", "init", path], check=True, capture_output=True)
    token = snapshot.build(path, keys=len(orgs), org_names=orgs, plan="fleet",
                           token=f"wvz_fleet{tag}{{i}}" + "x" * 30, key_id=f"key_{tag}_{{i}}",
                           workspaces=False)
    return {org: token(i) for i, org in enumerate(orgs)}


def publish(tmp, origin_root, orgs, tag, private_key):
    """Write a signed version into the origin's root by rename (signature first)."""
    staged = os.path.join(tmp, f"stage-{tag}.db")
    keys = make_snapshot(staged, orgs, tag)
    subprocess.run([KEYWARD, "snapshot", "sign", "--key", private_key, staged],
                   check=True, capture_output=True)
    os.replace(staged + ".sig", os.path.join(origin_root, "snapshot.db.sig"))
    os.replace(staged, os.path.join(origin_root, "snapshot.db"))
    return keys


# ------------------------------------------------------------- redis
class Redis:
    def __init__(self, tmp, kind):
        self.kind, self.tmp, self.procs = kind, tmp, []
        d = os.path.join(tmp, f"redis-{kind}")
        os.makedirs(d, exist_ok=True)
        common = ["--save", "", "--appendonly", "no", "--dir", d]
        if kind in ("single", "outage"):
            self.port = free_port()
            self.procs.append(start(["redis-server", "--port", str(self.port), *common],
                                    os.path.join(d, "redis.log")))
            wait_port(self.port)
            self.config = {"redis_url": f"redis://127.0.0.1:{self.port}/0"}
        elif kind == "cluster":
            self.ports = [free_port(below=55000) for _ in range(3)]
            for p in self.ports:
                self.procs.append(start(
                    ["redis-server", "--port", str(p), "--cluster-enabled", "yes",
                     "--cluster-config-file", os.path.join(d, f"nodes-{p}.conf"), *common],
                    os.path.join(d, f"redis-{p}.log")))
                wait_port(p)
            subprocess.run(["redis-cli", "--cluster", "create",
                            *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            t = time.time()
            while "cluster_state:ok" not in redis_cli(self.ports[0], "cluster", "info"):
                if time.time() - t > 30:
                    raise SystemExit("cluster never became ok")
                time.sleep(0.2)
            self.config = {"redis_mode": "cluster",
                           "redis_nodes": [f"redis://127.0.0.1:{p}" for p in self.ports]}
        elif kind == "sentinel":
            self.master, self.replica, self.sentinel = free_port(), free_port(), free_port()
            self.procs.append(start(["redis-server", "--port", str(self.master), *common],
                                    os.path.join(d, "master.log")))
            wait_port(self.master)
            self.procs.append(start(["redis-server", "--port", str(self.replica), *common,
                                     "--replicaof", "127.0.0.1", str(self.master)],
                                    os.path.join(d, "replica.log")))
            wait_port(self.replica)
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(f"port {self.sentinel}\nbind 127.0.0.1\ndir {d}\n"
                        f"sentinel monitor fleet 127.0.0.1 {self.master} 1\n"
                        "sentinel down-after-milliseconds fleet 1000\n"
                        "sentinel failover-timeout fleet 3000\n")
            self.procs.append(start(["redis-server", conf, "--sentinel"],
                                    os.path.join(d, "sentinel.log")))
            wait_port(self.sentinel)
            t = time.time()
            while "slave0" not in redis_cli(self.master, "info", "replication"):
                if time.time() - t > 30:
                    raise SystemExit("replica never attached")
                time.sleep(0.2)
            self.config = {"redis_mode": "sentinel", "redis_sentinel_master": "fleet",
                           "redis_nodes": [f"redis://127.0.0.1:{self.sentinel}"]}

    def disturb(self):
        """Mid-window event: sentinel failover, or an outage of the single Redis."""
        if self.kind == "sentinel":
            log("  forcing a sentinel failover")
            redis_cli(self.sentinel, "sentinel", "failover", "fleet")
        elif self.kind == "outage":
            log("  stopping Redis (outage)")
            stop(self.procs[0])

    def flush(self):
        if self.kind == "cluster":
            for p in self.ports:
                redis_cli(p, "flushall")
        elif self.kind == "sentinel":
            for p in (self.master, self.replica):
                redis_cli(p, "flushall")
        elif self.procs[0].poll() is None:
            redis_cli(self.port, "flushall")

    def close(self):
        for p in self.procs:
            stop(p, signal.SIGTERM)


# ------------------------------------------------------------- replicas
def toml_value(v):
    return json.dumps(v)


def start_replicas(tmp, n, origin_port, upstream_port, public_key, redis):
    reps = []
    base = open(os.path.join(ROOT, "config/keyward.toml")).read()
    for i in range(n):
        d = os.path.join(tmp, f"replica-{i}")
        os.makedirs(d, exist_ok=True)
        port, admin = free_port(), free_port()
        import re
        text = base
        for pat, rep in [
            (r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"'),
            (r'(?m)^admin_listen = .*$', f'admin_listen = "127.0.0.1:{admin}"'),
            (r'(?m)^threads = .*$', 'threads = 1'),
            (r'(?m)^address = .*$', f'address = "127.0.0.1:{upstream_port}"'),
            (r'(?m)^upgrade_sock = .*$', f'upgrade_sock = "{d}/upgrade.sock"'),
            (r'(?m)^path = "snapshot.db".*$', f'path = "{d}/snapshot.db"\n'
             f'source = "http://127.0.0.1:{origin_port}/snapshot.db"\n'
             f'verify_key = "{public_key}"'),
            (r'(?m)^poll_interval_ms = .*$', f'poll_interval_ms = {POLL_MS}'),
            (r'(?m)^backend = .*$', 'backend = "redis"'),
            (r'(?m)^window_s = .*$', f'window_s = {WINDOW_S}'),
            # the propagation probe sends a key before its version arrives:
            # those 401s must not throttle the loopback address
            (r'(?m)^auth_failures_per_ip = .*$', 'auth_failures_per_ip = 0'),
        ]:
            text, k = re.subn(pat, rep, text, count=1)
            assert k == 1, pat
        # the rate_limit table gets the topology; the fleet plan its limit
        extra = [f"expected_replicas = {n}", f"redis_batch = {BATCH}", "redis_timeout_ms = 50"]
        extra += [f"{k} = {toml_value(v)}" for k, v in redis.config.items()]
        text = text.replace("[rate_limit]\n", "[rate_limit]\n" + "\n".join(extra) + "\n", 1)
        text += f"\n[plans.fleet]\nrequests_per_window = {LIMIT}\n"
        conf = os.path.join(d, "keyward.toml")
        open(conf, "w").write(text)
        env = dict(os.environ, KEYWARD_LOG="warn")
        p = start([KEYWARD, "run", "--config", conf], os.path.join(d, "keyward.log"), env)
        reps.append({"proc": p, "port": port, "admin": admin, "dir": d})
    for r in reps:
        if not wait_port(r["admin"]) or not wait_port(r["port"]):
            raise SystemExit(f"replica did not start: see {r['dir']}/keyward.log")
    return reps


def get(port, token, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/api/v1/flows", headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    r.read()
    return r.status, c


def propagation(reps, tmp, origin_root, orgs, private_key):
    """Publish a new version; seconds until the last replica serves it."""
    keys = publish(tmp, origin_root, orgs, f"p{time.time_ns()}", private_key)
    token = keys[orgs[0]]
    t0 = time.time()
    pending = {i for i in range(len(reps))}
    seen = {}
    while pending and time.time() - t0 < 30:
        for i in list(pending):
            try:
                status, c = get(reps[i]["port"], token)
                c.close()
            except OSError:
                continue
            if status == 200:
                seen[i] = time.time() - t0
                pending.discard(i)
        time.sleep(0.005)
    if pending:
        return None, keys
    return max(seen.values()), keys


def one_window(reps, token, redis):
    """Load every replica for one whole window; statuses per replica."""
    now = time.time()
    start_at = (int(now) // WINDOW_S + 1) * WINDOW_S + 0.05
    end_at = start_at + WINDOW_S - 0.2
    counts = [dict() for _ in reps]
    lock = threading.Lock()

    def worker(i):
        time.sleep(max(0, start_at - time.time()))
        conn = None
        while time.time() < end_at:
            try:
                status, conn = get(reps[i]["port"], token, conn)
                key = str(status)
            except (OSError, http.client.HTTPException):
                conn = None
                key = "error"
            with lock:
                counts[i][key] = counts[i].get(key, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reps))
               for _ in range(THREADS_PER_REPLICA)]
    for t in threads:
        t.start()
    if redis.kind in ("sentinel", "outage"):
        time.sleep(max(0, start_at - time.time()) + WINDOW_S * 0.3)
        redis.disturb()
    for t in threads:
        t.join()
    return counts


def main():
    tmp = tempfile.mkdtemp(prefix="keyward-fleet.")
    os.chmod(tmp, 0o755)  # nginx workers (nobody) read the origin
    results = []
    try:
        origin_root = os.path.join(tmp, "origin")
        os.makedirs(origin_root)
        private_key = os.path.join(tmp, "signing.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", private_key],
                       check=True, capture_output=True)
        public_key = subprocess.run([KEYWARD, "snapshot", "sign", "--key", private_key, private_key],
                                    check=True, capture_output=True, text=True).stdout.strip()
        os.remove(private_key + ".sig")
        orgs = ["org_fleet"]
        publish(tmp, origin_root, orgs, "v0", private_key)
        origin_port, upstream_port = free_port(), free_port()
        nconf = os.path.join(tmp, "nginx.conf")
        open(nconf, "w").write(
            f"daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err warn;\n"
            "events { worker_connections 1024; }\n"
            f"http {{ access_log off; client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p;\n"
            f" fastcgi_temp_path {tmp}/f; uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;\n"
            f" server {{ listen 127.0.0.1:{origin_port}; root {origin_root}; etag on; }}\n"
            f" server {{ listen 127.0.0.1:{upstream_port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n")
        start([shutil.which("nginx") or "/usr/sbin/nginx", "-p", tmp, "-c", nconf],
              os.path.join(tmp, "nginx.log"))
        wait_port(origin_port)
        for kind in TOPOLOGIES:
            for n in NS:
                redis = Redis(tmp, kind)
                reps = start_replicas(tmp, n, origin_port, upstream_port, public_key, redis)
                try:
                    time.sleep(1)
                    prop, keys = propagation(reps, tmp, origin_root, orgs, private_key)
                    token = keys[orgs[0]]
                    redis.flush()
                    counts = one_window(reps, token, redis)
                    admitted = sum(c.get("200", 0) for c in counts)
                    limited = sum(c.get("429", 0) for c in counts)
                    fivexx = sum(v for c in counts for k, v in c.items() if k.startswith("5"))
                    errors = sum(c.get("error", 0) for c in counts)
                    if kind == "outage":
                        bound = LIMIT + n * BATCH - 1 + n * max(1, LIMIT // n)
                    else:
                        bound = LIMIT + n * BATCH - 1
                    row = {"topology": kind, "replicas": n, "propagation_s": prop,
                           "admitted": admitted, "limit": LIMIT, "bound": bound,
                           "limited": limited, "5xx": fivexx, "errors": errors,
                           "per_replica": [c.get("200", 0) for c in counts]}
                    results.append(row)
                    log(json.dumps(row))
                finally:
                    for r in reps:
                        stop(r["proc"])
                    redis.close()
    finally:
        for p in PROCS:
            stop(p, signal.SIGTERM)
        if os.environ.get("KEEP_TMP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log("kept", tmp)
    print("| topology | replicas | propagation (last replica) | admitted / limit | bound | within | 429 | 5xx | socket errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for r in results:
        within = r["admitted"] <= r["bound"]
        ok &= within and r["5xx"] == 0
        prop = f"{r['propagation_s']:.2f} s" if r["propagation_s"] is not None else "never"
        print(f"| {r['topology']} | {r['replicas']} | {prop} | {r['admitted']} / {r['limit']} | "
              f"{r['bound']} | {'yes' if within else '**no**'} | {r['limited']} | {r['5xx']} | {r['errors']} |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
