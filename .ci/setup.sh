#!/usr/bin/env bash
# Everything a fresh Debian machine needs to run bilevel: the Docker engine with gVisor,
# a virtualenv with the project, and the sandbox image (reused when its inputs are
# unchanged). Idempotent; needs root for the engine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/engine.sh

if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
# Headless Chromium loads the report and the `bilevel ui` page in the tests.
command -v chromium >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch==2.13.0 is pinned: a looser spec could pull a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev,parquet,ray]"
# tests/test_ray_backend.py starts its Ray cluster in a loopback-only namespace (unshare, ip)
command -v ip >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
# The Node client test (tests/test_api_node_client.py): grpc-js from the lockfile.
command -v npm >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
(cd tests/node_client && npm ci --no-audit --no-fund --silent)

# No registry here: the base image is built from Debian's archive (debootstrap).
.venv/bin/bilevel image build --base "${BILEVEL_BASE:-auto}"
