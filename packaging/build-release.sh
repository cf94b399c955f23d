#!/usr/bin/env bash
# Builds the release binaries as they ship:
# - target/release/hookctl, linked statically and at a fixed address. libvirt starts it
#   on every hook event; linked this way it starts in about the time /bin/true does (see
#   `hooks-bench --dispatcher`): no dynamic loader, no symbol binding, no shared
#   libraries to map, and no relocation pass over ~100 pages of pointers at each start.
#   The price is no address randomisation for hookctl's own image (stack, heap, mmap
#   and WASM code are still randomised): its inputs come from libvirtd and from
#   root-owned plugins, and it is memory-safe Rust. HOOKCTL_PIE=1 builds a static PIE
#   instead, randomised, for about 0.5 ms more per event.
# - target/release/hookctl-native, linked dynamically: it loads native plugins, which a
#   static program cannot.
# Needs glibc's static libraries (Debian: libc6-dev).
#
# Usage: [HOOKCTL_PIE=1] bash packaging/build-release.sh   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

# Both binaries, dynamically linked; then hookctl again, alone, statically. The flag is
# given to the final link only (`cargo rustc`): set for the whole build it would also
# apply to proc-macros, which cannot be static.
cargo build --release --locked -p hookctl
static=(-C target-feature=+crt-static)
[ -n "${HOOKCTL_PIE:-}" ] || static+=(-C relocation-model=static)
cargo rustc --release --locked -p hookctl --bin hookctl -- "${static[@]}"

# A dynamically linked program names its loader (PT_INTERP); a static one does not.
if readelf -lW "$target/release/hookctl" | grep -q 'program interpreter'; then
  echo "build-release: $target/release/hookctl is not statically linked" >&2
  exit 1
fi
echo "build-release: $target/release/hookctl (static${HOOKCTL_PIE:+ PIE}) and $target/release/hookctl-native (dynamic)"
