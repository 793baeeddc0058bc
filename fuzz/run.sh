#!/usr/bin/env bash
# Fuzz every parser that sees client bytes or operator input (cargo-fuzz,
# libFuzzer + AddressSanitizer). Stable Rust: RUSTC_BOOTSTRAP=1 unlocks the
# nightly flags cargo-fuzz needs.
#
#   fuzz/run.sh            # build, then each target for FUZZ_SECONDS (10)
#   FUZZ_SECONDS=600 fuzz/run.sh route_match cookie
#
# Crashes land in fuzz/artifacts/TARGET/; the corpus grows in fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
seconds="${FUZZ_SECONDS:-10}"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets < <(cargo fuzz list)
cargo fuzz build
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  cargo fuzz run "$t" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|panicked|ERROR|SUMMARY" || true
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz $t: crash found (fuzz/artifacts/$t)" >&2
    exit 1
  fi
done
