#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine (root, Rust toolchain present) lacks to build,
# test and demo loopgate. Sourced by scripts/test.sh and scripts/demo.sh; safe to rerun.
set -euo pipefail

need_pkgs=(libnftnl-dev libmnl-dev pkg-config nftables iproute2 procps util-linux socat python3 python3-prometheus-client python3-venv iptables)
# Real container runtimes for the tests of tests/cli/runtimes.rs (they run them only inside
# network namespaces the tests create). netavark is named because --no-install-recommends
# would otherwise satisfy podman's network stack with containernetworking-plugins (CNI);
# aardvark-dns serves the DNS of podman's user-defined networks. Rootful only: no uidmap,
# slirp4netns or fuse-overlayfs. Installing starts nothing: there is no systemd here and
# policy-rc.d refuses invoke-rc.d.
need_pkgs+=(docker.io podman netavark aardvark-dns busybox-static)
missing=()
for p in "${need_pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
installed=$(rustup component list --installed 2>/dev/null || true)
for comp in rustfmt clippy; do
  if ! grep -q "^$comp" <<<"$installed"; then
    echo "==> adding toolchain component $comp"
    rustup component add "$comp"
  fi
done
