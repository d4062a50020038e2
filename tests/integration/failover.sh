# Taking a fenced holder's lease at once, and only then (issue 13): three
# nodes under Corosync + Pacemaker with lab fencing; the service itself is
# started by hand (or by the OCF agent run by hand), so that each test
# decides when fencing happens. Every verdict about the disk is the
# kernel's: a node holds the filesystem while /sys/fs/ext4/<its own loop
# device> exists. A sampler checks every 15 ms, through every test, that no
# two nodes have it live at once.

"$LAB" up 3 --pacemaker || { echo "lab up 3 --pacemaker failed"; FAILED=$((FAILED + 1)); return 0; }

CONF=/etc/ferry/services/busybox.conf
AGENT=/usr/lib/ocf/resource.d/ferry/service
F_STATE=$(mktemp -d)
F_DEV=()
for k in 1 2 3; do F_DEV[$k]=$(basename "$(root_on node$k readlink -f /run/ferry-lab/disks/data0)"); done

ext4_on() { [ -e "/sys/fs/ext4/${F_DEV[${1#node}]}" ]; } # NODE
live_count() { local n=0 k; for k in 1 2 3; do [ -e "/sys/fs/ext4/${F_DEV[$k]}" ] && n=$((n + 1)); done; echo $n; }
f_watch_start() {
  local test_pid=$BASHPID
  ( while kill -0 "$test_pid" 2>/dev/null; do
      [ "$(live_count)" -gt 1 ] && echo "BOTH $(date +%T.%N)" >>"$F_STATE/both"
      sleep 0.015
    done ) &
  echo $! >"$F_STATE/watch"
}
f_watch_stop() {
  kill "$(cat "$F_STATE/watch")" 2>/dev/null || true
  wait "$(cat "$F_STATE/watch")" 2>/dev/null || true
  if [ -s "$F_STATE/both" ]; then cat "$F_STATE/both"; rm -f "$F_STATE/both"; fail "the ext4 was live on two nodes at once"; fi
}
ocf() { # NODE ACTION
  root_on "$1" env OCF_RESKEY_service=busybox OCF_ROOT=/usr/lib/ocf OCF_RESKEY_CRM_meta_timeout=60000 "$AGENT" "$2"
}
takeovers() { # NODE → how many takeover audit lines its helper wrote
  root_on "$1" grep -c 'io.ferry.lease.takeover' /var/log/ferry-helper.log || true
}
fence_from() { # FENCER NODE: ask the cluster to power NODE off, wait for the answer
  root_on "$1" stonith_admin --fence "$2" --timeout 30
}
# `sanlock direct dump` of the lockspace: host HOST_ID's delta lease, field
# N (4 timestamp, 6 generation), as a number.
host_field() { awk -v id="$1" -v n="$2" '$1 + 0 < 1048576 && $5 + 0 == id { print $n + 0; exit }'; } # HOST_ID N
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# A start refused for the whole of SECONDS, and the ext4 never live there.
refused_for() { # NODE SECONDS
  local node=$1 until=$(($(now_ms) + $2 * 1000)) n=0
  while [ "$(now_ms)" -lt "$until" ]; do
    expect_code 1 as op "$node" ferry start busybox >/dev/null
    contains "LeaseHeld"
    ext4_on "$node" && fail "the ext4 is live on $node"
    n=$((n + 1))
    sleep 1
  done
  echo "measured: $node's start refused $n times in $2 s"
}

t_f_setup() {
  root_on node1 sed -i 's/^nodes = node1$/nodes = node1 node2 node3/' $CONF
  for k in 2 3; do root_on node1 cat $CONF | root_on node$k install -m 0644 /dev/stdin $CONF; done
  for k in 1 2 3; do expect_ok as op node$k ferry reload; done
  local i
  for i in $(seq 1 60); do
    root_on node1 crm_mon -1 2>/dev/null | grep -q "fence-lab.*Started" && break
    sleep 0.5
  done
  expect_ok root_on node1 crm_mon -1
  contains "Online: [ node1 node2 node3 ]"
  matches "fence-lab.*Started"
}

# The OCF start returns 0 only once the monitor says 0 and `ferry status`
# says up, every time (Pacemaker runs its first monitor right after start).
t_f_ocf_start_then_monitor() {
  local i st
  for i in 1 2 3; do
    expect_ok ocf node1 start
    expect_ok ocf node1 monitor
    st=$(as op node1 ferry status busybox --local)
    grep -qE '^\|- avail +up' <<<"$st" || fail "start returned 0, but ferry status says:
$st"
    grep -qE '^overall +up' <<<"$st" || fail "start returned 0, but ferry status says:
$st"
    expect_ok ocf node1 stop
    expect_code 7 ocf node1 monitor
  done
}

