#!/usr/bin/env bash
# Fuzzes loopgate's policy parser and input validators with libFuzzer (cargo fuzz) for
# a bounded time: `scripts/fuzz.sh [SECONDS]` (default 300). scripts/test.sh runs a short
# smoke run. Prints the number of executions. Needs no root and no namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
# cargo fuzz passes -Z flags (sanitizer coverage); the stable toolchain accepts them
# with RUSTC_BOOTSTRAP, so no second toolchain is needed.
export RUSTC_BOOTSTRAP=1
work=$(mktemp -d /tmp/loopgate-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp fuzz/corpus/policy/* "$work/"
cargo fuzz build --fuzz-dir fuzz policy
cargo fuzz run --fuzz-dir fuzz policy "$work" -- \
  -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 | tee "$work.log" | grep -E "^(Done|#[0-9]+ +DONE|stat::number_of_executed_units)|ERROR|panicked" || true
runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$work.log" | grep -Eo '[0-9]+$' || echo 0)
if grep -q "ERROR: libFuzzer" "$work.log" || grep -q "panicked" "$work.log"; then
  cat "$work.log" | tail -40
  echo "fuzzing found a crash" >&2
  exit 1
fi
rm -f "$work.log"
if [ "$runs" -eq 0 ]; then
  echo "the fuzzer executed nothing" >&2
  exit 1
fi
echo "fuzz: $runs executions in ${seconds}s, no crash"
