# Pacemaker drives the service (issue 9): ocf-tester against the agent, the
# monitor's truth on a half-up service, `crm_resource --move` next to `ferry
# relocate`, and a failover after a power loss, with the kernel watching that
# the ext4 is never live through both nodes' loop devices at once.

LAB_UP_T0=$(date +%s%N)
"$LAB" up 2 --pacemaker || { echo "lab up --pacemaker failed"; FAILED=$((FAILED + 1)); return 0; }
echo "lab up 2 --pacemaker: $((($(date +%s%N) - LAB_UP_T0) / 1000000)) ms"

CONF=/etc/ferry/services/busybox.conf
AGENT=/usr/lib/ocf/resource.d/ferry/service
P_STATE=$(mktemp -d)
# Each node's own loop device on the data disk, read once: the sampler then
# looks at the host's /sys only (every 15 ms).
P_DEV1=$(basename "$(root_on node1 readlink -f /run/ferry-lab/disks/data0)")
P_DEV2=$(basename "$(root_on node2 readlink -f /run/ferry-lab/disks/data0)")

ocf_monitor() { # NODE → exit status of the agent's monitor
  root_on "$1" env OCF_RESKEY_service=busybox OCF_ROOT=/usr/lib/ocf "$AGENT" monitor
}
ocf_rc() { local rc=0; ocf_monitor "$1" >/dev/null 2>&1 || rc=$?; echo "$rc"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# until NODE's monitor says 0; prints the elapsed ms since T0 (ms)
wait_running_on() { # NODE T0 TIMEOUT_S
  local node=$1 t0=$2 deadline=$(($(now_ms) + $3 * 1000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if [ "$(ocf_rc "$node")" = 0 ]; then echo $(($(now_ms) - t0)); return 0; fi
    sleep 0.05
  done
  return 1
}
pcmk_watch_start() {
  local test_pid=$BASHPID
  ( while kill -0 "$test_pid" 2>/dev/null; do
      [ -e "/sys/fs/ext4/$P_DEV1" ] && [ -e "/sys/fs/ext4/$P_DEV2" ] && echo BOTH >>"$P_STATE/both"
      sleep 0.015
    done ) &
  echo $! >"$P_STATE/watch"
}
pcmk_watch_stop() {
  kill "$(cat "$P_STATE/watch")" 2>/dev/null || true
  wait "$(cat "$P_STATE/watch")" 2>/dev/null || true
  if [ -s "$P_STATE/both" ]; then rm -f "$P_STATE/both"; fail "the ext4 was live on both nodes at once"; fi
}
# The last stop and start of svc as the CIB records them: "stop N ms on X,
# start M ms on Y" (exec-time; the downtime is about their sum plus the
# controller's own ~0.1 s).
op_times() {
  local i
  for i in $(seq 1 20); do
    root_on node1 cibadmin -Q --scope status 2>/dev/null | grep -o '<lrm_rsc_op [^>]*operation="\(stop\|start\)"[^>]*' \
      | sed -n 's/.*operation_key="svc_\([a-z]*\)_0".*on_node="\([^"]*\)".*exec-time="\([0-9]*\)".*/\1 \3 ms on \2/p' \
      | sort -u | paste -sd, - >"$P_STATE/ops"
    grep -q stop "$P_STATE/ops" && grep -q start "$P_STATE/ops" && { sed 's/,/, /g' "$P_STATE/ops"; return 0; }
    sleep 0.1
  done
  echo "op times not found"
}
located_on() { root_on node2 crm_resource --locate -r svc 2>/dev/null | sed -n 's/.* is running on: \(node[0-9]*\).*/\1/p' | head -1; }

t_p_setup() {
  root_on node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' $CONF
  root_on node1 cat $CONF | root_on node2 install -m 0644 /dev/stdin $CONF
  expect_ok as op node1 ferry reload
  expect_ok as op node2 ferry reload
  # the fence device is configured by lab up, and started by the cluster a
  # moment later: wait for it (bounded) before anything relies on fencing
  local i
  for i in $(seq 1 60); do
    root_on node1 crm_mon -1 2>/dev/null | grep -q "fence-lab.*Started" && break
    sleep 0.5
  done
  expect_ok root_on node1 crm_mon -1
  contains "Online: [ node1 node2 ]"
  matches "fence-lab.*Started"
  expect_ok root_on node1 crm_attribute --type crm_config --name stonith-enabled --query
  contains "value=true"
}

# Stopped cleanly → 7; up → 0; half up → 1 (address gone by hand; then a
# copy of the mount pinned in another mount namespace, which no stop can
# let go of).
t_p_monitor_truth() {
  expect_code 7 ocf_monitor node1
  expect_code 7 ocf_monitor node2
  expect_ok as op node1 ferry start busybox
  expect_code 0 ocf_monitor node1
  expect_code 7 ocf_monitor node2
  root_on node1 ip addr del "$VIP/24" dev lab0
  expect_code 1 ocf_monitor node1
  contains "partly up here"
  root_on node1 ip addr add "$VIP/24" dev lab0
  expect_code 0 ocf_monitor node1
  # a mount namespace pinned by a bind mount of its nsfs file: no process to
  # kill, the superblock stays, the stop fails and keeps the guards
  # (once in a while unshare's bind of the nsfs file fails with EINVAL: retry)
  root_on node1 sh -c 'mkdir -p /run/p-pin && mount --bind /run/p-pin /run/p-pin && mount --make-private /run/p-pin && touch /run/p-pin/ns
    for i in 1 2 3; do unshare --mount=/run/p-pin/ns --propagation private true && exit 0; sleep 0.2; done; exit 1'
  expect_code 1 as op node1 ferry stop busybox
  expect_code 1 ocf_monitor node1
  contains "partly up here"
  root_on node1 umount /run/p-pin/ns
  root_on node1 umount /run/p-pin
  expect_ok as op node1 ferry stop busybox
  expect_code 7 ocf_monitor node1
  node_is_clean node1
}

# ocf-tester as documented, while Pacemaker does not manage the service.
t_p_ocf_tester() {
  expect_ok root_on node1 ocf-tester -n ferry-busybox -o service=busybox "$AGENT"
  { echo "ocf-tester:"; sed 's/^/  /' <<<"$OUT"; } >>"$P_STATE/summary"
  contains "passed all tests"
  expect_code 7 ocf_monitor node1
}

# ferry relocate's downtime, measured here for the comparison with the move.
# As root: an operator outside haclient cannot read the CIB, and ferry
# refuses to relocate when it cannot tell whether Pacemaker manages the
# service.
t_p_relocate_downtime() {
  expect_ok as op node1 ferry start busybox
  expect_code 2 as op node1 ferry relocate busybox --to node2
  contains "ferry cannot tell whether it manages 'busybox'"
  local t0=$(now_ms)
  expect_ok root_on node1 ferry relocate busybox --to node2
  echo "relocate node1→node2: command $(($(now_ms) - t0)) ms; $(grep -o 'downtime [0-9]* ms' <<<"$OUT")" | tee -a "$P_STATE/summary"
  t0=$(now_ms)
  expect_ok root_on node2 ferry relocate busybox --to node1
  echo "relocate node2→node1: command $(($(now_ms) - t0)) ms; $(grep -o 'downtime [0-9]* ms' <<<"$OUT")" | tee -a "$P_STATE/summary"
  expect_code 0 ocf_monitor node1
}

# Pacemaker adopts the running service (probes: 0 on node1, 7 on node2).
t_p_create_resource() {
  expect_ok root_on node1 crm configure primitive svc ocf:ferry:service params service=busybox \
    op start timeout=150s interval=0 op stop timeout=60s interval=0 \
    op monitor interval=5s timeout=30s meta resource-stickiness=100
  local i
  for i in $(seq 1 100); do [ "$(located_on)" = node1 ] && break; sleep 0.2; done
  [ "$(located_on)" = node1 ] || { root_on node1 crm_mon -1; fail "svc is not running on node1"; }
  expect_ok root_on node1 crm_mon -1
  matches "svc.*Started node1"
  expect_code 0 ocf_monitor node1
}

t_p_relocate_of_managed_is_refused() {
  expect_code 2 root_on node1 ferry relocate busybox --to node2
  contains "managed by Pacemaker as resource 'svc'"
  contains "crm_resource --move"
  expect_code 2 as op node1 ferry relocate busybox --to node2
  contains "crm_resource --move"
  expect_code 0 ocf_monitor node1
}

t_p_move() {
  local t0 ms
  pcmk_watch_start
  t0=$(now_ms)
  expect_ok root_on node1 crm_resource --move -r svc -N node2
  ms=$(wait_running_on node2 "$t0" 60) || fail "svc did not come up on node2"
  echo "crm_resource --move node1→node2: $ms ms until monitor 0 on node2 (polled); $(op_times)" | tee -a "$P_STATE/summary"
  expect_code 7 ocf_monitor node1
  expect_ok root_on node1 crm_resource --clear -r svc
  t0=$(now_ms)
  expect_ok root_on node1 crm_resource --move -r svc -N node1
  ms=$(wait_running_on node1 "$t0" 60) || fail "svc did not come back to node1"
  echo "crm_resource --move node2→node1: $ms ms until monitor 0 on node1 (polled); $(op_times)" | tee -a "$P_STATE/summary"
  expect_ok root_on node1 crm_resource --clear -r svc
  pcmk_watch_stop
  sleep 2
  [ "$(located_on)" = node1 ] || fail "svc left node1 after --clear (stickiness)"
  expect_code 7 ocf_monitor node2
}

t_p_failover() {
  local cid sum t0 ms
  cid=$(container_id node1)
  [ -n "$cid" ] || fail "no container on node1"
  sum=$(root_on node1 sh -c 'head -c 1048576 /dev/urandom >/srv/busybox/check && sync && sha256sum /srv/busybox/check' | cut -d' ' -f1)
  pcmk_watch_start
  t0=$(now_ms)
  "$LAB" crash node1
  ms=$(wait_running_on node2 "$t0" 150) || { root_on node2 crm_mon -1; fail "svc did not fail over to node2 in 150 s"; }
  echo "failover after lab crash node1: $ms ms until monitor 0 on node2" | tee -a "$P_STATE/summary"
  pcmk_watch_stop
  # The fenced holder's lease is taken over at once (issue 13), not after
  # its expiry (8 x io_timeout + 60 s = 68 s here). The bench's figure is a
  # median of about 5 s on a quiet machine; 15 s leaves room for a loaded CI
  # host and still proves the takeover.
  [ "$ms" -le 15000 ] || fail "failover took $ms ms (bound 15000 ms: the lease was not taken over at once)"
  root_on node2 grep -q 'action="io.ferry.lease.takeover".*result="ok"' /var/log/ferry-helper.log \
    || fail "no takeover audit line on node2"
  expect_ok root_on node2 crm_mon -1
  matches "svc.*Started node2"
  expect_ok root_on node2 stonith_admin --history node1
  contains "off"
  [ "$(container_id node2)" = "$cid" ] || fail "container id changed: $cid → $(container_id node2)"
  [ "$(root_on node2 sha256sum /srv/busybox/check | cut -d' ' -f1)" = "$sum" ] || fail "the checksummed file differs"
  {
    echo "failover, node2's pacemaker log (crash at $(date -u -d "@$((t0 / 1000))" +%T)):"
    root_on node2 sh -c 'l=/var/log/pacemaker/pacemaker.log
      for re in "state is now lost" "will be fenced" "Operation .off. .*targeting node1" "was terminated" "Requesting local execution of start operation for svc"; do
        grep -E "$re" $l | tail -n +1 | awk -v t="$0" "substr(\$3,1,8) >= t" | head -1
      done
      grep "Result of start operation for svc on node2" $l | tail -1' "$(date -u -d "@$((t0 / 1000))" +%T)" \
      | cut -c1-200 | sed 's/^/  /'
    echo "  start retries while the lease was still held: $(root_on node2 grep -c 'waits for the lease' /var/log/pacemaker/pacemaker.log || true)"
    echo "  $(root_on node2 grep -o 'free the host lease of node1.*' /var/log/ferry-helper.log | tail -1 | cut -c1-220)"
  } >>"$P_STATE/summary"
}

run_test "pacemaker: two nodes, fencing configured"               t_p_setup
run_test "pacemaker: ocf monitor is 7 / 0 / 1 (stopped, up, half up)" t_p_monitor_truth
run_test "pacemaker: ocf-tester passes"                           t_p_ocf_tester
run_test "pacemaker: ferry relocate downtime (unmanaged)"        t_p_relocate_downtime
run_test "pacemaker: the running service is adopted by Pacemaker" t_p_create_resource
run_test "pacemaker: ferry relocate of a managed service is refused" t_p_relocate_of_managed_is_refused
run_test "pacemaker: crm_resource --move and back, never on both" t_p_move
run_test "pacemaker: failover after a power loss of node1"       t_p_failover
echo "--- pacemaker timings:"
sed 's/^/    /' "$P_STATE/summary" 2>/dev/null || true
rm -rf "$P_STATE"

# Issue 12 item 6: Pacemaker owns what it manages. `ferry start` and `ferry
# stop` of the managed service are refused with the cluster's commands as a
# hint (as relocate is); the service keeps running where Pacemaker put it.
# (After the failover above, svc runs on node2; node1 was powered off.)
t_p_start_stop_of_managed_are_refused() {
  local where
  where=$(located_on)
  [ -n "$where" ] || fail "svc is not running anywhere"
  expect_code 2 root_on "$where" ferry stop busybox
  contains "managed by Pacemaker as resource 'svc'"
  contains "crm_resource --move -r svc"
  contains "crm_resource --ban -r svc"
  contains "--force"
  expect_code 0 ocf_monitor "$where"
  expect_code 2 root_on "$where" ferry start busybox
  contains "managed by Pacemaker as resource 'svc'"
  expect_code 0 ocf_monitor "$where"
  node_has_vip "$where" || fail "the refused stop touched the address"
  root_on "$where" crm_mon -1 | grep -q "svc.*Started $where" || fail "Pacemaker no longer sees svc started on $where"
}
run_test "pacemaker: ferry start/stop of a managed service are refused" t_p_start_stop_of_managed_are_refused
