#!/usr/bin/env bash
# Installs what a Debian 12 machine lacks for one job, and nothing more:
#
#   scripts/install-deps.sh run     the shared libraries the loopgate binary links
#   scripts/install-deps.sh build   + what building it needs (C headers, pkg-config, rustfmt/clippy)
#   scripts/install-deps.sh demo    + what scripts/demo.sh uses (nftables, iproute2, socat)
#   scripts/install-deps.sh bench   + what scripts/bench*.sh use (python3, matplotlib for the chart)
#   scripts/install-deps.sh test    + what the tests use, and container runtimes where none is
#                                   installed
#
# Sourced by scripts/demo.sh, scripts/test.sh and scripts/package.sh with their job; safe to
# rerun. Every installation is announced in one line (the packages and why); apt's errors are
# shown. apt-get runs with --no-remove, so it aborts rather than remove or replace a package
# the machine already has, and it never downgrades.
#
# Container runtimes: Debian's docker.io declares Conflicts with docker-ce and docker-ce-cli
# and needs Debian's containerd and runc, which conflict with containerd.io. So where a
# container runtime not from Debian is installed, from any source, no runtime package is
# installed and the runtime tests use what is there. A runtime that cannot be installed is
# reported and the script goes on: the runtime tests then fail loudly, as they do under
# CI=true whenever a runtime is missing.
set -euo pipefail

deps_job=${1:-test}
case "$deps_job" in
  run | build | demo | bench | test) ;;
  *) echo "install-deps.sh: unknown job '$deps_job' (expected run, build, demo, bench or test)" >&2; exit 2 ;;
esac

# Debian's own container runtime packages: they are made to live together, so the missing
# ones are installed beside those present. Anything else that provides a container engine
# (Docker's docker-ce and containerd.io, Microsoft's moby builds, a static dockerd, a podman
# built elsewhere) is "foreign": Debian's packages would conflict with it or shadow it, so
# then no runtime package is installed at all and the tests use what is there.
deps_debian_runtime_pkgs=(docker.io containerd runc podman netavark aardvark-dns crun conmon golang-github-containernetworking-plugins)
deps_foreign_runtime_pkgs=(docker-ce docker-ce-cli docker-ce-rootless-extras docker-ee docker-engine moby-engine moby-cli moby-containerd moby-runc containerd.io cri-o)
deps_runtime_bins=(dockerd containerd podman)

deps_installed() { # pkg -> status 0 when dpkg has it installed
  local status
  status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)
  [ "$status" = "install ok installed" ]
}

deps_missing() { # pkg... -> prints the ones not installed
  local p
  for p in "$@"; do deps_installed "$p" || printf '%s\n' "$p"; done
}

deps_apt_updated=
deps_install() { # why pkg... -> installs the missing ones, announcing them; fails like apt does
  local why=$1; shift
  local missing
  mapfile -t missing < <(deps_missing "$@")
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "==> installing Debian packages ${missing[*]}: $why"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$deps_apt_updated" ]; then
    apt-get update -qq
    deps_apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}"
}

deps_first_installed() { # pkg... -> prints the first one dpkg has installed
  local p
  for p in "$@"; do
    if deps_installed "$p"; then printf '%s\n' "$p"; return 0; fi
  done
  return 1
}

deps_foreign_runtime() { # -> prints what makes the machine's container runtime not Debian's own
  local p bin path owner
  for p in "${deps_foreign_runtime_pkgs[@]}"; do
    if deps_installed "$p"; then printf 'package %s\n' "$p"; return 0; fi
  done
  for bin in "${deps_runtime_bins[@]}"; do
    path=$(command -v "$bin") || continue
    owner=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | cut -d: -f1 || true)
    if [ -z "$owner" ] || [[ " ${deps_debian_runtime_pkgs[*]} " != *" $owner "* ]]; then
      printf '%s (%s)\n' "$path" "${owner:-installed without a package}"
      return 0
    fi
  done
  return 1
}

deps_runtimes() {
  local foreign
  if foreign=$(deps_foreign_runtime); then
    echo "==> a container runtime not from Debian is installed ($foreign): no runtime package is installed; the runtime tests use the dockerd and podman on PATH and fail where there is none"
    return 0
  fi
  # netavark is named because --no-install-recommends would otherwise satisfy podman's
  # network stack with CNI plugins; aardvark-dns serves its user networks' DNS.
  deps_install "real dockerd and rootful Podman for the runtime tests, which start them only inside test namespaces" \
    docker.io podman netavark aardvark-dns ||
    echo "==> the container runtimes could not be installed (see apt's error above): the runtime tests will fail" >&2
}

deps_toolchain() {
  if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
  [ "$deps_job" = test ] || return 0
  local installed comp
  installed=$(rustup component list --installed 2>/dev/null || true)
  for comp in rustfmt clippy; do
    if ! grep -q "^$comp" <<<"$installed"; then
      echo "==> adding toolchain component $comp: scripts/test.sh checks formatting and lints"
      rustup component add "$comp"
    fi
  done
}

deps_install "the shared libraries the loopgate binary links" libnftnl11 libmnl0
if [ "$deps_job" != run ]; then
  deps_install "to build loopgate (C headers and pkg-config for the nftnl and mnl crates)" \
    libnftnl-dev libmnl-dev pkg-config gcc
  deps_toolchain
fi
if [ "$deps_job" != run ] && [ "$deps_job" != build ]; then
  deps_install "the demo's sandbox (ip, nft, sysctl) and its services and clients (socat)" \
    nftables iproute2 procps socat
fi
if [ "$deps_job" = bench ]; then
  deps_install "the benchmarks' report and chart" python3 python3-matplotlib
fi
if [ "$deps_job" = test ]; then
  deps_install "the tests: namespaces (util-linux), other firewalls' rules (iptables), the lab image (busybox-static, python3), the runtime sandboxes' init (tini), the metrics check (python3-prometheus-client) and the manifest check (python3-venv)" \
    util-linux iptables busybox-static python3 tini python3-prometheus-client python3-venv
  deps_runtimes
fi
