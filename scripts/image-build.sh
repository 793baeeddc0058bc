#!/usr/bin/env bash
# The image's build steps, one source for the Dockerfile and for CI
# (scripts/image-check.sh runs them without Docker, so a Cargo.toml change
# that would break `docker build .` breaks CI too).
#
#   image-build.sh chef              install cargo-chef (pinned; once)
#   image-build.sh prepare           recipe.json from the manifests (cargo-chef)
#   image-build.sh deps  [--check]   the dependency layer: build what recipe.json names
#   image-build.sh build [--check]   keyward itself, on top of that layer
#
# --check runs `cargo check` instead of `cargo build` (CI: the same steps,
# minutes instead of a full release build).
set -euo pipefail
CHEF_VERSION=0.1.78
step=${1:?usage: image-build.sh chef|prepare|deps|build [--check]}
mode=${2:-}
case "$step" in
  chef)
    if ! cargo chef --version 2>/dev/null | grep -qF "$CHEF_VERSION"; then
      cargo install --locked cargo-chef --version "$CHEF_VERSION"
    fi
    ;;
  prepare)
    cargo chef prepare --recipe-path recipe.json
    ;;
  deps)
    # the default features (tracing included), the binary only: a bench,
    # example or test target declared in Cargo.toml is stubbed by cargo-chef
    # from the recipe, never hand-listed here
    cargo chef cook --release --locked --recipe-path recipe.json --bin keyward ${mode:+"$mode"}
    ;;
  build)
    if [ "$mode" = "--check" ]; then
      cargo check --release --locked --bin keyward
    else
      cargo build --release --locked --bin keyward
    fi
    ;;
  *)
    echo "image-build.sh: unknown step $step" >&2
    exit 2
    ;;
esac
