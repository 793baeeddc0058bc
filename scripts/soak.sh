#!/usr/bin/env bash
# Opt-in soak (issue 8): mixed traffic across every credential kind against
# a release build, with snapshot swaps every 4 s and SIGHUP reloads every 2 s,
# asserting zero 5xx and zero wrong admits (tests/soak.rs).
#   scripts/soak.sh            # 10 minutes
#   SOAK_SECS=60 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
SOAK_SECS="${SOAK_SECS:-600}" cargo test --release --test soak -- --nocapture
