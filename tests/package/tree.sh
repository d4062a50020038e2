#!/usr/bin/env bash
# Build (once) the cached Debian 12 tree the package test boots, under
# /var/tmp: debootstrap takes about a minute and the tree does not change
# between runs. The cache is rebuilt when the package list below changes.
#
# The tree holds ferry's dependencies already, because the booted node has
# no route to the archive: `apt-get install ./ferry_*.deb` inside it must
# find every dependency installed.
set -euo pipefail
CACHE=${FERRY_PKGTEST_CACHE:-/var/tmp/ferry-pkgtest}
MIRROR=${FERRY_PKGTEST_MIRROR:-http://deb.debian.org/debian}
# The node: systemd as PID 1 with a system bus and polkit (DESIGN §11), the
# ferry package's Depends (dbus polkitd iproute2 lvm2 e2fsprogs psmisc), and
# what the test looks at: man-db for `man`, bash-completion for the loader.
INCLUDE=systemd,systemd-sysv,dbus,polkitd,libpam-systemd,iproute2,procps,lvm2,e2fsprogs,psmisc,man-db,bash-completion,util-linux,less
tree=$CACHE/tree
stamp=$CACHE/tree.stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$INCLUDE" ]; then
  echo "$tree"
  exit 0
fi
for p in debootstrap systemd-container; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    # --no-install-recommends: libnss-mymachines would edit the host's nsswitch.conf.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
  }
done
rm -rf "$tree" "$stamp"
mkdir -p "$CACHE"
start=$(date +%s)
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$tree" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
  tail -20 "$CACHE/debootstrap.log" >&2
  exit 1
}
# The node never reaches the archive; apt inside it must not try recommends.
echo 'APT::Install-Recommends "false";' >"$tree/etc/apt/apt.conf.d/90ferry-test"
rm -f "$tree/var/cache/apt/archives/"*.deb
echo "$INCLUDE" >"$stamp"
echo "tree: debootstrap took $(($(date +%s) - start)) s" >&2
echo "$tree"
