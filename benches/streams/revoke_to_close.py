"""Revocation-to-close trials for benches/streams/run.sh.

argv: SNAPSHOT PROXY_PORT ADMIN_PORT TRIALS MODE(rename|inplace)
Each trial: a new key (written by rename, waited for on /readyz), an SSE
stream opened with it and its first event read, then the key revoked; the
time from the end of the write to EOF on the stream is one sample."""
import hashlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import sys
import time
import urllib.request

SNAP, PROXY, ADMIN, TRIALS, MODE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]


def generation():
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/readyz") as r:
        return json.load(r)["snapshot"]["generation"]


def rename_in(sql, args):
    tmp = SNAP + ".next"
    shutil.copyfile(SNAP, tmp)
    c = sqlite3.connect(tmp)
    c.execute(sql, args)
    c.commit()
    c.close()
    os.rename(tmp, SNAP)


def wait_generation_after(g):
    deadline = time.monotonic() + 10
    while generation() <= g:
        if time.monotonic() > deadline:
            sys.exit("keyward did not reload")
        time.sleep(0.01)


def open_stream(token):
    s = socket.create_connection(("127.0.0.1", PROXY))
    s.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
              "Accept: text/event-stream\r\n\r\n".encode())
    buf = b""
    s.settimeout(5)
    while b"data: tick" not in buf:
        b = s.recv(65536)
        if not b:
            sys.exit(f"stream ended before its first event: {buf!r}")
        buf += b
    if not buf.startswith(b"HTTP/1.1 200"):
        sys.exit(f"not 200: {buf[:200]!r}")
    return s, buf


samples = []
for i in range(TRIALS):
    token = "wvz_" + secrets.token_hex(20)
    h = hashlib.sha256(token.encode()).hexdigest()
    g = generation()
    rename_in("INSERT INTO api_keys (id, organization_id, key_hash, key_prefix) VALUES (?, 'org_bench', ?, ?)",
              (f"key_{i}_{secrets.token_hex(4)}", h, token[:8]))
    wait_generation_after(g)
    s, buf = open_stream(token)
    now = int(time.time())
    if MODE == "inplace":
        c = sqlite3.connect(SNAP)
        c.execute("UPDATE api_keys SET revoked_at = ? WHERE key_hash = ?", (now, h))
        c.commit()
        written = time.monotonic()
        c.close()
    else:
        rename_in("UPDATE api_keys SET revoked_at = ? WHERE key_hash = ?", (now, h))
        written = time.monotonic()
    s.settimeout(10)
    while True:
        try:
            b = s.recv(65536)
        except socket.timeout:
            sys.exit("stream still open 10 s after the revocation")
        if not b:
            break
        buf += b
    took = (time.monotonic() - written) * 1000
    s.close()
    if b"event: error" not in buf:
        sys.exit(f"no final event: error: {buf[-300:]!r}")
    samples.append(took)
    print(f"trial {i + 1:2d}: {took:7.1f} ms", flush=True)

samples.sort()


def pct(p):
    return samples[min(len(samples) - 1, int(round(p / 100 * (len(samples) - 1))))]


print(f"revocation to stream close (ms, n={len(samples)}): min {samples[0]:.1f}  p50 {pct(50):.1f}  "
      f"p90 {pct(90):.1f}  p99 {pct(99):.1f}  max {samples[-1]:.1f}")
