# One node at a time, whatever happens: the ways adversarial testing got the
# service's ext4 live on two nodes at once, each replayed against the disk
# lease and the helper's guards. Every verdict about the disk is the
# kernel's: a node holds the filesystem while /sys/fs/ext4/<its own loop
# device> exists, whatever ferry says.

"$LAB" up 2 || { echo "lab up failed"; FAILED=$((FAILED + 1)); return 0; }

CONF=/etc/ferry/services/busybox.conf
X_STATE=$(mktemp -d)

# The kernel's view: is the ext4 of the data disk live through NODE's own
# loop device? (sysfs is the host's; the symlink is the node's.)
ext4_live() { # NODE
  local dev
  dev=$(root_on "$1" readlink -f /run/ferry-lab/disks/data0)
  [ -e "/sys/fs/ext4/$(basename "$dev")" ]
}
both_live() { ext4_live node1 && ext4_live node2; }
lease_state() { # NODE → the lease#1 line's state
  as op "$1" ferry status busybox --local | sed -n 's/.*- lease#1 *\.\.\.\. \([a-z\/]*\) .*/\1/p'
}
helper_pid() { root_on "$1" cat /run/ferry-lab/ferry-helper.pid; }
busctl_op() { # NODE OBJECT IFACE METHOD (as op)
  as op "$1" busctl --system call io.ferry.Helper1 "/io/ferry/Helper1/service/busybox/$2" "io.ferry.Helper1.$3" "$4"
}
# Watch both nodes' ext4 every 10 ms in the background; `watch_stop` fails
# the test if both were ever live at once.
watch_start() {
  # ends with the test's subshell, whatever way that ends
  local test_pid=$BASHPID
  ( while kill -0 "$test_pid" 2>/dev/null; do
      both_live && { echo BOTH >>"$X_STATE/both"; }; sleep 0.01
    done ) &
  echo $! >"$X_STATE/watch"
}
watch_stop() {
  kill "$(cat "$X_STATE/watch")" 2>/dev/null || true
  wait "$(cat "$X_STATE/watch")" 2>/dev/null || true
  if [ -s "$X_STATE/both" ]; then rm -f "$X_STATE/both"; fail "the ext4 was live on both nodes at once"; fi
}
stop_everywhere() {
  as op node1 ferry stop busybox >/dev/null 2>&1 || true
  as op node2 ferry stop busybox >/dev/null 2>&1 || true
  ! ext4_live node1 && ! ext4_live node2 || fail "could not stop the service everywhere"
}

t_setup_two_nodes_with_a_lease() {
  root_on node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' $CONF
  root_on node1 cat $CONF | root_on node2 install -m 0644 /dev/stdin $CONF
  expect_ok as op node1 ferry reload
  expect_ok as op node2 ferry reload
  expect_ok root_on node1 ferry validate $CONF
  lacks "warning"
  # the lab initialized the area through ferry; a second init is refused
  expect_code 1 as op node1 ferry lease init busybox
  contains "already holds lease ferry-busybox@/run/ferry-lab/disks/lease0"
  # a per-service operator may start and stop, not rewrite the lease area
  expect_code 3 as svcop node1 ferry lease init busybox
  contains "io.ferry.lease.init"
  expect_ok as op node1 ferry status busybox --local
  matches "lease#1 +\.\.\.\. down +ferry-busybox@/run/ferry-lab/disks/lease0"
}

t_start_shows_the_holder_on_both_nodes() {
  expect_ok as op node1 ferry start busybox
  contains "acquire lease ferry-busybox@/run/ferry-lab/disks/lease0"
  ext4_live node1 || fail "node1 started but its ext4 is not live"
  [ "$(lease_state node1)" = up ] || fail "lease not up on node1"
  expect_ok as op node2 ferry status busybox --local
  matches "lease#1 +\.\.\.\. warn +ferry-busybox@"
  contains "# held by node1 (host_id 1)"
}

# 1. The address goes away without ferry on the node that runs the service.
t_address_lost_on_the_holder() {
  root_on node1 ip addr del $VIP/24 dev lab0
  trap 'as op node1 ferry start busybox >/dev/null 2>&1' EXIT
  expect_code 1 as op node2 ferry start busybox
  contains "lease ferry-busybox@/run/ferry-lab/disks/lease0 is held by node1 (host_id 1)"
  ! ext4_live node2 || fail "node2 mounted the ext4"
  ext4_live node1 || fail "node1 lost its ext4"
  ! node_has_vip node2 || fail "node2 kept the address after the refused start"
  root_on node2 vgs --noheadings -o vg_tags vgbusybox | grep -q node2 && fail "node2 took the vg"
  # node1 takes its address back and is whole again
  expect_ok as op node1 ferry start busybox
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   up"
}

