#!/usr/bin/env bash
# Fleet simulation (issue 18): N keyward replicas sharing one signed snapshot
# origin (nginx) and one Redis (single, Cluster of 3 masters, Sentinel with a
# forced failover, and an outage), each under its own load. See fleet.py.
#
#   benches/fleet/run.sh                                   # NS="2 4 8", all topologies (~6 min)
#   NS=2 TOPOLOGIES=single benches/fleet/run.sh            # quick check
#
# Environment: NS, TOPOLOGIES, WINDOW_S=10, LIMIT=2000, BATCH=16,
# THREADS_PER_REPLICA=3, POLL_MS=500, SKIP_BUILD=0, KEEP_TMP=0.
# Not part of `cargo test`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then (cd "$ROOT" && cargo build --release --bin keyward); fi
export PATH=$PATH:/usr/sbin
exec python3 "$ROOT/benches/fleet/fleet.py"
