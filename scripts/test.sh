#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (real Chromium, real WebSocket clients).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --with-test-clients
swift build --build-tests
# One test at a time: the tests drive real Chromiums and encoders, and 2 vCPUs shared by several would
# measure the machine, not viewportd.
swift test --skip-build --no-parallel "$@"