# 2. A --rid subset that would drop the address under a running service.
t_rid_subset_cannot_drop_the_address() {
  for who in op svcop; do
    expect_code 1 as $who node1 ferry stop busybox --rid ip#1
    contains "OutOfOrder"
    contains "refusing to remove on node1"
    node_has_vip node1 || fail "node1 lost the address to a --rid stop by $who"
  done
  expect_code 1 as op node1 ferry stop busybox --rid lease#1
  contains "refusing to release on node1"
  [ "$(lease_state node1)" = up ] || fail "the lease went"
  expect_code 1 as op node2 ferry start busybox
  ! ext4_live node2 || fail "node2 mounted the ext4"
}

# 3. Straight to the disks over the bus, with the address up nowhere.
t_busctl_cannot_go_around_the_order() {
  stop_everywhere
  for call in "vg_231 Vg Tag" "vg_231 Vg Activate" "fs_231 Fs Mount" "container_231 Container StartDaemon" "lease_231 Lease Acquire"; do
    # shellcheck disable=SC2086
    expect_code 1 busctl_op node1 $call
    contains "ip#1 (203.0.113.25) is not up here"
  done
  ! ext4_live node1 || fail "a busctl call mounted the ext4"
  # the address alone is not enough: the lease, then the tag, come first
  expect_ok busctl_op node1 ip_231 Ip Add
  trap 'busctl_op node1 lease_231 Lease Release >/dev/null 2>&1; busctl_op node1 ip_231 Ip Remove >/dev/null 2>&1' EXIT
  expect_code 1 busctl_op node1 fs_231 Fs Mount
  contains "the lease (lease#1) is not held here"
  expect_ok busctl_op node1 lease_231 Lease Acquire
  expect_code 1 busctl_op node1 fs_231 Fs Mount
  contains "vgbusybox is not tagged node1"
  ! ext4_live node1 || fail "a busctl call mounted the ext4"
  # and the address may not go while the lease is held
  expect_code 1 busctl_op node1 ip_231 Ip Remove
  contains "the lease (lease#1) is still held here"
  expect_ok busctl_op node1 lease_231 Lease Release
  expect_ok busctl_op node1 ip_231 Ip Remove
  node_is_clean node1
}

# 4. Copies of the mount in other mount namespaces of the source: a user
# without rights (a user namespace), and root's own unshare.
t_relocate_lets_go_of_copies_in_other_namespaces() {
  expect_ok as op node1 ferry start busybox
  as guest node1 unshare -Urm sh -c 'cd /srv/busybox 2>/dev/null; exec sleep 600' &
  local g=$!
  root_on node1 unshare -m --propagation private sh -c 'cd /srv/busybox; exec sleep 600' &
  local r=$!
  sleep 0.5
  watch_start
  expect_ok as op node1 ferry relocate busybox --to node2
  watch_stop
  contains "keeps a copy of the mount: kill its processes"
  ! ext4_live node1 || fail "node1 still holds the ext4 after the relocation"
  ext4_live node2 || fail "node2 does not hold the ext4"
  wait $g $r || true
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   down"
  expect_ok as op node2 ferry relocate busybox --to node1
}

# A stop that cannot let go says so and leaves the address (and the lease).
t_stop_that_cannot_let_go_keeps_the_guards() {
  # a loop device backed by a file on the fs: the kernel holds the fs, and
  # there is no process that ferry could kill to free it
  expect_ok as op node1 ferry start busybox
  root_on node1 sh -c 'truncate -s 1M /srv/busybox/pin.img && losetup -f --show /srv/busybox/pin.img > /run/x-pin-loop'
  trap 'root_on node1 sh -c "losetup -d \$(cat /run/x-pin-loop); rm -f /run/x-pin-loop"; as op node1 ferry start busybox >/dev/null 2>&1' EXIT
  expect_code 1 as op node1 ferry stop busybox
  contains "/srv/busybox is still busy after"
  ext4_live node1 || fail "ext4 not live, yet a loop device holds it"
  node_has_vip node1 || fail "the address went although the disk is still held"
  [ "$(lease_state node1)" = up ] || fail "the lease went although the disk is still held"
  expect_code 1 as op node2 ferry start busybox
  ! ext4_live node2 || fail "node2 mounted the ext4"
  # rules 5 and 6 hold over the bus too, while the disk is held
  expect_code 1 busctl_op node1 lease_231 Lease Release
  contains "fs#1 is still in use"
  root_on node1 sh -c 'losetup -d $(cat /run/x-pin-loop); rm -f /run/x-pin-loop /srv/busybox/pin.img'
  trap - EXIT
  expect_ok as op node1 ferry stop busybox
  node_is_clean node1
  ! ext4_live node1 || fail "node1 still holds the ext4"
}

