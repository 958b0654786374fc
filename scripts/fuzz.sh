#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60),
# starting from the corpus kept in fuzz/corpus/. New inputs go to a scratch
# folder, or, with FUZZ_GROW=1, into fuzz/corpus/ (then minimise it with
# `cargo +nightly fuzz cmin -O TARGET` before committing it). Installs
# cargo-fuzz if it is missing. libFuzzer needs nightly Rust: with no nightly
# toolchain, the stable one is used with RUSTC_BOOTSTRAP=1.
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

"${fuzz[@]}" build -O
for target in $("${fuzz[@]}" list); do
    mkdir -p "corpus/$target"
    echo "fuzzing $target for ${seconds} s"
    log="target/fuzz-$target.log"
    if [ "${FUZZ_GROW:-0}" = 1 ]; then
        dirs=("corpus/$target")
    else
        dirs=("$(mktemp -d)" "corpus/$target")
    fi
    if ! "${fuzz[@]}" run -O "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^(INFO: seed corpus|Done)' "$log"
done
