#!/bin/sh
# Runs every fuzz target, one after the other, for the given number of seconds each
# (default 60). New inputs go to fuzz/work/<target>/ (not committed); the committed seeds in
# fuzz/corpus/<target>/ are read, never written. A crash leaves its input in
# fuzz/artifacts/<target>/ and stops the script.
set -eu
seconds="${1:-60}"
cd "$(dirname "$0")/.."
targets="frame_json frame_msgpack parameters condition http_request log_record"
cargo +nightly fuzz build
for t in $targets; do
    mkdir -p "fuzz/work/$t" "fuzz/corpus/$t"
    echo "== $t ($seconds s)"
    cargo +nightly fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
