#!/usr/bin/env python3
"""The one snapshot builder of the bench scripts (benches/*/): organizations,
their workspaces and API keys written into a file `keyward snapshot init`
made, in one transaction, with the schema's hash (sha256 hex of the token).

As a module:   build(path, keys=1000, orgs=100, ...) -> token(i) function
As a command:  snapshot.py PATH --keys N [--orgs M] [--token FMT]
                   [--scoped-every K] [--scoped-rem R] [--first F]
                   [--plan NAME] [--no-workspaces] [--changes]
                   [--tokens FILE --load-keys L [--path FMT]]

Key i belongs to organization `org_{i % orgs}` (or `org_{i}` without
--orgs) and is scoped to that organization's workspace `ws_{org}` when
`i % K == R`. FMT is a Python format string over `i` and `h40` (the first
40 hex digits of sha256("bench-{i}")); the default `wvz_{h40}` looks like a
real key. --tokens writes the first L tokens, each with its request path
(FMT over `i`, `org`), one per line, for wrk's Lua scripts.
"""
import argparse
import hashlib
import json
import sqlite3
import time


def bench_token(fmt):
    def token(i):
        h40 = hashlib.sha256(f"bench-{i}".encode()).hexdigest()[:40]
        return fmt.format(i=i, h40=h40)
    return token


def build(path, keys, orgs=None, token="wvz_{h40}", first=0, plan="free",
          scoped_every=0, scoped_rem=0, workspaces=True, changes=False,
          org_names=None, key_id="key_{i}"):
    """Fill PATH (made by `keyward snapshot init`); returns token(i)."""
    tok = bench_token(token)

    def org_of(i):
        if org_names is not None:
            return org_names[i % len(org_names)]
        return f"org_{i % orgs}" if orgs else f"org_{i}"

    indices = range(first, first + keys)
    org_ids = list(dict.fromkeys(org_of(i) for i in indices))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-524288")  # 512 MiB: index inserts stay in memory

    def rows():
        for i in indices:
            t = tok(i)
            org = org_of(i)
            perms = None
            if scoped_every and i % scoped_every == scoped_rem:
                perms = json.dumps({"scope": "workspace", "workspaceIds": [f"ws_{org[4:]}"]})
            yield (key_id.format(i=i), org, hashlib.sha256(t.encode()).hexdigest(), t[:8], perms)

    db.execute("BEGIN")
    db.executemany("INSERT OR IGNORE INTO organizations (id, plan) VALUES (?, ?)",
                   ((o, plan) for o in org_ids))
    if workspaces:
        db.executemany("INSERT OR IGNORE INTO workspaces (id, organization_id) VALUES (?, ?)",
                       ((f"ws_{o[4:]}", o) for o in org_ids))
    db.executemany("INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, permissions)"
                   " VALUES (?, ?, ?, ?, ?)", rows())
    if changes:
        db.execute("CREATE TABLE IF NOT EXISTS changes"
                   " (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL)")
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generated_at', ?)",
               (str(int(time.time())),))
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    return tok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path")
    p.add_argument("--keys", type=int, required=True)
    p.add_argument("--orgs", type=int)
    p.add_argument("--token", default="wvz_{h40}")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--plan", default="free")
    p.add_argument("--scoped-every", type=int, default=0)
    p.add_argument("--scoped-rem", type=int, default=0)
    p.add_argument("--no-workspaces", action="store_true")
    p.add_argument("--changes", action="store_true")
    p.add_argument("--tokens")
    p.add_argument("--load-keys", type=int, default=0)
    p.add_argument("--path", dest="req_path", default="/api/v1/workspaces/ws_{org}/connections")
    a = p.parse_args()
    tok = build(a.path, a.keys, a.orgs, a.token, a.first, a.plan, a.scoped_every,
                a.scoped_rem, not a.no_workspaces, a.changes)
    if a.tokens:
        with open(a.tokens, "w") as f:
            for i in range(a.first, a.first + a.load_keys):
                org = i % a.orgs if a.orgs else i
                f.write(f"{tok(i)} {a.req_path.format(i=i, org=org)}\n")


if __name__ == "__main__":
    main()
