#!/usr/bin/env bash
# Installs what a fresh Debian machine with only the Rust toolchain lacks to
# build and test keyward: cmake (pingora's zlib-ng build), curl and promtool
# (tests), postgresql (tests/sync.rs), redis-server and redis-cli (tests/redis.rs: a plain server, one with
# TLS, a 3-master cluster, and a sentinel run as `redis-server --sentinel`, so
# Debian's separate redis-sentinel package is not needed).
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# PostgreSQL for tests/sync.rs (`keyward sync`): a throwaway cluster per test
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# nginx (tests/forward_auth.rs: `auth_request` in front of keyward's forward-auth listener)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
# chromium (tests/status_page.rs: the admin status page in a real headless browser)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# An S3-API server for tests/snapshot_source.rs (snapshot.source = "s3://…"):
# moto's server mode, in a virtualenv under target/ (Debian's pip refuses
# system-wide installs); rebuilt here on a fresh clone, never committed.
cd "$(dirname "$0")/.."
if [ ! -x target/python/bin/moto_server ]; then
  mkdir -p target
  if ! python3 -m venv target/python 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf target/python
    python3 -m venv target/python
  fi
  target/python/bin/pip install -q 'moto[server]'
fi
