#!/usr/bin/env bash
# The tutorial on a two-node lab, as the unprivileged operator `op`:
# one node → add node2 to `nodes` → sync down → sync (skipped outside the
# window, then --force) → relocate to node2 → relocate back.
# FERRY_KEEP_LAB=1 leaves the lab up at the end.
set -euo pipefail
LAB=$(cd "$(dirname "$0")/lab" && pwd)/lab
op() { local n=$1; shift; echo; echo "op@$n\$ $*"; "$LAB" exec "$n" --user op -- "$@"; }
root() { local n=$1; shift; echo; echo "root@$n# $*"; "$LAB" exec "$n" -- "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building a lab of two nodes (namespaces, own bus/polkit/sshd/helper each, one shared disk)"
"$LAB" up 2

say "Initial state: the service on node1 only"
op node1 ferry print config busybox
op node1 ferry status busybox
op node1 ferry start busybox
op node1 ferry status busybox
op node1 ferry docker busybox -- images
sleep 2
op node1 ferry docker busybox -- logs --tail 3 busybox.container.1
root node1 sh -c 'date > /srv/busybox/written-on-node1; sha256sum /srv/busybox/written-on-node1'

say "Change the config: nodes = node1 node2 (the administrator, as root)"
root node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' /etc/ferry/services/busybox.conf
op node1 ferry reload
op node1 ferry status busybox

say "Push the config (always from the node owning the service)"
op node1 ferry sync busybox || true
op node1 ferry sync busybox --force
op node1 ferry status busybox
op node2 ferry status busybox

say "Relocate to node2"
op node1 ferry relocate busybox --to node2
op node2 ferry status busybox
op node1 ferry status busybox --all-nodes
sleep 2
op node2 ferry docker busybox -- logs --tail 3 busybox.container.1
root node2 sha256sum /srv/busybox/written-on-node1

say "And back to node1"
op node2 ferry switch busybox --to node1
op node1 ferry status busybox --all-nodes

if [ "${FERRY_KEEP_LAB:-0}" = 1 ]; then
  say "Lab left up: tests/lab/lab exec node1 --user op -- ferry status; make lab-down removes it"
else
  say "Tearing the lab down (FERRY_KEEP_LAB=1 keeps it)"
  "$LAB" down
fi
