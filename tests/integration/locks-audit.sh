# The service lock held by the helper, and the audit log's integrity:
# what adversarial testing found (a world-writable lock directory, a flock
# anyone could hold, forged and oversized audit lines, unaudited refusals,
# sudo callers logged as plain uid 0, a --waitlock that panics).
# Users (tests/lab/lab): op ∈ ferry-operators, svcop ∈ ferry-svc-busybox,
# guest (no rights), sudoop (rights through sudo only).

"$LAB" up 2 || { echo "lab up failed"; FAILED=$((FAILED + 1)); return 0; }

SVC_PATH=/io/ferry/Helper1/service/busybox


t_planted_lock_symlink_is_harmless() {
  local made_by_helper=no
  root_on node1 test ! -e /run/ferry/locks || made_by_helper=yes
  # ferry opens no lock file at all: even a directory left by an old
  # version, with a symlink planted by a user without rights, is never used …
  root_on node1 sh -c 'mkdir -p /run/ferry/locks && chmod 1777 /run/ferry/locks'
  trap 'root_on node1 rm -rf /run/ferry/locks /etc/ferry-planted' EXIT
  as guest node1 ln -s /etc/ferry-planted /run/ferry/locks/busybox.lock
  expect_ok root_on node1 ferry stop busybox
  expect_ok as op node1 ferry stop busybox
  root_on node1 test ! -e /etc/ferry-planted || fail "root created /etc/ferry-planted through the planted lock"
  # … and the helper no longer makes a world-writable lock directory.
  [ "$made_by_helper" = no ] || fail "the helper created /run/ferry/locks"
}

t_guest_cannot_lock() {
  expect_code 1 as guest node1 busctl --system call io.ferry.Helper1 $SVC_PATH io.ferry.Helper1.Service Lock u 0
  contains "io.ferry.service.lock"
  contains "not authorized"
  expect_code 0 hold_lock guest /tmp/guest-hold
  contains "error io.ferry.Helper1.Error.NotAuthorized"
  # nothing held: op acts at once
  expect_ok as op node1 ferry stop busybox
}

t_lock_holder_blocks_others_until_killed() {
  local pid
  expect_ok hold_lock op /tmp/op-hold
  matches '^locked [0-9]+$'
  pid=$(awk '{print $2}' <<<"$OUT")
  trap "root_on node1 kill -9 $pid 2>/dev/null || true" EXIT
  # another operator waits, then fails naming the holder
  local t0=$(date +%s%N)
  expect_code 1 as svcop node1 ferry start busybox --waitlock 1
  [ $((($(date +%s%N) - t0) / 1000000)) -ge 900 ] || fail "ferry did not wait for the lock"
  contains "holds the lock of service 'busybox' on node1"
  contains "locked by uid 2101"
  contains "pid $pid python3"
  matches 'since 20[0-9-]+ [0-9:]+ UTC'
  node_is_clean node1
  # a plain busctl caller cannot act in the middle of someone's action, root included
  expect_code 1 as svcop node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 $SVC_PATH/ip_231 io.ferry.Helper1.Ip.Add
  contains "Error io.ferry.Helper1.Error.Locked: service 'busybox' on node1 is locked by uid 2101"
  expect_code 1 root_on node1 ferry start busybox
  contains "locked by uid 2101"
  node_is_clean node1
  # Unlock by another name is refused
  expect_code 1 as op node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 $SVC_PATH io.ferry.Helper1.Service.Unlock
  contains "Error io.ferry.Helper1.Error.Locked"
  # a holder killed -9 leaves no lock behind; a waiting start goes ahead
  ( sleep 1; root_on node1 kill -9 "$pid" ) &
  expect_ok as svcop node1 ferry start busybox --waitlock 20
  contains "start done in"
  wait
  expect_ok as op node1 ferry stop busybox
  node_is_clean node1
}

t_a_running_action_holds_the_lock_throughout() {
  # While op's start runs, another operator's plain busctl call on the
  # service is refused: the lock is held across the whole action.
  as op node1 ferry start busybox >/dev/null 2>&1 &
  local starter=$! i seen=no
  for i in $(seq 100); do
    OUT=$(as svcop node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 $SVC_PATH/ip_231 io.ferry.Helper1.Ip.Announce 2>&1 || true)
    if grep -qF "Error io.ferry.Helper1.Error.Locked" <<<"$OUT"; then seen=yes; break; fi
    sleep 0.01
  done
  wait $starter || fail "op's start failed"
  [ $seen = yes ] || fail "svcop's call was never refused during op's start"
  contains "locked by uid 2101"
  # once op's ferry has exited, the lock is free again
  expect_ok as svcop node1 ferry stop busybox
  node_is_clean node1
}

