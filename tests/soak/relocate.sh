#!/usr/bin/env bash
# Soak: N relocations of the lab's service between two nodes, with a data
# file checksummed after every move, the kernel asked after every move
# whether the ext4 is live on exactly one node, and `e2fsck -fn` of the
# disk at the end. Not part of `make check` (N=50 takes a few minutes).
#
#   bash tests/soak/relocate.sh [N]      (default 50; `make soak`)
set -euo pipefail

N=${1:-50}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB=$REPO/tests/lab/lab
CONF=/etc/ferry/services/busybox.conf

op() { local n=$1; shift; "$LAB" exec "$n" --user op -- "$@"; }
root() { local n=$1; shift; "$LAB" exec "$n" -- "$@"; }
die() { echo "soak: FAILED: $*" >&2; exit 1; }
ext4_live() {
  local dev
  dev=$(root "$1" readlink -f /run/ferry-lab/disks/data0)
  [ -e "/sys/fs/ext4/$(basename "$dev")" ]
}
trap '[ "${FERRY_KEEP_LAB:-0}" = 1 ] || "$LAB" down >/dev/null 2>&1' EXIT

"$LAB" up 2 >/dev/null
root node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' $CONF
op node1 ferry reload >/dev/null
op node1 ferry sync busybox --force >/dev/null
op node1 ferry start busybox >/dev/null
root node1 sh -c 'head -c 8388608 /dev/urandom > /srv/busybox/soak.bin'
SUM=$(root node1 sha256sum /srv/busybox/soak.bin | cut -d' ' -f1)

here=node1 there=node2 downtimes=()
t0=$(date +%s)
for i in $(seq 1 "$N"); do
  out=$(op $here ferry relocate busybox --to $there 2>&1) || { echo "$out"; die "relocation $i ($here → $there) failed"; }
  d=$(sed -n 's/.*downtime \([0-9]*\) ms.*/\1/p' <<<"$out" | tail -1)
  downtimes+=("$d")
  ext4_live $there || die "relocation $i: the ext4 is not live on $there"
  ! ext4_live $here || die "relocation $i: the ext4 is still live on $here"
  got=$(root $there sha256sum /srv/busybox/soak.bin | cut -d' ' -f1)
  [ "$got" = "$SUM" ] || die "relocation $i: checksum $got, expected $SUM"
  # each node appends a line, so the data changes as it moves
  root $there sh -c "echo 'relocation $i on $there' >> /srv/busybox/soak.log"
  tmp=$here; here=$there; there=$tmp
done
elapsed=$(( $(date +%s) - t0 ))
lines=$(root $here sh -c "wc -l < /srv/busybox/soak.log")
op $here ferry stop busybox >/dev/null
dev=$(root $here readlink -f /run/ferry-lab/disks/data0)
fsck=$(root $here e2fsck -fn "$dev" 2>&1) || { echo "$fsck"; die "e2fsck -fn found problems"; }
sorted=$(printf '%s\n' "${downtimes[@]}" | sort -n)
median=$(awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}' <<<"$sorted")
echo "soak: $N relocations in $elapsed s, checksum intact after each, ext4 live on exactly one node after each"
echo "soak: downtime median $median ms (min $(head -1 <<<"$sorted"), max $(tail -1 <<<"$sorted")); soak.log has $lines lines"
echo "soak: e2fsck -fn clean: $(tail -1 <<<"$fsck")"
