#!/usr/bin/env python3
"""Change-to-enforcement driver for benches/changes/run.sh (issue 17).

  probe.py inplace  SNAP PORT TRIALS FIRST_KEY   -> one latency (ms) per line
  probe.py rename   SNAP PORT TRIALS FIRST_KEY   -> one latency (ms) per line
  probe.py writer   SNAP SECONDS RATE FIRST_KEY  -> in-place logged revocations at RATE/s

Keys are "bench-i" tokens as benches/load/snapshot_scale.sh makes them; the
ones used here (from FIRST_KEY on) are outside the set wrk cycles through,
so the load stays all-200. Each trial: the key is made warm (two 200s, the
second a cache hit), then revoked — in place, in one transaction with its
`changes` row (SPEC §2.1), or in a prepared copy renamed over the snapshot —
and the clock runs from the commit (or rename) until the key answers 401,
probed over one keep-alive connection as fast as it answers.
"""
import hashlib, http.client, os, shutil, sqlite3, sys, time

ORGS = int(os.environ.get("ORGS", "10000"))

def token(i):
    return "wvz_" + hashlib.sha256(f"bench-{i}".encode()).hexdigest()[:40]

def thash(tok):
    return hashlib.sha256(tok.encode()).hexdigest()

class Client:
    def __init__(self, port):
        self.port = port
        self.c = None
    def status(self, tok, i):
        for _ in range(3):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                self.c.request("GET", f"/api/v1/workspaces/ws_{i % ORGS}/connections", headers={"Authorization": f"Bearer {tok}"})
                r = self.c.getresponse()
                r.read()
                return r.status
            except (OSError, http.client.HTTPException):
                self.c = None
        raise SystemExit("probe: keyward does not answer")

def writer_conn(snap):
    db = sqlite3.connect(snap, isolation_level=None, timeout=5)
    db.execute("PRAGMA busy_timeout=5000")
    return db

def revoke_logged(db, tok):
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE api_keys SET revoked_at = 1 WHERE key_hash = ?", (thash(tok),))
    db.execute("INSERT INTO changes (seq, kind, key) SELECT COALESCE(MAX(seq), 0) + 1, 'api_key', ? FROM changes", (thash(tok),))
    db.execute("COMMIT")

def wait_401(cl, i, t0, limit=10.0):
    tok = token(i)
    while True:
        s = cl.status(tok, i)
        now = time.monotonic()
        if s == 401:
            return (now - t0) * 1000
        if now - t0 > limit:
            raise SystemExit(f"probe: {tok[:8]} still {s} after {limit} s")

def warm(cl, i):
    tok = token(i)
    for _ in range(2):
        s = cl.status(tok, i)
        if s != 200:
            raise SystemExit(f"probe: warm-up of {tok[:8]} answered {s}")

def inplace(snap, port, trials, first):
    cl, db = Client(port), writer_conn(snap)
    for n in range(trials):
        i = first + n
        warm(cl, i)
        time.sleep(0.05 + (n % 10) * 0.017)  # spread over the watcher's cycle
        revoke_logged(db, token(i))
        t0 = time.monotonic()
        print(f"{wait_401(cl, i, t0):.1f}", flush=True)
        time.sleep(0.2)

def rename(snap, port, trials, first):
    cl = Client(port)
    d = os.path.dirname(snap)
    for n in range(trials):
        i = first + n
        tok = token(i)
        nxt = os.path.join(d, "next.db")
        shutil.copyfile(snap, nxt)  # before the clock: a control plane prepares it too
        db = writer_conn(nxt)
        db.execute("UPDATE api_keys SET revoked_at = 1 WHERE key_hash = ?", (thash(tok),))
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generated_at', ?)", (str(int(time.time())),))
        db.close()
        warm(cl, i)
        os.sync()
        time.sleep(0.3)
        os.rename(nxt, snap)
        t0 = time.monotonic()
        print(f"{wait_401(cl, i, t0):.1f}", flush=True)
        time.sleep(1.0)

def writer(snap, seconds, rate, first):
    db = writer_conn(snap)
    end = time.monotonic() + seconds
    n, nxt = 0, time.monotonic()
    while time.monotonic() < end:
        revoke_logged(db, token(first + n))
        n += 1
        nxt += 1.0 / rate
        time.sleep(max(0.0, nxt - time.monotonic()))
    print(n)

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "inplace":
        inplace(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "rename":
        rename(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "writer":
        writer(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(__doc__)
