# Status from what the helper knows (issue 14): each resource changed
# behind ferry's back, then the status read at once, must never say up.
# The status is warmed first, so that what the helper keeps in memory (the
# VG's tags, the container's last look) is what gets tested. And the
# parallel start's probe: node2 (which runs no ferry service) holds the
# address, and node1's start must roll everything back.

"$LAB" up 2 || { echo "lab up failed"; FAILED=$((FAILED + 1)); return 0; }

SOCK=/var/lib/ferry/busybox/docker.sock

# the state word of RID in `ferry status --local` as op
st() { as op node1 ferry status busybox --local | sed -n "s/.*- $1 *\.\.\.\. \([a-z\/]*\) .*/\1/p"; }
warm() { as op node1 ferry status busybox --local >/dev/null; as op node1 ferry status busybox --local >/dev/null; }
restart() { as op node1 ferry start busybox || true; }
# Break RID behind ferry's back with CMD… (as root on node1) and read its
# status at once: not up. Then a start must bring it up again.
broken_then_restarted() { # RID WHAT-WAS-DONE CMD…
  local rid=$1 what=$2 s; shift 2
  warm
  root_on node1 "$@" >/dev/null
  s=$(st "$rid")
  restart
  [ "$s" != up ] || fail "$rid said up right after $what"
  [ "$(st "$rid")" = up ] || fail "$rid not up after the start"
}

t_start_and_warm() {
  expect_ok as op node1 ferry start busybox
  warm
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   up"
  for rid in ip#1 lease#1 vg#1 fs#1 fs#2 container#1; do
    [ "$(st $rid)" = up ] || fail "$rid is not up after the start (status reads '$(st $rid)')"
  done
}

t_address_removed_behind_ferrys_back() {
  broken_then_restarted ip#1 "its address was removed" ip addr del $VIP/24 dev lab0
}

t_filesystem_unmounted_behind_ferrys_back() {
  broken_then_restarted fs#2 "it was unmounted" umount /srv/busybox/appdata
}

t_vg_untagged_behind_ferrys_back() {
  warm
  root_on node1 vgchange -q --deltag node1 vgbusybox >/dev/null
  local s; s=$(st vg#1)
  root_on node1 vgchange -q --addtag node1 vgbusybox >/dev/null
  [ "$s" != up ] || fail "vg#1 said up right after its tag was removed"
  [ "$(st vg#1)" = up ] || fail "vg#1 not up once tagged again"
}

t_container_stopped_behind_ferrys_back() {
  broken_then_restarted container#1 "it was stopped" \
    env DOCKER_CONFIG=/var/lib/ferry/busybox/docker-config docker -H unix://$SOCK stop -t 1 busybox.container.1
}

t_refresh_and_status_times() {
  expect_ok as op node1 ferry status busybox --local --refresh
  contains "overall                   up"
  local loop='for i in $(seq 1 20); do t0=${EPOCHREALTIME//[.,]/}; "$@" >/dev/null || exit 1; echo $(( ${EPOCHREALTIME//[.,]/} - t0 )); done'
  local cli bus
  cli=$(as op node1 bash -c "$loop" x ferry status busybox --local | sort -n | sed -n 10p)
  bus=$(as op node1 bash -c "$loop" x busctl --system call io.ferry.Helper1 /io/ferry/Helper1/service/busybox io.ferry.Helper1.Service Status | sort -n | sed -n 10p)
  echo "measured: ferry status --local p50 $((cli / 1000)).$(((cli % 1000) / 100)) ms; busctl Service.Status p50 $((bus / 1000)).$(((bus % 1000) / 100)) ms (20 calls each, as op, whole processes)"
}

# The parallel start took the lease and brought the storage up while the
# probe ran: a probe that finds the address in use undoes all of it.
t_address_in_use_rolls_the_parallel_start_back() {
  expect_ok as op node1 ferry stop busybox
  root_on node2 ip addr add $VIP/24 dev lab0
  trap 'root_on node2 ip addr del $VIP/24 dev lab0' EXIT
  expect_code 1 as op node1 ferry start busybox
  contains "acquire lease"
  contains "is in use on the wire"
  contains "rolling back what this start did"
  contains "release lease"
  node_is_clean node1
  local dev; dev=$(root_on node1 readlink -f /run/ferry-lab/disks/data0)
  [ ! -e "/sys/fs/ext4/$(basename "$dev")" ] || fail "node1's ext4 is still live"
  [ "$(st lease#1)" = down ] || fail "the lease was not released: $(st lease#1)"
  ! root_on node1 vgs --noheadings -o vg_tags vgbusybox | grep -q node1 || fail "vgbusybox still tagged node1"
  root_on node2 ip addr del $VIP/24 dev lab0
  trap - EXIT
  expect_ok as op node1 ferry start busybox
}

# Last: it leaves the daemon dead (the lab goes down after the suite).
t_daemon_killed_behind_ferrys_back() {
  warm
  root_on node1 sh -c 'kill -9 $(cat /var/lib/ferry/busybox/docker.pid)'
  sleep 0.05
  local s; s=$(st container#1)
  [ "$s" != up ] || fail "container#1 said up right after its docker daemon was killed"
}

run_test "status: start, status warmed"                          t_start_and_warm
run_test "status: address removed behind ferry's back"           t_address_removed_behind_ferrys_back
run_test "status: fs unmounted behind ferry's back"              t_filesystem_unmounted_behind_ferrys_back
run_test "status: vg untagged behind ferry's back"               t_vg_untagged_behind_ferrys_back
run_test "status: container stopped behind ferry's back"         t_container_stopped_behind_ferrys_back
run_test "status: --refresh, and status p50"                     t_refresh_and_status_times
run_test "status: address in use rolls the parallel start back"  t_address_in_use_rolls_the_parallel_start_back
run_test "status: daemon killed behind ferry's back"             t_daemon_killed_behind_ferrys_back
