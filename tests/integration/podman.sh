# Podman as the container runtime (issue 15): service podbox, run by
# rootful podman with its storage on its own shared ext4, next to busybox
# (docker). Start, stop, relocate there and back (the same container id, a
# checksummed file intact, the ext4 never live through both nodes' loop
# devices at once), a failed start rolled back, the passthrough's refusals,
# both services on one node relocated independently, and the OCF agent
# running podbox under Pacemaker.

LAB_UP_T0=$(date +%s%N)
"$LAB" up 2 --podman --pacemaker || { echo "lab up --podman failed"; FAILED=$((FAILED + 1)); return 0; }
echo "lab up 2 --podman --pacemaker: $((($(date +%s%N) - LAB_UP_T0) / 1000000)) ms"

POD=podbox
POD_VIP=203.0.113.26
POD_CONF=/etc/ferry/services/podbox.conf
BB_CONF=/etc/ferry/services/busybox.conf
POD_STATE=$(mktemp -d)
AGENT=/usr/lib/ocf/resource.d/ferry/service
# Each node's own loop device on podbox's disk: the sampler looks at the
# host's /sys only (the kernel's list of live ext4 superblocks).
POD_DEV1=$(basename "$(root_on node1 readlink -f /run/ferry-lab/disks/pod0)")
POD_DEV2=$(basename "$(root_on node2 readlink -f /run/ferry-lab/disks/pod0)")

