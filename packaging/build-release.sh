#!/usr/bin/env bash
# Builds the release binaries as they ship:
# - target/release/hookctl, linked statically, as a position-independent executable.
#   libvirt starts it on every hook event; linked this way it starts without a dynamic
#   loader, symbol binding or shared libraries to map (see `hooks-bench --dispatcher`),
#   and keeps address randomisation for its own image: it holds the WASM runtime that
#   sandboxes untrusted code, and a fixed image would make an escape easier.
#   HOOKCTL_NO_PIE=1 links it at a fixed address instead: no relocation pass over ~100
#   pages of pointers at each start, about 0.5 ms less per event, no randomisation.
# - target/release/hookctl-native, linked dynamically: it loads native plugins, which a
#   static program cannot.
# Needs glibc's static libraries (Debian: libc6-dev).
#
# Usage: [HOOKCTL_NO_PIE=1] bash packaging/build-release.sh   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

# Both binaries, dynamically linked; then hookctl again, alone, statically. The flag is
# given to the final link only (`cargo rustc`): set for the whole build it would also
# apply to proc-macros, which cannot be static.
cargo build --release --locked -p hookctl
static=(-C target-feature=+crt-static)
[ -z "${HOOKCTL_NO_PIE:-}" ] || static+=(-C relocation-model=static)
cargo rustc --release --locked -p hookctl --bin hookctl -- "${static[@]}"

# A dynamically linked program names its loader (PT_INTERP); a static one does not.
if readelf -lW "$target/release/hookctl" | grep -q 'program interpreter'; then
  echo "build-release: $target/release/hookctl is not statically linked" >&2
  exit 1
fi
echo "build-release: $target/release/hookctl (static${HOOKCTL_NO_PIE:+, fixed address}) and $target/release/hookctl-native (dynamic)"
