#!/usr/bin/env bash
# Builds the Debian package of hookctl: target/debian/hookctl_<version>-1_<arch>.deb with
# /usr/bin/hookctl (static, see build-release.sh), /usr/libexec/hookctl/hookctl-native
# (which runs native plugins), its man pages and bash/zsh/fish completions (generated from its own
# argument definitions), the README, examples and a tmpfiles.d entry. Needs cargo-deb
# (`cargo install cargo-deb --locked`), and dpkg-dev for the automatic Depends.
#
# Usage: bash packaging/build-deb.sh [more cargo-deb options]   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 2; }

bash packaging/build-release.sh
# What hookctl/Cargo.toml's [package.metadata.deb] assets take from packaging/generated/
# (emptied first, so a removed subcommand leaves no page behind): the man pages and
# completions, and the README gzipped as Debian's policy wants documentation over 4 kB.
generated=packaging/generated
rm -rf "$generated"
"${CARGO_TARGET_DIR:-target}/release/hookctl" generate-assets "$generated"
gzip -9n < README.md > "$generated/README.md.gz"
# [profile.release] already drops the DWARF (`strip = "debuginfo"`) and keeps the symbol
# table: a crash backtrace from the packaged binary still names each function, for a
# few MB. --no-strip keeps it that way.
cargo deb -p hookctl --no-build --no-strip --locked "$@"