t_forged_and_oversized_names_stay_one_bounded_line() {
  local m forged big
  m=$(log_size)
  forged=$'evil\n2026-11-26T00:00:00.000000Z  INFO audit: uid=0 action="io.ferry.config.install" service="FORGED" result="ok"'
  expect_code 1 as guest node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 /io/ferry/Helper1 io.ferry.Helper1.Manager.InstallConfig string:"$forged" string:x
  contains "Error io.ferry.Helper1.Error.InvalidArgument"
  expect_code 1 as op node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 /io/ferry/Helper1 io.ferry.Helper1.Manager.InstallConfig string:"$forged" string:x
  OUT=$(log_since "$m")
  printf '%s\n' "$OUT"
  ! grep -q '^2026-11-26T00:00:00' <<<"$OUT" || fail "a forged audit line was written"
  [ "$(grep -c FORGED <<<"$OUT")" = 2 ] || fail "expected exactly one record per refused call"
  grep FORGED <<<"$OUT" | grep -q 'result="denied"' || fail "not recorded as denied"
  contains 'evil\n2026'
  # 120 KiB of name: one bounded record, not three copies
  m=$(log_size)
  big=$(head -c 122880 /dev/zero | tr '\0' a)
  expect_code 1 as guest node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 /io/ferry/Helper1 io.ferry.Helper1.Manager.InstallConfig string:"$big" string:x
  local grew=$(( $(log_size) - m ))
  OUT=$(log_since "$m")
  [ "$grew" -lt 4096 ] || fail "the log grew by $grew bytes for one refused call"
  [ "$(grep -c 'io.ferry.config.install' <<<"$OUT")" = 1 ] || fail "expected one record"
  contains "(122880 bytes)"
}

t_docker_refusals_are_audited() {
  local m
  m=$(log_size)
  expect_code 2 as op node1 ferry docker busybox -- run --privileged local/busybox:date
  contains "not allowed"
  expect_code 2 as op node1 ferry docker busybox -- load -i /etc/shadow
  contains "may not open files"
  OUT=$(log_since "$m")
  printf '%s\n' "$OUT"
  grep 'io.ferry.container.docker' <<<"$OUT" | grep '"run"' | grep -q 'result="denied"' \
    || fail "the refused docker run left no denied record"
  grep 'io.ferry.container.docker' <<<"$OUT" | grep '"load"' | grep -q 'result="denied"' \
    || fail "the refused docker load -i was not recorded as denied"
  lacks 'result="allowed"'
  contains 'uid=2101'
}

t_sudo_callers_are_named() {
  local m
  trap 'root_on node1 rm -f /etc/sudoers.d/ferry' EXIT
  root_on node1 sh -c 'getent group ferry-sudo >/dev/null || groupadd -g 2003 ferry-sudo; usermod -aG ferry-sudo sudoop'
  root_on node1 install -m 0440 /dev/stdin /etc/sudoers.d/ferry < "$REPO/sudo/ferry"
  m=$(log_size)
  expect_ok as sudoop node1 sudo -n /usr/local/bin/ferry stop busybox
  OUT=$(log_since "$m")
  printf '%s\n' "$OUT"
  matches 'uid=0 sudo_uid="2104" sudo_user="sudoop".*action="io.ferry.ip.remove"'
  contains 'action="io.ferry.service.lock"'
}

t_waitlock_out_of_range_is_a_usage_error() {
  expect_code 2 as op node1 ferry start busybox --waitlock 18446744073709551615
  contains "--waitlock 18446744073709551615: at most"
  lacks "panicked"
  expect_code 2 as op node1 ferry relocate busybox --to node2 --waitlock 5000000
  lacks "panicked"
  node_is_clean node1
}

t_relocation_holds_the_source_lock() {
  root_on node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' /etc/ferry/services/busybox.conf
  expect_ok as op node1 ferry reload
  expect_ok as op node1 ferry sync busybox --force
  expect_ok as op node1 ferry start busybox
  # In ssh (polkit) mode the relocating process holds node1's lock through
  # its own connection from the first check to the end.
  as op node1 ferry relocate busybox --to node2 >/tmp/locks-audit-relocate.out 2>&1 &
  local relocator=$! i seen=no
  for i in $(seq 200); do
    OUT=$(as svcop node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 $SVC_PATH/ip_231 io.ferry.Helper1.Ip.Announce 2>&1 || true)
    if grep -qF "Error io.ferry.Helper1.Error.Locked" <<<"$OUT"; then seen=yes; break; fi
    sleep 0.01
  done
  wait $relocator || { cat /tmp/locks-audit-relocate.out; fail "relocation failed"; }
  [ $seen = yes ] || fail "svcop's call on node1 was never refused during the relocation"
  node_has_vip node2 || fail "not relocated"
  expect_ok as op node2 ferry relocate busybox --to node1
  node_is_clean node2
}

REPO=$(cd "$HERE/../.." && pwd)
run_test "locks-audit: a planted lock symlink is harmless"        t_planted_lock_symlink_is_harmless
run_test "locks-audit: guest cannot lock"                          t_guest_cannot_lock
run_test "locks-audit: a holder blocks others until killed -9"    t_lock_holder_blocks_others_until_killed
run_test "locks-audit: a running action holds the lock throughout" t_a_running_action_holds_the_lock_throughout
run_test "locks-audit: forged/oversized names: one bounded line"  t_forged_and_oversized_names_stay_one_bounded_line
run_test "locks-audit: docker refusals are audited"               t_docker_refusals_are_audited
run_test "locks-audit: sudo callers are named in the audit"       t_sudo_callers_are_named
run_test "locks-audit: --waitlock out of range"                    t_waitlock_out_of_range_is_a_usage_error
run_test "locks-audit: relocation holds the source's lock"        t_relocation_holds_the_source_lock

"$LAB" down >/dev/null 2>&1 || true
