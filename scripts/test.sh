#!/usr/bin/env bash
# The test command: installs build needs, then runs the whole suite, with
# the optional OpenTelemetry tracing (feature `otel`) built in so its tests run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --features otel --no-fail-fast
  cargo test --doc --features otel
else
  cargo test --all-targets --features otel
fi