pod_id() { # NODE → 12-char id of podbox's running container, or empty
  as op "$1" ferry status $POD | sed -n 's/.*container#1 *\.\.\.\. up *\([0-9a-f]\{12\}\)@local\/podbox:date.*/\1/p'
}
pod_live_on() { [ -e "/sys/fs/ext4/$(eval echo "\$POD_DEV${1#node}")" ]; }
# The service's conmon, in the node's own mount namespace.
node_runs_conmon() { # NODE
  root_on "$1" sh -c 'me=$(readlink /proc/self/ns/mnt)
    for p in $(pgrep -f "[c]onmon.*/srv/podbox/containers/"); do
      [ "$(readlink /proc/$p/ns/mnt 2>/dev/null)" = "$me" ] && exit 0
    done; exit 1'
}
pod_is_clean() { # NODE
  ! root_on "$1" ip -4 -br addr show dev lab0 | grep -qF "$POD_VIP/" || fail "$1 still has $POD_VIP"
  ! pod_live_on "$1" || fail "podbox's ext4 is still live on $1"
  ! node_runs_conmon "$1" || fail "$1 still runs podbox's conmon"
}
# Add [container#2] running IMAGE to podbox's config and reload; on an
# early exit the test's trap puts the original back.
pod_add_container2() { # IMAGE
  root_on node1 cp $POD_CONF /tmp/podbox.conf.good
  trap 'root_on node1 cp /tmp/podbox.conf.good '$POD_CONF'; as op node1 ferry reload' EXIT
  root_on node1 sh -c "printf '\n[container#2]\ntype = podman\nrun_image = $1\nulimit = nofile=1024:1024 nproc=1024:1024\n' >> $POD_CONF"
  expect_ok as op node1 ferry reload
}
# Put podbox's original config back and start it: container#1 must be the
# one the first start created.
pod_restore_config_and_start() { # MESSAGE-IF-CONTAINER#1-CHANGED
  root_on node1 cp /tmp/podbox.conf.good $POD_CONF
  trap - EXIT
  expect_ok as op node1 ferry reload
  expect_ok as op node1 ferry start $POD
  [ "$(pod_id node1)" = "$(cat "$POD_STATE/id")" ] || fail "$1"
}
watch_start() {
  local test_pid=$BASHPID
  ( while kill -0 "$test_pid" 2>/dev/null; do
      [ -e "/sys/fs/ext4/$POD_DEV1" ] && [ -e "/sys/fs/ext4/$POD_DEV2" ] && echo BOTH >>"$POD_STATE/both"
      sleep 0.015
    done ) &
  echo $! >"$POD_STATE/watch"
}
watch_stop() {
  kill "$(cat "$POD_STATE/watch")" 2>/dev/null || true
  wait "$(cat "$POD_STATE/watch")" 2>/dev/null || true
  if [ -s "$POD_STATE/both" ]; then rm -f "$POD_STATE/both"; fail "podbox's ext4 was live on both nodes at once"; fi
}

t_pod_status_before_first_container() {
  expect_ok as op node1 ferry status $POD
  contains "overall                   down"
  # the image is there (loaded through ferry by lab up), no container yet
  expect_ok as op node1 ferry start $POD --rid ip#1,lease#1,fs#1
  expect_ok as op node1 ferry status $POD
  matches "container#1 +\.\.\.\. down +local/podbox:date"
  contains "# can not find container id"
  expect_ok as op node1 ferry docker $POD -- images
  contains "local/podbox"
  expect_ok as op node1 ferry stop $POD
}

t_pod_start_stop() {
  local t0 ID
  t0=$(date +%s%N)
  expect_ok as op node1 ferry start $POD
  echo "measured: first start of podbox (ip, lease, fs, podman create + start) $((($(date +%s%N) - t0) / 1000000)) ms"
  contains "podman --root /srv/podbox/containers create --name podbox.container.1 --network host --init"
  expect_ok as op node1 ferry status $POD
  contains "overall                   up"
  matches "container#1 +\.\.\.\. up +[0-9a-f]{12}@local/podbox:date"
  ID=$(pod_id node1); [ -n "$ID" ] || fail "no container id"
  echo "$ID" >"$POD_STATE/id"
  # the storage is on the shared fs, run root and tmp dir node-local
  root_on node1 test -f /srv/podbox/containers/libpod/bolt_state.db || fail "libpod's database is not on the shared fs"
  root_on node1 test -d /run/ferry/podbox/podman/tmp || fail "no node-local tmp dir"
  node_runs_conmon node1 || fail "no conmon for the container"
  # host network: the container sees the node's interfaces, service address included
  expect_ok as op node1 ferry docker $POD -- top podbox.container.1
  local pid
  pid=$(as op node1 ferry docker $POD -- inspect --format '{{.State.Pid}}' podbox.container.1)
  [ -n "$pid" ] && [ "$pid" -gt 0 ] || fail "no pid for the container: '$pid'"
  [ "$(root_on node1 readlink /proc/$pid/ns/net)" = "$(root_on node1 readlink /proc/self/ns/net)" ] \
    || fail "the container is not in node1's network namespace"
  root_on node1 grep -q "$POD_VIP" /proc/$pid/net/fib_trie || fail "the container does not see $POD_VIP"
  expect_ok as op node1 ferry start $POD
  contains "container podbox.container.1 ($ID) is up"
  t0=$(date +%s%N)
  expect_ok as op node1 ferry stop $POD
  echo "measured: stop of podbox $((($(date +%s%N) - t0) / 1000000)) ms"
  contains "no podman process of the service left"
  pod_is_clean node1
  expect_ok as op node1 ferry stop $POD
  expect_ok as op node1 ferry start $POD
  [ "$(pod_id node1)" = "$ID" ] || fail "container id changed across stop/start: $(pod_id node1) vs $ID"
}

t_pod_failed_start_rolls_back() {
  # a second container whose command exits at once: its first run is
  # removed, and everything the start did is undone, container#1 included
  expect_ok as op node1 ferry stop $POD
  expect_ok as op node1 ferry start $POD --rid ip#1,lease#1,fs#1
  root_on node1 sh -c 'rm -rf /tmp/broken && mkdir -p /tmp/broken/bin && cp /bin/busybox /tmp/broken/bin/ && ln -s busybox /tmp/broken/bin/false'
  root_on node1 sh -c 'tar -C /tmp/broken -c . | ferry docker podbox -- import --change "CMD [\"/bin/false\"]" - local/podbox:broken' >/dev/null
  expect_ok as op node1 ferry stop $POD
  pod_add_container2 local/podbox:broken
  expect_code 1 as op node1 ferry start $POD
  contains "stopped right after start"
  contains "removed container"
  pod_is_clean node1
  # nothing of the failed run is left in the store
  expect_ok as op node1 ferry start $POD --rid ip#1,lease#1,fs#1
  expect_ok as op node1 ferry docker $POD -- ps -a --format '{{.Names}}'
  lacks "podbox.container.2"
  contains "podbox.container.1"
  expect_ok as op node1 ferry docker $POD -- image rm local/podbox:broken
  expect_ok as op node1 ferry stop $POD
  pod_restore_config_and_start "the first container is gone"
}

t_pod_passthrough_refusals() {
  expect_code 2 as op node1 ferry docker $POD -- run local/podbox:date
  contains "docker subcommand 'run' is not allowed through ferry"
  expect_code 2 as op node1 ferry docker $POD -- ps --root /tmp/elsewhere
  contains "podman's global options are ferry's to set"
  expect_code 2 as op node1 ferry docker $POD -- images --conmon=/tmp/x
  contains "podman's global options"
  expect_code 2 as op node1 ferry docker $POD -- ps -r
  contains "-r (--remote)"
  expect_code 2 as op node1 ferry docker $POD -- load -i /etc/shadow
  contains "may not open files"
  expect_code 2 as op node1 ferry docker $POD -- image save -o /root/x local/podbox:date
  contains "may not open files"
  expect_code 2 as op node1 ferry docker $POD -- import /etc/shadow x
  contains "reads only from stdin"
  expect_code 2 as op node1 ferry docker $POD -- pull --authfile /root/auth.json x
  contains "may not open files"
  # a guest has no right to it at all
  expect_code 3 as guest node1 ferry docker $POD -- ps
  contains "io.ferry.container.docker"
  # what is allowed works, through podman
  expect_ok as op node1 ferry docker $POD -- logs --tail 1 podbox.container.1
  matches '[0-9]{2}:[0-9]{2}:[0-9]{2}'
  expect_ok as op node1 ferry docker $POD -- version
  contains "Version:"
}

t_pod_sync_to_node2() {
  # Pacemaker runs in this lab (for the last test): op reads the CIB, so
  # that ferry can tell podbox and busybox are not resources of it
  for n in node1 node2; do root_on $n usermod -aG haclient op; done
  for c in $POD_CONF $BB_CONF; do
    root_on node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' "$c"
  done
  expect_ok as op node1 ferry reload
  expect_ok as op node1 ferry sync $POD --force
  expect_ok as op node1 ferry sync busybox --force
  expect_ok as op node2 ferry status $POD
  contains "overall                   down"
  contains "# podman storage is not mounted here"
  # the passive node is refused, and runs no podman on the unmounted dir
  expect_code 1 as op node2 ferry start $POD
  contains "lease ferry-podbox@/run/ferry-lab/disks/podlease0 is held by node1"
  expect_code 1 as op node2 ferry docker $POD -- ps
  contains "podman runs only where the service's storage is up"
  root_on node2 test ! -e /srv/podbox/containers || fail "node2 created a podman store on its root fs"
}

t_pod_relocate_there_and_back() {
  local ID SUM t0
  ID=$(cat "$POD_STATE/id")
  [ "$(pod_id node1)" = "$ID" ] || fail "podbox is not up on node1 with $ID"
  root_on node1 sh -c 'head -c 1048576 /dev/urandom > /srv/podbox/payload'
  SUM=$(root_on node1 sha256sum /srv/podbox/payload | cut -d' ' -f1)
  watch_start
  expect_ok as op node1 ferry relocate $POD --to node2
  matches 'relocated to node2: .*downtime [0-9]+ ms'
  echo "measured: podbox $(grep -o 'downtime [0-9]* ms' <<<"$OUT") node1→node2"
  pod_is_clean node1
  [ "$(pod_id node2)" = "$ID" ] || fail "container id on node2 is '$(pod_id node2)', was '$ID'"
  pod_live_on node2 || fail "podbox's ext4 is not live on node2"
  [ "$(root_on node2 sha256sum /srv/podbox/payload | cut -d' ' -f1)" = "$SUM" ] || fail "data changed in the move"
  # dates keep coming on node2
  local n1 n2
  n1=$(as op node2 ferry docker $POD -- logs podbox.container.1 | wc -l)
  sleep 1.5
  n2=$(as op node2 ferry docker $POD -- logs podbox.container.1 | wc -l)
  [ "$n2" -gt "$n1" ] || fail "no new dates on node2 ($n1 → $n2 lines)"
  expect_ok as op node2 ferry relocate $POD --to node1
  echo "measured: podbox $(grep -o 'downtime [0-9]* ms' <<<"$OUT") node2→node1"
  watch_stop
  pod_is_clean node2
  [ "$(pod_id node1)" = "$ID" ] || fail "container id changed on the way back"
  [ "$(root_on node1 sha256sum /srv/podbox/payload | cut -d' ' -f1)" = "$SUM" ] || fail "data changed on the way back"
}

t_pod_conmon_outliving_stop_fails_the_stop() {
  # a podman process of the service that does not go holds the fs: the stop
  # must fail rather than report down (a stand-in with conmon's command line)
  root_on node1 sh -c 'setsid bash -c "exec -a conmon bash -c \"sleep 600; :\" x -n podbox.container.1 -b /srv/podbox/containers/overlay-containers/x/userdata" </dev/null >/dev/null 2>&1 &'
  trap 'root_on node1 pkill -f "^conmon -c sleep 600"' EXIT
  sleep 0.3
  expect_code 1 as op node1 ferry stop $POD
  contains "conmon"
  contains "holds the storage on the shared filesystem"
  pod_live_on node1 || fail "the ext4 was let go while conmon held it"
  root_on node1 pkill -f "^conmon -c sleep 600"
  trap - EXIT
  expect_ok as op node1 ferry stop $POD
  pod_is_clean node1
  expect_ok as op node1 ferry start $POD
}

t_pod_two_containers_stop_one() {
  # two podman containers in one service: stopping one leaves the other,
  # its conmon and the storage alone
  pod_add_container2 local/podbox:date
  expect_ok as op node1 ferry start $POD
  expect_ok as op node1 ferry stop $POD --rid container#2
  contains "another container of the service still runs here"
  expect_ok as op node1 ferry status $POD
  [ "$(pod_id node1)" = "$(cat "$POD_STATE/id")" ] || fail "container#1 did not survive container#2's stop"
  matches "container#2 +\.\.\.\. down +local/podbox:date"
  # the whole stop takes both, then lets go of the storage
  expect_ok as op node1 ferry stop $POD
  pod_is_clean node1
  # (podbox.container.2 stays in the store, stopped: `rm` is not allowed
  # through ferry, and nothing starts it once the config no longer has it)
  pod_restore_config_and_start "container#1 changed"
}

t_both_services_relocate_independently() {
  local BB_ID POD_ID
  POD_ID=$(cat "$POD_STATE/id")
  expect_ok as op node1 ferry start busybox
  BB_ID=$(container_id node1)
  [ -n "$BB_ID" ] || fail "busybox is not up on node1"
  [ "$(pod_id node1)" = "$POD_ID" ] || fail "podbox is not up on node1"
  expect_ok as op node1 ferry relocate $POD --to node2
  # busybox stays where it was, untouched
  [ "$(container_id node1)" = "$BB_ID" ] || fail "busybox moved or restarted"
  [ "$(pod_id node2)" = "$POD_ID" ] || fail "podbox is not up on node2"
  expect_ok as op node1 ferry relocate busybox --to node2
  [ "$(container_id node2)" = "$BB_ID" ] || fail "busybox's id changed"
  [ "$(pod_id node2)" = "$POD_ID" ] || fail "podbox changed when busybox moved"
  expect_ok as op node2 ferry relocate $POD --to node1
  [ "$(pod_id node1)" = "$POD_ID" ] || fail "podbox is not back on node1"
  [ "$(container_id node2)" = "$BB_ID" ] || fail "busybox moved with podbox"
  expect_ok as op node2 ferry stop busybox
  node_is_clean node2
}

ocf_rc() { local rc=0; root_on "$1" env OCF_RESKEY_service=$POD OCF_ROOT=/usr/lib/ocf "$AGENT" monitor >/dev/null 2>&1 || rc=$?; echo "$rc"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
wait_monitor() { # NODE WANT TIMEOUT_S → ms
  local t0 deadline
  t0=$(now_ms); deadline=$((t0 + $3 * 1000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if [ "$(ocf_rc "$1")" = "$2" ]; then echo $(($(now_ms) - t0)); return 0; fi
    sleep 0.05
  done
  return 1
}

t_pod_under_pacemaker() {
  local i ms
  for i in $(seq 1 60); do
    root_on node1 crm_mon -1 2>/dev/null | grep -q "fence-lab.*Started" && break
    sleep 0.5
  done
  [ "$(ocf_rc node1)" = 0 ] || fail "the agent's monitor does not see podbox up on node1"
  [ "$(ocf_rc node2)" = 7 ] || fail "the agent's monitor does not see podbox stopped on node2"
  expect_ok root_on node1 crm configure primitive pod ocf:ferry:service params service=$POD \
    op start timeout=150s interval=0 op stop timeout=60s interval=0 \
    op monitor interval=5s timeout=30s meta resource-stickiness=100
  for i in $(seq 1 100); do
    root_on node1 crm_mon -1 2>/dev/null | grep -q "pod.*Started node1" && break
    sleep 0.2
  done
  expect_ok root_on node1 crm_mon -1
  matches "pod.*Started node1"
  [ "$(pod_id node1)" = "$(cat "$POD_STATE/id")" ] || fail "Pacemaker restarted podbox when it adopted it"
  watch_start
  expect_ok root_on node1 crm_resource --move -r pod -N node2
  ms=$(wait_monitor node2 0 60) || fail "podbox did not come up on node2 under Pacemaker"
  echo "measured: crm_resource --move podbox node1→node2: $ms ms until the monitor says 0 on node2"
  [ "$(pod_id node2)" = "$(cat "$POD_STATE/id")" ] || fail "container id changed under Pacemaker"
  expect_ok root_on node1 crm_resource --clear -r pod
  expect_ok root_on node1 crm_resource --move -r pod -N node1
  ms=$(wait_monitor node1 0 60) || fail "podbox did not come back to node1"
  echo "measured: crm_resource --move podbox node2→node1: $ms ms"
  expect_ok root_on node1 crm_resource --clear -r pod
  watch_stop
  [ "$(ocf_rc node2)" = 7 ] || fail "podbox is not stopped on node2"
  expect_ok root_on node1 crm configure property maintenance-mode=true
  expect_ok root_on node1 crm configure delete pod
  expect_ok root_on node1 crm configure property maintenance-mode=false
}

run_test "podman: status before the first container"            t_pod_status_before_first_container
run_test "podman: start, stop, same container"                   t_pod_start_stop
run_test "podman: a failed first start rolls back"               t_pod_failed_start_rolls_back
run_test "podman: passthrough refusals"                          t_pod_passthrough_refusals
run_test "podman: sync to node2, passive node refused"           t_pod_sync_to_node2
run_test "podman: relocate there and back, never on both"        t_pod_relocate_there_and_back
run_test "podman: a conmon that outlives the stop fails it"      t_pod_conmon_outliving_stop_fails_the_stop
run_test "podman: two containers, one stopped, the other runs on" t_pod_two_containers_stop_one
run_test "podman: both services relocated independently"        t_both_services_relocate_independently
run_test "podman: the OCF agent runs podbox under Pacemaker"     t_pod_under_pacemaker

rm -rf "$POD_STATE"
"$LAB" down >/dev/null 2>&1 || true
