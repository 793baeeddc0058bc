#!/usr/bin/env bash
# The test command: installs build needs, then runs the whole suite (default
# features: the server and OpenTelemetry tracing).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast
  cargo test --doc
else
  cargo test --all-targets
fi