# A "successful" fence that did not happen (the lab switch lies) is older
# than the renewals the holder goes on writing: it does not count.
t_f_fence_older_than_renewal() {
  expect_ok as op node1 ferry start busybox
  f_watch_start
  expect_ok "$LAB" fence-mode lie
  expect_ok fence_from node2 node1
  # the holder renews every 2 x io_timeout (2 s): let it renew after the fence
  sleep 4
  expect_ok root_on node2 stonith_admin --history node1 --verbose --output-as=xml
  contains 'status="success"'
  local before
  before=$(takeovers node2)
  refused_for node2 5
  [ "$(takeovers node2)" = "$before" ] || fail "node2 took over a lease whose holder renewed after the fence"
  # refused for either reason: node1 renewed after the fence, or since
  # node2's daemon last looked
  root_on node2 grep -qE "completed before its last renewal seen here|renewed since this node last looked|cannot tell which came first" \
    /var/log/ferry-helper.log || fail "node2's helper did not say why it did not take over"
  ext4_on node1 || fail "the holder lost its ext4"
  f_watch_stop
  expect_ok "$LAB" fence-mode normal
}

# node1 powered off by the cluster; node2 and node3 start at the same
# moment: one wins (at once, not after the 68 s expiry), the other is
# refused, and the container and data are the ones node1 had.
t_f_race_after_fence() {
  local cid sum t0 r2 r3
  cid=$(container_id node1)
  [ -n "$cid" ] || fail "no container on node1"
  sum=$(root_on node1 sh -c 'head -c 1048576 /dev/urandom >/srv/busybox/check && sync && sha256sum /srv/busybox/check' | cut -d' ' -f1)
  expect_ok "$LAB" fence-mode normal
  f_watch_start
  # node1 loses power, and is fenced once the others have noticed (the
  # cluster's own fence comes ~2.3 s after; this one ~3 s after).
  "$LAB" crash node1 >/dev/null
  sleep 3
  t0=$(now_ms)
  expect_ok fence_from node2 node1
  echo "measured: fence of node1 $(($(now_ms) - t0)) ms"
  ! ext4_on node1 || fail "node1 still has its ext4 after the fence"
  t0=$(now_ms)
  local p2 p3
  ( as op node2 ferry start busybox >"$F_STATE/start2" 2>&1; echo $? >"$F_STATE/rc2" ) &
  p2=$!
  ( as op node3 ferry start busybox >"$F_STATE/start3" 2>&1; echo $? >"$F_STATE/rc3" ) &
  p3=$!
  wait "$p2" "$p3" || true
  echo "measured: both starts done $(($(now_ms) - t0)) ms after the fence"
  r2=$(cat "$F_STATE/rc2") r3=$(cat "$F_STATE/rc3")
  echo "node2: exit $r2; node3: exit $r3"
  # shown only when the test fails: what each start and each helper said
  local k
  for k in 2 3; do
    echo "--- node$k's start:"; cat "$F_STATE/start$k"
    echo "--- node$k's helper on the lease:"
    root_on node$k grep -E 'takeover|taken over|lease' /var/log/ferry-helper.log | tail -8 || true
  done
  echo "--- the power switch:"; tail -6 /var/tmp/ferry-lab/power/log 2>/dev/null || true
  [ "$(live_count)" = 1 ] || fail "the ext4 is live on $(live_count) nodes"
  if [ "$r2" = 0 ] && [ "$r3" != 0 ]; then echo node2 >"$F_STATE/winner"
  elif [ "$r3" = 0 ] && [ "$r2" != 0 ]; then echo node3 >"$F_STATE/winner"
  else fail "not exactly one winner (node2 $r2, node3 $r3)"; fi
  local w
  w=$(cat "$F_STATE/winner")
  ext4_on "$w" || fail "the winner $w has no ext4"
  [ "$(takeovers "$w")" -ge 1 ] || fail "$w started without a takeover audit line"
  root_on "$w" grep 'io.ferry.lease.takeover' /var/log/ferry-helper.log | tail -1 | grep -q 'fenced, off of node1 success' \
    || fail "the audit line does not name the fence"
  local st
  st=$(as op "$w" ferry status busybox 2>&1 || true)
  echo "measured: $w's ferry status after the takeover: $(grep -E '^overall|^\|- (avail|sync)' <<<"$st" | tr -s ' ' | paste -sd';' -)"
  grep -qE '^\|- avail +up' <<<"$st" || fail "ferry status on $w does not say up:
$st"
  [ "$(container_id "$w")" = "$cid" ] || fail "container id changed: $cid → $(container_id "$w")"
  [ "$(root_on "$w" sha256sum /srv/busybox/check | cut -d' ' -f1)" = "$sum" ] || fail "the checksummed file differs"
  f_watch_stop
}

