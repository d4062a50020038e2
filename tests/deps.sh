#!/usr/bin/env bash
# Install what building and testing ferry needs on a fresh Debian 12, when it
# is missing. Idempotent; quiet when everything is there.
# libsanlock-dev + pkg-config: the helper links libsanlock_client. gcc (cc)
# and libc6-dev: the lab builds its sanlock rlimit shim. g++: libFuzzer
# (make fuzz, fuzz-short).
set -euo pipefail
packages=(docker.io containerd tini dbus polkitd openssh-server openssh-client sudo lvm2
  busybox-static iputils-arping e2fsprogs psmisc iproute2 util-linux systemd procps
  sanlock libsanlock-dev pkg-config gcc g++ libc6-dev
  debootstrap systemd-container lintian
  pacemaker corosync crmsh resource-agents libxml2-utils
  cockpit-ws cockpit-bridge chromium chromium-driver python3-selenium
  podman conmon catatonit runc golang-github-containers-common)
# podman, conmon, catatonit (podman's --init), runc (its OCI runtime, shared
# with docker.io) and golang-github-containers-common (policy.json,
# registries.conf): service podbox (`lab up N --podman`, the podman suite).
# cockpit-ws, cockpit-bridge, chromium, chromium-driver and python3-selenium:
# the Cockpit page's browser test (tests/integration/cockpit.sh), headless.
# pacemaker, corosync, crmsh, resource-agents (ocf-tester) and libxml2-utils
# (xmllint, for ocf-tester): `lab up N --pacemaker` and the pacemaker suite.
# debootstrap and systemd-container boot the package test's node
# (tests/package/run.sh). --no-install-recommends below matters for them:
# libnss-mymachines would edit this host's nsswitch.conf.
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "deps: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
# make deb builds the package with cargo-deb, from crates.io.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
# make fuzz and fuzz-short run the fuzz targets with cargo-fuzz, from crates.io.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
