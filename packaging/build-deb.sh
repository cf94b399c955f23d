#!/usr/bin/env bash
# Builds the Debian package of hookctl: target/debian/hookctl_<version>-1_<arch>.deb with
# /usr/bin/hookctl (static, see build-release.sh), /usr/libexec/hookctl/hookctl-native
# (which runs native plugins), its man pages and bash/zsh/fish completions (generated from its own
# argument definitions), the README, examples and a tmpfiles.d entry. Needs cargo-deb
# (`cargo install cargo-deb --locked`), and dpkg-dev for the automatic Depends.
#
# It writes only under the target dir (CARGO_TARGET_DIR, else target/ in the checkout):
# from a read-only checkout, give one outside it, e.g.
#   CARGO_TARGET_DIR=/var/tmp/hookctl-build bash packaging/build-deb.sh
# and the package is $CARGO_TARGET_DIR/debian/hookctl_<version>-1_<arch>.deb.
#
# Usage: bash packaging/build-deb.sh [more cargo-deb options]   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 2; }
target=${CARGO_TARGET_DIR:-target}

bash packaging/build-release.sh
# What hookctl/Cargo.toml's [package.metadata.deb] assets take from
# target/release/deb-assets/ (cargo-deb reads `target/release/` as the real target dir;
# emptied first, so a removed subcommand leaves no page behind): the man pages and
# completions; man pages and documentation gzipped, as Debian's policy wants (cargo-deb
# compresses only the pages it is given by name).
generated=$target/release/deb-assets
rm -rf "$generated"
"$target/release/hookctl" generate-assets "$generated"
gzip -9n "$generated"/man/*.1
for doc in README.md DESIGN.md CHANGELOG.md; do
  gzip -9n < "$doc" > "$generated/$doc.gz"
done
mkdir -p "$generated/docs/plugins"
for doc in docs/*.md docs/plugins/*.md; do
  gzip -9n < "$doc" > "$generated/${doc}.gz"
done
# [profile.release] already drops the DWARF (`strip = "debuginfo"`) and keeps the symbol
# table: a crash backtrace from the packaged binary still names each function, for a
# few MB. --no-strip keeps it that way.
cargo deb -p hookctl --no-build --no-strip --locked "$@"
