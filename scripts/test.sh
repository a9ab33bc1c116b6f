#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (real Chromium, real WebSocket clients).
# With arguments, runs `swift test` with them (e.g. --filter H264ViewerTests) after the same set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --with-test-clients
swift build --build-tests
# One test at a time in each process: the tests drive real Chromiums and encoders, and 2 vCPUs shared by several
# would measure the machine, not viewportd.
if [ $# -gt 0 ]; then exec swift test --skip-build --no-parallel "$@"; fi
# These suites spend their time waiting (an S3 or PostgreSQL outage, pool and lease timeouts, a full disk, a
# schema fuzzer's requests), so they run in a second process beside the rest. Its output follows the first's.
waiting='ViewportDaemonTests\.(DiskFailureTests|ObjectStoreTests|PostgresConnectionTests|StoreTests|ClusterStoreTests|WebhookTests|OperationsTests|PostgresDaemonTests|OpenAPITests|ObjectStorageRecoveryTests|LargeUploadTests)/'
# The hostile-peer suite measures one tenant's frame rate against the others': it runs last, alone.
alone='ViewportDaemonTests\.HostilePeerTests/'
log=$(mktemp /tmp/viewportd-tests-waiting.XXXXXX)
swift test --skip-build --no-parallel --skip "$waiting" --skip "$alone" &
rest_pid=$!
# SwiftPM holds a lock on .build for as long as a `swift test` runs, so the second ignores it (it builds nothing);
# it starts once the first has planned.
sleep 5
waiting_rc=0; swift test --skip-build --no-parallel --ignore-lock --filter "$waiting" > "$log" 2>&1 || waiting_rc=$?
rest=0; wait "$rest_pid" || rest=$?
echo "---- the suites that wait (second process) ----"
cat "$log"; rm -f "$log"
echo "---- the hostile-peer suite, alone ----"
hostile=0; swift test --skip-build --no-parallel --filter "$alone" || hostile=$?
echo "---- all tests: $([ $rest -eq 0 ] && echo passed || echo FAILED) (rest), $([ $waiting_rc -eq 0 ] && echo passed || echo FAILED) (suites that wait), $([ $hostile -eq 0 ] && echo passed || echo FAILED) (hostile peers) ----"
[ $rest -eq 0 ] && [ $waiting_rc -eq 0 ] && [ $hostile -eq 0 ]
