#!/usr/bin/env bash
# CI's `docker build .` without a Docker engine: the Dockerfile's build
# stages, step by step, through the same scripts/image-build.sh, each in a
# directory holding only what that stage copies in:
#   planner: the build context (the committed tree, as .dockerignore leaves it)
#            -> recipe.json
#   build:   recipe.json alone -> the dependency layer (cargo chef cook)
#            then the whole context -> keyward (cargo check --release)
# and then the runtime stage's own inputs (config/docker.toml passes
# `keyward check`; the HEALTHCHECK command exists).
# Fails where the image would: a [[bench]] or [[example]] whose file is
# missing, a target the recipe cannot stub, a file the build needs that the
# context leaves out, a lockfile out of date (--locked).
# IMAGE_CHECK_TARGET: the target directory (default target/image-check).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${IMAGE_CHECK_TARGET:-$ROOT/target/image-check}
./scripts/image-build.sh chef
W=$(mktemp -d "${TMPDIR:-/tmp}/keyward-image-check.XXXXXX")
trap 'rm -rf "$W"' EXIT

# the build context: what git tracks (or would: untracked, not ignored),
# minus .dockerignore's entries (a path or glob, and everything under it)
mkdir -p "$W/context"
git ls-files -z --cached --others --exclude-standard | python3 -c '
import fnmatch, os, shutil, sys
dest = sys.argv[1]
pats = [l.strip().strip("/") for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
def ignored(p):
    parts = p.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(x, pat) or fnmatch.fnmatch(x, pat.replace("**/", "")) for x in prefixes for pat in pats)
for p in sys.stdin.read().split("\0"):
    if p and os.path.isfile(p) and not ignored(p):
        os.makedirs(os.path.join(dest, os.path.dirname(p)), exist_ok=True)
        shutil.copy2(p, os.path.join(dest, p))
' "$W/context"

echo "== planner: cargo chef prepare"
mkdir -p "$W/planner" && cp -a "$W/context/." "$W/planner/"
(cd "$W/planner" && "$ROOT/scripts/image-build.sh" prepare)

echo "== build: the dependency layer from recipe.json alone"
mkdir -p "$W/build/scripts"
cp "$W/planner/recipe.json" "$W/build/"
cp scripts/image-build.sh "$W/build/scripts/"
(cd "$W/build" && ./scripts/image-build.sh deps --check)

echo "== build: keyward from the whole context"
cp -a "$W/context/." "$W/build/"
(cd "$W/build" && ./scripts/image-build.sh build --check)

echo "== runtime: config/docker.toml, keyward healthcheck"
# with the main target directory (the debug build the tests use), the
# shipped docker.toml with its snapshot path pointed at a fresh snapshot
KW() { env -u CARGO_TARGET_DIR cargo run --quiet --locked --bin keyward -- "$@"; }
KW snapshot init "$W/snapshot.db" >/dev/null
sed "s|^path = \"/var/lib/keyward/snapshot.db\"|path = \"$W/snapshot.db\"|" \
  "$W/context/config/docker.toml" >"$W/docker.toml"
grep -qF "$W/snapshot.db" "$W/docker.toml" \
  || { echo "config/docker.toml changed shape: no snapshot.path to point at a test snapshot" >&2; exit 1; }
KW check --config "$W/docker.toml" >/dev/null \
  || { echo "config/docker.toml does not pass keyward check" >&2; exit 1; }
grep -q 'keyward", "healthcheck"' "$W/context/Dockerfile" && KW healthcheck --help >/dev/null
echo "== image recipe OK"
