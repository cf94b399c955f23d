#!/usr/bin/env bash
# Builds examples/wasm/vcpu_limit.c into a WASI preview-1 command module with Debian's
# clang (packages: clang lld wasi-libc libclang-rt-14-dev-wasm32).
#
#   bash examples/wasm/build-c.sh [OUT]    # default: examples/wasm/vcpu-limit.wasm
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/vcpu-limit.wasm}
clang --target=wasm32-wasi --sysroot=/usr -O2 -Wall -Wextra -Werror -Wl,--strip-all \
  -o "$out" "$here/vcpu_limit.c"
echo "built $out"
