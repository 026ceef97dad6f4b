#!/usr/bin/env bash
# Builds the Debian package (target/debian/loopgate_*.deb) with cargo-deb: binary,
# systemd units, completions, man page and an empty /etc/loopgate/loopgate.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install-deps.sh build
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "==> installing cargo-deb from crates.io into ~/.cargo/bin: it builds the .deb"
  cargo install cargo-deb --locked --quiet
fi
rm -rf target/debroot
DESTDIR="$PWD/target/debroot" scripts/install.sh >/dev/null
# cargo-deb prints the package's path.
cargo deb --no-build --locked --quiet