# The holder cut off from the cluster, and fencing fails: the others ask
# and ask, the holder goes on renewing, and its lease is never taken.
t_f_cut_off_not_fenced() {
  local w other
  w=$(cat "$F_STATE/winner")
  other=node2; [ "$w" = node2 ] && other=node3
  f_watch_start
  # node1 is off: of three votes, the other node alone has one. Let its
  # partition act without quorum, so that it does try to fence.
  expect_ok root_on "$other" crm_attribute --type crm_config --name no-quorum-policy --update ignore
  expect_ok "$LAB" fence-mode fail
  expect_ok "$LAB" link "$w" down
  # until the cluster has tried (and failed) to fence it
  local i
  for i in $(seq 1 60); do
    root_on "$other" stonith_admin --history "$w" --verbose 2>/dev/null | grep -q "failed" && break
    sleep 0.5
  done
  expect_ok root_on "$other" stonith_admin --history "$w" --verbose
  contains "failed"
  lacks "successful"
  refused_for "$other" 12
  ext4_on "$w" || fail "the holder lost its ext4"
  f_watch_stop
  expect_ok "$LAB" fence-mode normal
}

# The holder fenced, then back again before anyone started: its sanlock
# daemon joins the lockspace anew (a new generation, once its old host
# lease has expired: ~70 s), as a rebooted node's would. Its old resource
# lease names the old generation; the start elsewhere goes on without a
# takeover (sanlock's own rule: a newer generation holds nothing), and the
# back-again node's host lease is never freed.
t_f_back_again_not_fenced() {
  local w other hid before ls=ferry-busybox st1 st2 ts1 ts2 gen_old gen_new t0
  w=$(cat "$F_STATE/winner")
  hid=${w#node}
  other=node2; [ "$w" = node2 ] && other=node3
  f_watch_start
  expect_ok "$LAB" fence-mode normal
  expect_ok fence_from "$other" "$w"
  ! ext4_on "$w" || fail "$w still has its ext4 after the fence"
  expect_ok root_on "$other" sanlock direct dump /run/ferry-lab/disks/lease0:0
  gen_old=$(host_field "$hid" 6 <<<"$OUT")
  # back again: its sanlock daemon, and the lockspace joined as the helper does
  expect_ok "$LAB" start-sanlock "$w"
  t0=$(now_ms)
  expect_ok root_on "$w" sanlock client add_lockspace -s "$ls:$hid:/run/ferry-lab/disks/lease0:0" -o 1
  echo "measured: $w joined the lockspace again after $(($(now_ms) - t0)) ms (its old host lease had to expire)"
  expect_ok root_on "$w" sanlock direct dump /run/ferry-lab/disks/lease0:0
  gen_new=$(host_field "$hid" 6 <<<"$OUT")
  echo "measured: $w's generation $gen_old before, $gen_new back again"
  [ -n "$gen_new" ] && [ "$gen_new" -gt "${gen_old:-0}" ] || fail "no new generation for $w: $OUT"
  before=$(takeovers "$other")
  t0=$(now_ms)
  expect_ok as op "$other" ferry start busybox
  echo "measured: $other's start $(($(now_ms) - t0)) ms"
  [ "$(takeovers "$other")" = "$before" ] || fail "$other took over the lease of $w, which is back (new generation)"
  ext4_on "$other" || fail "$other has no ext4 after its start"
  # the back-again node's host lease: not freed, and renewing
  st1=$(root_on "$other" sanlock direct dump /run/ferry-lab/disks/lease0:0)
  sleep 3
  st2=$(root_on "$other" sanlock direct dump /run/ferry-lab/disks/lease0:0)
  ts1=$(host_field "$hid" 4 <<<"$st1")
  ts2=$(host_field "$hid" 4 <<<"$st2")
  echo "measured: $w's host lease timestamp $ts1, 3 s later $ts2"
  [ -n "$ts1" ] && [ "$ts1" != 0 ] && [ -n "$ts2" ] && [ "$ts2" -gt "$ts1" ] || fail "$w's host lease was freed or stopped: $st2"
  f_watch_stop
}

run_test "failover: three nodes, fencing configured"                  t_f_setup
run_test "failover: ocf start returns once monitor and status say up" t_f_ocf_start_then_monitor
run_test "failover: a fence older than the last renewal does not count" t_f_fence_older_than_renewal
run_test "failover: two nodes start right after a fence, one wins"    t_f_race_after_fence
run_test "failover: cut off but not fenced, the lease is never taken" t_f_cut_off_not_fenced
run_test "failover: fenced and back again (new generation), not fenced" t_f_back_again_not_fenced
rm -rf "$F_STATE"
