#!/usr/bin/env bash
# Installs what is missing, builds viewportd, and runs it with a demo session: a bundled animated page in
# headless Chromium. It prints a watch URL (open it in a browser) and an API key. Ctrl-C stops it.
# Extra arguments go to `viewportd demo` (e.g. --config FILE); VIEWPORTD_LISTEN=0.0.0.0:8200 listens on all
# interfaces.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --product viewportd
exec .build/release/viewportd demo "$@"
