#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECS seconds each (default 45) on top of its
# committed corpus (fuzz/corpus/TARGET). A crash fails the run and leaves its input under
# fuzz/artifacts/TARGET/; turn it into a regression test. Installs cargo-fuzz if missing.
# The toolchain is stable: RUSTC_BOOTSTRAP lets it take the sanitizer flags. Targets build
# with overflow checks on.
#   scripts/fuzz.sh [SECS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-45}"; shift || true
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
cargo fuzz build --fuzz-dir fuzz
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  # A scratch copy of the corpus: what the run finds does not dirty the checkout.
  work="$(mktemp -d)"; cp -r "fuzz/corpus/$t/." "$work/"
  echo "fuzz: $t for ${secs}s"
  if ! cargo fuzz run --fuzz-dir fuzz "$t" "$work" -- -max_total_time="$secs" -print_final_stats=1 \
      >"fuzz/$t.log" 2>&1; then
    tail -n 40 "fuzz/$t.log" >&2
    echo "fuzz: $t crashed: the input is under fuzz/artifacts/$t/" >&2
    rm -rf "$work"
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "fuzz/$t.log" | tr '\n' ' '; echo
  rm -rf "$work"
done
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
