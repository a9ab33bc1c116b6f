#!/usr/bin/env bash
# Fuzzes viewportd's parsers of peer bytes with libFuzzer: builds the targets of Fuzz/Targets (declared in
# Package.swift only when VIEWPORTD_FUZZ is set) with -sanitize=fuzzer,address into .build-fuzz, then runs each
# for SECONDS_PER_TARGET seconds, starting from the committed seeds (Fuzz/corpus/<target>), the regression inputs
# (Fuzz/regressions/<target>) and what earlier runs found (.build-fuzz/corpus/<target>, kept between runs).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 600 s each, every target
#
# A crash leaves its input in Fuzz/crashes/<target>/ (not committed) and makes the script exit non-zero once every
# target ran. To keep one: fix it, copy the input to Fuzz/regressions/<target>/, and the corpus tests of
# `swift test` (FuzzCorpus suites) replay it from then on. Reproduce with `.build-fuzz/debug/fuzz-<target> FILE`.
#
# Not fuzzed here: the HTTP request head and the server side of WebSocket framing (libwebsockets, C, parses them).
# rfb-handshake is the noVNC relay's RFB handshake (RelayHandshake); the RFB protocol after it is libvncserver's.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(ws-framing cdp-frame viewer-input http-range config mp4cut rfb-handshake)
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

max_len() {
    case $1 in
        http-range) echo 256 ;;
        viewer-input) echo 2048 ;;
        mp4cut) echo 8192 ;;  # above the seed recording (about 3 kB)
        *) echo 4096 ;;
    esac
}

for target in "${targets[@]}"; do
    [ -d "Fuzz/Targets/$target" ] || { echo "fuzz.sh: no target $target (targets: ${all_targets[*]})" >&2; exit 2; }
done

build_start=$SECONDS
for target in "${targets[@]}"; do
    VIEWPORTD_FUZZ=1 swift build --scratch-path .build-fuzz --product "fuzz-$target" \
        -Xswiftc -sanitize=fuzzer,address
done
echo "fuzz.sh: built ${#targets[@]} target(s) in $((SECONDS - build_start)) s"

# Swift's runtime and Foundation keep caches that LeakSanitizer would report as leaks; Swift's own backtracer would
# hide a runtime failure's stack from libFuzzer's report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} SWIFT_BACKTRACE=enable=no
failed=()
for target in "${targets[@]}"; do
    mkdir -p ".build-fuzz/corpus/$target" "Fuzz/crashes/$target" "Fuzz/regressions/$target"
    echo "fuzz.sh: $target for $seconds s"
    if ! ".build-fuzz/debug/fuzz-$target" -max_total_time="$seconds" -max_len="$(max_len "$target")" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="Fuzz/crashes/$target/" \
        ".build-fuzz/corpus/$target" "Fuzz/corpus/$target" "Fuzz/regressions/$target" \
        2>"Fuzz/crashes/$target.log"; then
        failed+=("$target")
        echo "fuzz.sh: $target FAILED; see Fuzz/crashes/$target.log and Fuzz/crashes/$target/" >&2
        tail -n 40 "Fuzz/crashes/$target.log" >&2
    else
        grep -E '^(stat::|Done)|INITED|DONE' "Fuzz/crashes/$target.log" | tail -n 8
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: no crash in ${targets[*]}"
