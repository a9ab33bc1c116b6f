#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (real Chromium, real WebSocket clients).
# With arguments, runs `swift test` with them (e.g. --filter H264ViewerTests) after the same set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --with-test-clients
swift build --build-tests
# One test at a time in each process: the tests drive real Chromiums and encoders, and 2 vCPUs shared by several
# would measure the machine, not viewportd.
#
# run_tests LIMIT ARGS...: `swift test` with ARGS, its output line by line (stdbuf: the test runner's stdout is
# block-buffered into a pipe, and a hung run would not show the test it hangs in). A run still going after LIMIT
# seconds is a hang: it prints the stacks of the test process's threads, kills it and fails (status 124).
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
run_tests() {
  local limit=$1; shift
  stdbuf -oL -eL swift test --skip-build --no-parallel "$@" &
  local pid=$! waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2; waited=$((waited + 2))
    [ "$waited" -lt "$limit" ] && continue
    echo "---- HUNG: swift test $* still running after $limit s; the test process's threads: ----"
    local all runner
    all=$(descendants "$pid")
    runner=$(for p in $all; do grep -qa xctest "/proc/$p/cmdline" 2>/dev/null && echo "$p"; done | head -n 1)
    if [ -n "$runner" ]; then
      # Idle Dispatch threads left out.
      gdb -p "$runner" -batch -ex "thread apply all bt 30" 2>&1 | grep -E '^(Thread|#)' |
        awk -v idle='_dispatch_sema4_timedwait|_dispatch_mgr_thread|_dispatch_sig_thread' '
          /^Thread/ { if (b !~ idle) printf "%s", b; b = "" } { b = b $0 "\n" } END { if (b !~ idle) printf "%s", b }' |
        head -n 600
    fi
    kill -KILL $all "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "---- HUNG: killed swift test $* after $limit s (the last test started above is the one) ----"
    return 124
  done
  wait "$pid"
}
if [ $# -gt 0 ]; then run_tests 3600 "$@"; exit; fi
# These suites spend their time waiting (an S3 or PostgreSQL outage, pool and lease timeouts, a full disk, a
# schema fuzzer's requests), so they run in a second process beside the rest. Its output follows the first's.
waiting='ViewportDaemonTests\.(DiskFailureTests|ObjectStoreTests|PostgresConnectionTests|StoreTests|ClusterStoreTests|WebhookTests|OperationsTests|PostgresDaemonTests|OpenAPITests|ObjectStorageRecoveryTests|LargeUploadTests)/'
# The hostile-peer suite measures one tenant's frame rate against the others': it runs last, alone.
alone='ViewportDaemonTests\.HostilePeerTests/'
log=$(mktemp /tmp/viewportd-tests-waiting.XXXXXX)
run_tests 1500 --skip "$waiting" --skip "$alone" &
rest_pid=$!
# SwiftPM holds a lock on .build for as long as a `swift test` runs, so the second ignores it (it builds nothing);
# it starts once the first has planned.
sleep 5
waiting_rc=0; run_tests 900 --ignore-lock --filter "$waiting" > "$log" 2>&1 || waiting_rc=$?
rest=0; wait "$rest_pid" || rest=$?
echo "---- the suites that wait (second process) ----"
cat "$log"; rm -f "$log"
echo "---- the hostile-peer suite, alone ----"
hostile=0; run_tests 300 --filter "$alone" || hostile=$?
echo "---- all tests: $([ $rest -eq 0 ] && echo passed || echo FAILED) (rest), $([ $waiting_rc -eq 0 ] && echo passed || echo FAILED) (suites that wait), $([ $hostile -eq 0 ] && echo passed || echo FAILED) (hostile peers) ----"
[ $rest -eq 0 ] && [ $waiting_rc -eq 0 ] && [ $hostile -eq 0 ]
