#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (real Chromium, real WebSocket clients).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --with-test-clients
swift build --build-tests
swift test --skip-build "$@"
