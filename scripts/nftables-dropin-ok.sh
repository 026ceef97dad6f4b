#!/usr/bin/env bash
# Says whether loopgate's nftables.service drop-in may be installed under ROOT (default /):
# exits 0 when nftables.service runs as Debian ships it, 1 (naming the file) when an
# administrator or another package already decides how it starts or reloads.
#
# Why: the drop-in replaces ExecStart and ExecReload (to load /etc/nftables.conf without
# a `table ip loopgate` block). On a host whose nftables.service was customised (a unit
# in /etc or /run, or a drop-in of its own that sets ExecStart or ExecReload), installing
# it would silently replace the operator's command. There, loopgate installs nothing for
# nftables.service, and `loopgate audit` still reports a configuration that names the
# table (`nftables-conf-names-table`).
#   scripts/nftables-dropin-ok.sh [ROOT]
set -euo pipefail
root="${1:-}"
root="${root%/}"
for f in "$root"/etc/systemd/system/nftables.service "$root"/run/systemd/system/nftables.service \
  "$root"/etc/systemd/system/nftables.service.d/*.conf "$root"/run/systemd/system/nftables.service.d/*.conf \
  "$root"/lib/systemd/system/nftables.service.d/*.conf "$root"/usr/lib/systemd/system/nftables.service.d/*.conf; do
  [ -f "$f" ] || continue
  case "$f" in */nftables.service.d/loopgate.conf) continue ;; esac
  if grep -qE '^[[:space:]]*Exec(Start|Reload)[[:space:]]*=' "$f"; then
    echo "$f sets how nftables.service starts or reloads"
    exit 1
  fi
done
exit 0