t_stop_leaves_no_docker_netns_mount() {
  expect_ok as op node1 ferry start busybox
  expect_ok as op node1 ferry stop busybox
  expect_ok root_on node1 sh -c 'findmnt -rn -o TARGET | grep "^/var/lib/ferry/" || true'
  [ -z "$OUT" ] || fail "mounts left under /var/lib/ferry after stop: $OUT"
}

t_simultaneous_starts_never_both_live() {
  stop_everywhere
  local i wins1=0 wins2=0 none=0
  for i in $(seq 1 20); do
    watch_start
    as op node1 ferry start busybox >/dev/null 2>&1 &
    local p1=$!
    as op node2 ferry start busybox >/dev/null 2>&1 &
    local p2=$!
    wait $p1 $p2 || true
    watch_stop
    if ext4_live node1; then
      wins1=$((wins1 + 1))
      [ "$(lease_state node1)" = up ] || fail "trial $i: node1 runs without the lease"
      as op node2 ferry status busybox --local | grep -q "# held by node1" || fail "trial $i: node2 does not name node1 as holder"
    elif ext4_live node2; then
      wins2=$((wins2 + 1))
      [ "$(lease_state node2)" = up ] || fail "trial $i: node2 runs without the lease"
      as op node1 ferry status busybox --local | grep -q "# held by node2" || fail "trial $i: node1 does not name node2 as holder"
    else
      none=$((none + 1))
    fi
    stop_everywhere
  done
  echo "measured: 20 simultaneous starts: node1 won $wins1, node2 won $wins2, neither $none; never both"
}

t_helper_killed_while_holding_the_lease() {
  expect_ok as op node1 ferry start busybox
  root_on node1 kill -9 "$(helper_pid node1)"
  "$LAB" restart-helper node1
  # the new helper joins the lockspace and re-adopts the orphaned lease
  local i
  for i in $(seq 1 50); do [ "$(lease_state node1)" = up ] && break; sleep 0.2; done
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   up"
  matches "lease#1 +\.\.\.\. up "
  grep -q "re-adopted this node's orphaned lease" /var/tmp/ferry-lab/node1/log/ferry-helper.log \
    || fail "no re-adoption in the helper log"
  expect_code 1 as op node2 ferry start busybox
  contains "held by node1"
  expect_ok as op node1 ferry stop busybox
  contains "release lease"
  expect_ok as op node2 ferry start busybox
  expect_ok as op node2 ferry stop busybox
}

# The node's sanlock daemon dies (a node death, without a watchdog): the
# lease stays node1's until it expires, then node2 may start.
# The holder's sanlock daemon killed (kill -9): node2 is refused until the
# lease expires (68 s) and node1 lets go first, in leaseloss.sh ("sanlock
# kill -9 on the holder lets go first"), so that wait is paid once.

run_test "exclusion: two nodes, lease initialized through ferry"      t_setup_two_nodes_with_a_lease
run_test "exclusion: the holder shows on both nodes"                   t_start_shows_the_holder_on_both_nodes
run_test "exclusion: 1. address lost on the holder"                    t_address_lost_on_the_holder
run_test "exclusion: 2. --rid subset cannot drop the address"          t_rid_subset_cannot_drop_the_address
run_test "exclusion: 3. busctl cannot go around the order"             t_busctl_cannot_go_around_the_order
run_test "exclusion: 4. copies in other mount namespaces are let go"   t_relocate_lets_go_of_copies_in_other_namespaces
run_test "exclusion: a stop that cannot let go keeps the guards"       t_stop_that_cannot_let_go_keeps_the_guards
run_test "exclusion: 9. no docker netns mount left after stop"         t_stop_leaves_no_docker_netns_mount
run_test "exclusion: 20 simultaneous starts, never both live"          t_simultaneous_starts_never_both_live
run_test "exclusion: helper kill -9 while holding the lease"           t_helper_killed_while_holding_the_lease

rm -rf "$X_STATE"
"$LAB" down >/dev/null 2>&1 || true
