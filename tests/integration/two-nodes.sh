# The tutorial end to end on TWO nodes (plus a third for the "does not
# answer" case), as `op`: add node2, see sync down, push, relocate there and
# back; then the failures an operator must be protected from.

"$LAB" up 3 || { echo "lab up failed"; FAILED=$((FAILED + 1)); return 0; }

CONF=/etc/ferry/services/busybox.conf

# A schedule window that does not contain the current time, whatever the
# hour CI runs at: two to three hours from now.
outside_window() {
  local h=$(( (10#$(date +%H) + 2) % 24 ))
  printf '%02d:00-%02d:59' "$h" "$(( (h + 1) % 24 ))"
}

t_start_on_node1_alone() {
  root_on node1 sed -i "s/^schedule = .*/schedule = $(outside_window)/" $CONF
  expect_ok as op node1 ferry reload
  expect_ok as op node1 ferry start busybox
  expect_ok as op node1 ferry status busybox
  contains "overall                   up"
  contains "|- sync                   n/a"
}

t_add_node2_sync_down() {
  root_on node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' $CONF
  expect_ok as op node1 ferry reload
  expect_ok as op node1 ferry status busybox
  contains "overall                   warn"
  contains "|- avail                  up"
  contains "|- sync                   down"
  matches "\|  '- sync#i0 +\.\.\.\. down +sync svc config to nodes"
  contains "# node2 need update"
}

t_sync_outside_window_is_skipped() {
  expect_ok as op node1 ferry sync busybox
  contains "skip sync: not in allowed period (['"
  expect_ok as op node1 ferry status busybox
  contains "# node2 need update"
}

t_sync_force_pushes() {
  expect_ok as op node1 ferry sync busybox --force
  contains "exec 'ferry receive-config busybox' on node node2"
  [ "$(root_on node1 sha256sum $CONF | cut -d' ' -f1)" = "$(root_on node2 sha256sum $CONF | cut -d' ' -f1)" ] \
    || fail "node2's config differs after the push"
  expect_ok as op node1 ferry status busybox
  contains "overall                   up"
  contains "|- sync                   up"
  lacks "need update"
  expect_ok as op node2 ferry status busybox
  contains "overall                   down"
  contains "|- sync                   up"
  contains "# docker daemon is not running"
  # the config went through node2's helper: root-owned, 0644
  [ "$(root_on node2 stat -c '%U %a' $CONF)" = "root 644" ] || fail "installed config owner/mode"
}

t_guest_cannot_push_config() {
  expect_code 3 as svcop node1 sh -c 'echo "[DEFAULT]" | ferry receive-config evil'
  contains "io.ferry.config.install"
  root_on node1 test ! -e /etc/ferry/services/evil.conf || fail "evil.conf was installed"
  # a broken config is refused before it replaces anything
  expect_code 1 as op node2 sh -c 'printf "[DEFAULT]\nnodes = node1 node2\nbogus = 1\n" | ferry receive-config busybox'
  contains "bogus: unknown key"
  expect_ok as op node2 ferry status busybox --local
  # nor where the service runs: the helper would lose track of what it started
  expect_code 1 as op node1 sh -c 'ferry print config busybox | sed "s/^app = .*/app = CHANGED/" | ferry receive-config busybox'
  contains "service 'busybox' is not stopped on node1"
  root_on node1 grep -q "^app = FERRYLAB" $CONF || fail "node1's config was replaced"
}

t_start_on_passive_node_is_refused() {
  expect_code 1 as op node2 ferry start busybox
  # Rule 0 of the guard: the address is not even probed while another node
  # holds the lease (the wire probe is the guard of lease-less services).
  contains "lease ferry-busybox@/run/ferry-lab/disks/lease0 is held by node1 (host_id 1)"
  ! node_has_mount node2 || fail "node2 mounted the shared fs"
  ! node_runs_dockerd node2 || fail "node2 started dockerd"
  ! node_has_vip node2 || fail "node2 kept the address"
  # nor by going to the disks directly over the bus
  expect_code 1 as op node2 dbus-send --system --print-reply --dest=io.ferry.Helper1 /io/ferry/Helper1/service/busybox/vg_231 io.ferry.Helper1.Vg.Tag
  contains "Error io.ferry.Helper1.Error.OutOfOrder: vg#1: refusing to tag on node2 for service 'busybox': ip#1 (203.0.113.25) is not up here"
  expect_code 1 as op node2 dbus-send --system --print-reply --dest=io.ferry.Helper1 /io/ferry/Helper1/service/busybox/fs_231 io.ferry.Helper1.Fs.Mount
  contains "ip#1 (203.0.113.25) is not up here"
  expect_code 1 as op node2 dbus-send --system --print-reply --dest=io.ferry.Helper1 /io/ferry/Helper1/service/busybox/lease_231 io.ferry.Helper1.Lease.Acquire
  contains "ip#1 (203.0.113.25) is not up here"
  ! node_has_mount node2 || fail "node2 mounted the shared fs"
  root_on node1 vgs --noheadings -o vg_tags vgbusybox | grep -q node1 || fail "node1 lost its vg tag"
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   up"
}

t_cluster_status() {
  expect_ok as op node1 ferry status busybox --all-nodes
  matches '^node1 +up +container#1 [0-9a-f]{12}@local/busybox:date'
  matches '^node2 +down '
}

# Tests run in subshells: what one learns for the next goes in a file.
STATE=$(mktemp -d)
t_relocate_to_node2() {
  local ID SUM
  ID=$(container_id node1)
  echo "$ID" > "$STATE/id"
  [ -n "$ID" ] || fail "no container id on node1"
  root_on node1 sh -c 'head -c 1048576 /dev/urandom > /srv/busybox/payload'
  SUM=$(root_on node1 sha256sum /srv/busybox/payload | cut -d' ' -f1)
  expect_ok as op node1 ferry relocate busybox --to node2
  contains "stop on node1"
  contains "start on node2"
  matches 'relocated to node2: stop [0-9]+ ms, check down [0-9]+ ms, start [0-9]+ ms; downtime [0-9]+ ms'
  node_is_clean node1
  [ "$(container_id node2)" = "$ID" ] || fail "container id on node2 is '$(container_id node2)', was '$ID'"
  expect_ok as op node2 ferry status busybox
  contains "overall                   up"
  contains "|- sync                   up"
  expect_ok as op node1 ferry status busybox
  contains "overall                   down"
  [ "$(root_on node2 sha256sum /srv/busybox/payload | cut -d' ' -f1)" = "$SUM" ] || fail "data changed in the move"
  sleep 1.5
  local last
  last=$(as op node2 ferry docker busybox -- logs --tail 1 busybox.container.1)
  matches '[0-9]{2}:[0-9]{2}:[0-9]{2}' "$last"
  # dates keep coming on node2
  local t1 t2
  t1=$(as op node2 ferry docker busybox -- logs busybox.container.1 | wc -l)
  sleep 2.2
  t2=$(as op node2 ferry docker busybox -- logs busybox.container.1 | wc -l)
  [ "$t2" -gt "$t1" ] || fail "no new dates on node2 ($t1 → $t2 lines)"
}

saved_id() { cat "$STATE/id"; }
t_relocate_back() {
  local ID; ID=$(saved_id)
  expect_ok as op node2 ferry switch busybox --to node1
  [ "$(container_id node1)" = "$ID" ] || fail "container id changed on the way back"
  node_is_clean node2
}

# What a relocation runs on the target before it stops the source: `ferry
# start --wait-go` connects, takes the lock there and says so, then waits.
# Meanwhile nobody else acts on the service there; without a go (the source's
# stop failed, or the relocating node is gone) it starts nothing.
t_target_start_waits_for_the_go() {
  local out=$STATE/wait-go.out
  as op node2 sh -c 'sleep 3 | ferry start busybox --wait-go' >"$out" 2>&1 &
  local waiter=$!
  for _ in $(seq 50); do grep -q "^ready: connected and locked" "$out" && break; sleep 0.1; done
  grep -q "^ready: connected and locked" "$out" || { cat "$out"; fail "no ready line"; }
  expect_code 1 as svcop node2 ferry start busybox
  contains "locked by uid 2101"
  wait $waiter && fail "a start without a go exited 0"
  grep -q "start of 'busybox' on node2 called off: no go from the relocating node" "$out" \
    || { cat "$out"; fail "no called-off message"; }
  node_is_clean node2
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   up"
}

t_relocate_refuses_unknown_and_unreachable_targets() {
  expect_code 2 as op node1 ferry relocate busybox --to node9
  contains "node9 is not one of the nodes of 'busybox' (node1 node2)"
  "$LAB" stop-helper node2
  expect_code 4 as op node1 ferry relocate busybox --to node2
  contains "node2"
  contains "ferry-helper is not running"
  "$LAB" restart-helper node2
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   up"
}

t_relocate_refuses_a_target_with_a_stale_mount() {
  root_on node2 sh -c 'mkdir -p /srv/busybox && mount -t tmpfs stale /srv/busybox'
  trap "root_on node2 umount /srv/busybox" EXIT
  expect_code 1 as op node1 ferry relocate busybox --to node2
  contains "'busybox' is warn on node2, not down: refusing"
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   up"
}

t_relocate_falls_back_when_target_start_fails() {
  local ID; ID=$(saved_id)
  # node2's private daemon cannot start: its containerd is broken (a bind
  # mount inside node2's own mount namespace)
  root_on node2 mount --bind /bin/false /usr/bin/containerd
  trap "root_on node2 umount /usr/bin/containerd" EXIT
  expect_code 1 as op node1 ferry relocate busybox --to node2
  contains "start on node2 failed"
  contains "stopping there and starting here again"
  contains "it runs on node1 again"
  expect_ok as op node1 ferry status busybox --local
  contains "overall                   up"
  [ "$(container_id node1)" = "$ID" ] || fail "container id changed"
  node_is_clean node2
  root_on node2 vgs --noheadings -o vg_tags vgbusybox | grep -q node2 && fail "vg left tagged by node2"
  return 0
}

t_unreachable_node_is_bounded() {
  root_on node1 sh -c 'cp /etc/ferry/ferry.conf /etc/ferry/ferry.conf.lab && sed -i "/^\[node\]/a ssh_connect_timeout = 2" /etc/ferry/ferry.conf'
  trap 'root_on node2 ip link set lab0 up; root_on node1 mv /etc/ferry/ferry.conf.lab /etc/ferry/ferry.conf' EXIT
  root_on node2 ip link set lab0 down
  local t0=$(date +%s)
  expect_ok as op node1 ferry status busybox --all-nodes
  matches '^node2 +\? +node2 did not answer'
  [ $(( $(date +%s) - t0 )) -le 6 ] || fail "status took $(( $(date +%s) - t0 )) s with node2 down"
  # Back up, node2 takes the service: the link flap must not leave node2's
  # ARP probe reading stale announcements as answers.
  root_on node2 ip link set lab0 up
  root_on node1 mv /etc/ferry/ferry.conf.lab /etc/ferry/ferry.conf
  trap - EXIT
  expect_ok as op node1 ferry relocate busybox --to node2
  expect_ok as op node2 ferry relocate busybox --to node1
}

t_sudo_mode_relocation() {
  local ID; ID=$(saved_id)
  trap 'for n in node1 node2; do root_on $n mv /etc/ferry/ferry.conf.lab /etc/ferry/ferry.conf; root_on $n rm -f /etc/sudoers.d/ferry; done' EXIT
  for n in node1 node2; do
    root_on $n sh -c 'groupadd -g 2003 ferry-sudo && usermod -aG ferry-sudo sudoop'
    root_on $n install -m 0440 /dev/stdin /etc/sudoers.d/ferry < "$REPO/sudo/ferry"
    root_on $n sh -c 'cp /etc/ferry/ferry.conf /etc/ferry/ferry.conf.lab && sed -i "/^\[node\]/a remote = sudo" /etc/ferry/ferry.conf'
  done
  # polkit alone refuses sudoop …
  expect_code 3 as sudoop node1 ferry stop busybox
  # … and sudo grants exactly start and stop
  expect_code 1 as sudoop node1 sudo -n /usr/local/bin/ferry reload
  expect_ok as sudoop node1 ferry relocate busybox --to node2
  matches 'downtime [0-9]+ ms'
  [ "$(container_id node2)" = "$ID" ] || fail "container id changed"
  expect_ok as sudoop node2 ferry relocate busybox --to node1
  [ "$(container_id node1)" = "$ID" ] || fail "container id changed"
}

REPO=$(cd "$HERE/../.." && pwd)
run_test "two-nodes: start on node1 alone"                      t_start_on_node1_alone
run_test "two-nodes: add node2, sync down"                      t_add_node2_sync_down
run_test "two-nodes: sync outside the window is skipped"        t_sync_outside_window_is_skipped
run_test "two-nodes: sync --force pushes the config"            t_sync_force_pushes
run_test "two-nodes: config install is guarded and validated"   t_guest_cannot_push_config
run_test "two-nodes: start on the passive node is refused"      t_start_on_passive_node_is_refused
run_test "two-nodes: status --all-nodes"                        t_cluster_status
run_test "two-nodes: relocate to node2"                         t_relocate_to_node2
run_test "two-nodes: relocate back (switch)"                    t_relocate_back
run_test "two-nodes: the target's start waits for the go"      t_target_start_waits_for_the_go
run_test "two-nodes: relocate refuses bad targets"              t_relocate_refuses_unknown_and_unreachable_targets
run_test "two-nodes: relocate refuses a target with a stale mount" t_relocate_refuses_a_target_with_a_stale_mount
run_test "two-nodes: failed start on target falls back"         t_relocate_falls_back_when_target_start_fails
run_test "two-nodes: an unreachable node is bounded"            t_unreachable_node_is_bounded
run_test "two-nodes: sudo mode relocation"                      t_sudo_mode_relocation

rm -rf "$STATE"
"$LAB" down >/dev/null 2>&1 || true
