#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 60) on its seed corpus.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]      # all targets when none is named
#   FUZZ_MERGE=1 bash fuzz/run.sh 600 shebang   # then add to fuzz/corpus/TARGET the
#                                               # fewest inputs that reach new edges
#
# cargo-fuzz (libFuzzer, AddressSanitizer, debug assertions) on the stable compiler:
# RUSTC_BOOTSTRAP=1 lets it pass its -Z flags. Inputs at most 64 KiB, 10 s each, 2 GiB of
# memory. What a run finds new goes to a scratch corpus (the repository's is only read);
# a crash, timeout or OOM is written to fuzz/artifacts/TARGET/ and fails the script,
# after every target has run. `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`
# replays one.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0
# The version CI installs; another may build other flags.
if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then
  cargo install cargo-fuzz --locked --version 0.13.1 -q
fi
cargo fetch --locked -q
build=(--debug-assertions --sanitizer address)
started=$SECONDS
cargo fuzz build "${build[@]}"
echo "fuzz: built in $((SECONDS - started)) s"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

failed=()
summary=()
for target in "${targets[@]}"; do
  scratch=$(mktemp -d)
  log=$(mktemp)
  mkdir -p "artifacts/$target"
  echo "fuzz: $target for ${seconds}s"
  status=0
  cargo fuzz run "${build[@]}" "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^(==[0-9]+==ERROR|SUMMARY|thread .* panicked|artifact_prefix|Test unit written)' "$log" | sed "s/^/  /" || true
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' <<<"$done_line")
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    tail -n 60 "$log"
  elif [ "${FUZZ_MERGE:-0}" = 1 ]; then
    cargo fuzz run "${build[@]}" "$target" "corpus/$target" "$scratch" -- -set_cover_merge=1 -use_counters=0 -max_len=65536 \
      -timeout=10 -rss_limit_mb=2048 >/dev/null 2>&1
  fi
  summary+=("$target: ${execs:-?} runs, ${rate:-?} exec/s, cov ${cov:-?}, exit $status")
  rm -rf "$scratch" "$log"
done
printf 'fuzz: %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash, timeout or OOM"
