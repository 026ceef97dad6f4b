#!/usr/bin/env bash
# Installs loopgate system-wide: the binary, the systemd units, shell completions, the
# man page and an empty policy in /etc/loopgate. `DESTDIR=/some/root` installs into a
# staging tree instead (as packagers do); PREFIX defaults to /usr, which the units use.
#   sudo scripts/install.sh && sudo systemctl enable --now loopgate.service
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFIX:=/usr}" "${DESTDIR:=}"

cargo build --locked --release --quiet
bin=target/release/loopgate
root="$DESTDIR"
install -D -m 0755 "$bin" "$root$PREFIX/bin/loopgate"
install -D -m 0644 deploy/systemd/loopgate.service "$root/lib/systemd/system/loopgate.service"
install -D -m 0644 deploy/systemd/loopgate-watch.service "$root/lib/systemd/system/loopgate-watch.service"
# The nftables.service drop-in replaces ExecStart/ExecReload, so it goes only where
# nftables.service is as Debian ships it (see scripts/nftables-dropin-ok.sh).
if why=$(scripts/nftables-dropin-ok.sh "$root"); then
  install -D -m 0644 deploy/systemd/nftables.service.d/loopgate.conf "$root/lib/systemd/system/nftables.service.d/loopgate.conf"
else
  echo "not installing the nftables.service drop-in: $why, and the drop-in would replace it; \`loopgate audit\` reports it if your nftables configuration names table ip loopgate" >&2
fi
mkdir -p "$root$PREFIX/share/bash-completion/completions" "$root$PREFIX/share/zsh/vendor-completions" \
  "$root$PREFIX/share/fish/vendor_completions.d" "$root$PREFIX/share/man/man1"
"$bin" completions bash > "$root$PREFIX/share/bash-completion/completions/loopgate"
"$bin" completions zsh > "$root$PREFIX/share/zsh/vendor-completions/_loopgate"
"$bin" completions fish > "$root$PREFIX/share/fish/vendor_completions.d/loopgate.fish"
"$bin" man | gzip -9n > "$root$PREFIX/share/man/man1/loopgate.1.gz"
if [ ! -e "$root/etc/loopgate/loopgate.yaml" ]; then
  install -d -m 0755 "$root/etc/loopgate"
  printf '# Grants applied at boot by loopgate.service; see `man loopgate`.\ngrants: []\n' > "$root/etc/loopgate/loopgate.yaml"
fi
echo "installed loopgate into ${DESTDIR:-/}${PREFIX}"
