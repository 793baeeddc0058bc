#!/usr/bin/env bash
# keyward sync at scale (issue 27, SPEC §9), against a throwaway PostgreSQL
# cluster with BetterAuth's tables and a real keyward reading the snapshot:
#   (a) full build of KEYS api keys: wall time and sync's peak RSS
#   (b) revocation committed in Postgres -> 401 from keyward, over REVOKES
#       revocations (p50, p99, max), outbox mode
#   (c) the cost of one change at SMALL keys vs KEYS keys (p50 of (b) at each)
#
#   benches/sync/run.sh                      KEYS=1000000 SMALL=10000 REVOKES=1000
#   KEYS=100000 REVOKES=200 benches/sync/run.sh   # a quicker run
# Needs postgresql (scripts/setup.sh), curl, python3. Not part of the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEYS="${KEYS:-1000000}"; SMALL="${SMALL:-10000}"; REVOKES="${REVOKES:-1000}"
cd "$ROOT"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin keyward -q
KW=$ROOT/target/release/keyward
PGBIN=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")
TMP=$(mktemp -d); chmod 755 "$TMP"
AS=(); [ "$(id -u)" -eq 0 ] && AS=(runuser -u postgres --)
cleanup() { kill $(jobs -p) 2>/dev/null || true; "${AS[@]}" "$PGBIN/pg_ctl" -D "$TMP/pg" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PGPORT=$(port)
mkdir -p "$TMP/pg"; [ "$(id -u)" -eq 0 ] && chown postgres "$TMP/pg"
"${AS[@]}" "$PGBIN/initdb" -D "$TMP/pg" --auth=trust -U postgres --no-sync >/dev/null
"${AS[@]}" "$PGBIN/postgres" -D "$TMP/pg" -p "$PGPORT" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$TMP/pg" -c fsync=off -c synchronous_commit=off >"$TMP/pg.log" 2>&1 &
PSQL=("$PGBIN/psql" -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
for _ in $(seq 100); do "${PSQL[@]}" -c 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
export KW_BENCH_DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable"

schema() { # the BetterAuth tables (tests/sync.rs has the same)
"${PSQL[@]}" <<'SQL'
DROP TABLE IF EXISTS apikey, member, session, organization, "user", keyward_outbox CASCADE;
CREATE TABLE "user" ("id" text PRIMARY KEY, "name" text NOT NULL, "email" text NOT NULL UNIQUE, "emailVerified" boolean NOT NULL, "image" text, "createdAt" timestamptz DEFAULT now() NOT NULL, "updatedAt" timestamptz DEFAULT now() NOT NULL);
CREATE TABLE "session" ("id" text PRIMARY KEY, "expiresAt" timestamptz NOT NULL, "token" text NOT NULL UNIQUE, "createdAt" timestamptz DEFAULT now() NOT NULL, "updatedAt" timestamptz NOT NULL, "ipAddress" text, "userAgent" text, "userId" text NOT NULL REFERENCES "user"("id") ON DELETE CASCADE, "activeOrganizationId" text);
CREATE TABLE "organization" ("id" text PRIMARY KEY, "name" text NOT NULL, "slug" text NOT NULL UNIQUE, "logo" text, "createdAt" timestamptz NOT NULL, "metadata" text);
CREATE TABLE "member" ("id" text PRIMARY KEY, "organizationId" text NOT NULL REFERENCES "organization"("id") ON DELETE CASCADE, "userId" text NOT NULL REFERENCES "user"("id") ON DELETE CASCADE, "role" text NOT NULL, "createdAt" timestamptz NOT NULL);
CREATE INDEX member_userId_idx ON member ("userId");
CREATE TABLE "apikey" ("id" text PRIMARY KEY, "name" text, "start" text, "prefix" text, "key" text NOT NULL, "userId" text NOT NULL REFERENCES "user"("id") ON DELETE CASCADE, "refillInterval" integer, "refillAmount" integer, "lastRefillAt" timestamptz, "enabled" boolean, "rateLimitEnabled" boolean, "rateLimitTimeWindow" integer, "rateLimitMax" integer, "requestCount" integer, "remaining" integer, "lastRequest" timestamptz, "expiresAt" timestamptz, "createdAt" timestamptz NOT NULL, "updatedAt" timestamptz NOT NULL, "permissions" text, "metadata" text);
SQL
}

seed() { # N keys over N/100 users, one organization each
  local n=$1 users=$(( $1 / 100 > 0 ? $1 / 100 : 1 ))
  "${PSQL[@]}" <<SQL
INSERT INTO "user" SELECT 'u_'||i, 'u', 'u'||i||'@x', true, NULL, now(), now() FROM generate_series(1, $users) i;
INSERT INTO organization SELECT 'org_'||i, 'o', 'o'||i, NULL, now(), NULL FROM generate_series(1, $users) i;
INSERT INTO member SELECT 'm_'||i, 'org_'||i, 'u_'||i, 'owner', now() FROM generate_series(1, $users) i;
INSERT INTO apikey (id, start, prefix, key, "userId", enabled, "createdAt", "updatedAt", metadata)
  SELECT 'k_'||i, 'wvz_be', 'wvz_',
         rtrim(translate(encode(sha256(convert_to('wvz_bench'||i||'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', 'UTF8')), 'base64'), '+/', '-_'), '='),
         'u_'||(1 + i % $users), true, now(), now(), '{"organizationId":"org_'||(1 + i % $users)||'"}'
  FROM generate_series(1, $n) i;
ANALYZE;
SQL
}

SNAP=$TMP/snapshot.db
"$KW" snapshot init "$SNAP" >/dev/null
SYNC_ADMIN=$(port)
cat > "$TMP/sync.toml" <<EOT
[source]
url_env = "KW_BENCH_DATABASE_URL"
preset = "betterauth"
[output]
path = "$SNAP"
[follow]
mode = "outbox"
interval_ms = 1000
[sync]
admin_listen = "127.0.0.1:$SYNC_ADMIN"
EOT

measure() { # N: seed N keys, full build, follow, revoke REVOKES keys
  local n=$1
  schema >/dev/null 2>&1; seed "$n"
  rm -f "$SNAP" "$SNAP.position"; "$KW" snapshot init "$SNAP" >/dev/null
  local t0 t1
  t0=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$TMP/rss" "$KW" sync --once --config "$TMP/sync.toml" >"$TMP/once.log" 2>&1
  t1=$(date +%s%N)
  echo "keys=$n full_build_ms=$(( (t1 - t0) / 1000000 )) sync_peak_rss_mib=$(( $(cat "$TMP/rss") / 1024 )) snapshot_mib=$(du -m "$SNAP" | cut -f1)"
  "$KW" sync install --config "$TMP/sync.toml" 2>/dev/null
  "$KW" sync --config "$TMP/sync.toml" >"$TMP/sync-$n.log" 2>&1 &
  local SYNC=$!
  local P A; P=$(port); A=$(port)
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nthreads = 2\n[upstream]\naddress = "127.0.0.1:%s"\n[snapshot]\npath = "%s"\n[plans.default]\nrequests_per_window = 1000000000\n[rate_limit]\nauth_failures_per_ip = 0\n' "$P" "$A" "$(port)" "$SNAP" > "$TMP/kw.toml"
  "$KW" run --config "$TMP/kw.toml" >"$TMP/kw-$n.log" 2>&1 &
  local KWP=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$A/readyz" >/dev/null && curl -sf "http://127.0.0.1:$SYNC_ADMIN/readyz" >/dev/null && break; sleep 0.1; done
  python3 - "$P" "$REVOKES" "$n" "${PSQL[@]}" <<'PY'
import http.client, subprocess, sys, time
port, revokes, n, psql = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def status(i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/api/v1/x", headers={"Authorization": f"Bearer wvz_bench{i}" + "x" * 30})
    s = c.getresponse().status; c.close(); return s
step = max(1, n // revokes)
lat = []
for j in range(revokes):
    i = 1 + j * step
    if status(i) not in (502, 200):  # forwarded (no upstream behind: 502) = accepted
        sys.exit(f"key {i} not accepted before its revocation: {status(i)}")
    subprocess.run(psql + ["-c", f"UPDATE apikey SET enabled = false, \"updatedAt\" = now() WHERE id = 'k_{i}'"], check=True)
    t = time.monotonic()
    while status(i) != 401:
        if time.monotonic() - t > 10: sys.exit(f"key {i} still accepted 10 s after its revocation")
        time.sleep(0.002)
    lat.append((time.monotonic() - t) * 1000)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"keys={n} revocations={len(lat)} commit_to_401_ms p50={q(0.5):.1f} p99={q(0.99):.1f} max={lat[-1]:.1f}")
PY
  kill $SYNC $KWP 2>/dev/null; wait $SYNC $KWP 2>/dev/null || true
}

echo "## sync bench $(date -u +%FT%TZ) $(nproc) cores, KEYS=$KEYS SMALL=$SMALL REVOKES=$REVOKES"
measure "$SMALL"
measure "$KEYS"
