# The tutorial on ONE node, as the unprivileged operator `op`, plus the
# denials, idempotence and rollback an operator relies on.
# Users (tests/lab/lab): op ∈ ferry-operators (all rights), svcop ∈
# ferry-svc-busybox (this service only), guest (no rights).

"$LAB" up 1 || { echo "lab up failed"; FAILED=$((FAILED + 1)); return 0; }

t_status_before_start() {
  expect_ok as op node1 ferry status busybox
  contains "overall                   down"
  matches '\|  \|- container#1    \.\.\.\. down     local/busybox:date'
  contains "# docker daemon is not running"
  matches "ip#1 +\.\.\.\. down +203\.0\.113\.25@lab0"
  matches "fs#1 +\.\.\.\. down +/run/ferry-lab/disks/data0@/srv/busybox"
  contains "|- sync                   n/a"
}

t_guest_is_refused_and_nothing_changes() {
  expect_code 3 as guest node1 ferry start busybox
  contains "not authorized"
  contains "io.ferry.service.lock"
  contains "ferry-operators"
  node_is_clean node1
  expect_ok as guest node1 ferry status busybox
  contains "overall                   down"
}

t_busctl_from_a_plain_shell() {
  expect_ok as guest node1 busctl --system tree io.ferry.Helper1
  contains "/io/ferry/Helper1/service/busybox/ip_231"
  contains "/io/ferry/Helper1/service/busybox/container_231"
  expect_ok as guest node1 busctl --system call io.ferry.Helper1 /io/ferry/Helper1/service/busybox io.ferry.Helper1.Service Status
  matches '^a\(sssas\) 6 '
  contains '"ip#1" "down" "203.0.113.25@lab0"'
  expect_ok as guest node1 busctl --system get-property io.ferry.Helper1 /io/ferry/Helper1/service/busybox/fs_231 io.ferry.Helper1.Fs Settings
  contains '"mnt" "/srv/busybox"'
  # a mutating method over busctl is still polkit's decision
  expect_code 1 as guest node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 /io/ferry/Helper1/service/busybox/ip_231 io.ferry.Helper1.Ip.Add
  contains "Error io.ferry.Helper1.Error.NotAuthorized: uid 2103 is not authorized for io.ferry.ip.add"
  # an operator may mount, but not around the address, the lease and the tag
  expect_code 1 as op node1 dbus-send --system --print-reply --dest=io.ferry.Helper1 /io/ferry/Helper1/service/busybox/fs_231 io.ferry.Helper1.Fs.Mount
  contains "Error io.ferry.Helper1.Error.OutOfOrder: fs#1: refusing to mount on node1 for service 'busybox': ip#1 (203.0.113.25) is not up here"
  node_is_clean node1
}

t_op_starts_the_service() {
  expect_ok as op node1 ferry start busybox
  contains "checking 203.0.113.25 availability"
  contains "ip addr add 203.0.113.25/24 dev lab0"
  contains "vgchange --addtag node1 vgbusybox"
  contains "mount -t ext4 -o rw /run/ferry-lab/disks/data0 /srv/busybox"
  contains "start done in"
  expect_ok as op node1 ferry status busybox
  contains "overall                   up"
  matches 'container#1    \.\.\.\. up       [0-9a-f]{12}@local/busybox:date'
  matches 'ip#1 +\.\.\.\. up '
  matches 'fs#1 +\.\.\.\. up '
  matches 'vg#1 +\.\.\.\. up +vgbusybox'
  node_has_vip node1 || fail "no $VIP on lab0"
  node_has_mount node1 || fail "/srv/busybox not mounted"
}

t_start_twice_is_fine() {
  local id1 id2
  id1=$(container_id node1)
  expect_ok as op node1 ferry start busybox
  contains "already"
  id2=$(container_id node1)
  [ -n "$id1" ] && [ "$id1" = "$id2" ] || fail "container id changed: '$id1' → '$id2'"
}

t_docker_passthrough() {
  expect_ok as op node1 ferry docker busybox -- ps
  contains "busybox.container.1"
  expect_ok as op node1 ferry docker busybox -- images
  contains "local/busybox"
  sleep 1.2
  expect_ok as op node1 ferry docker busybox -- logs busybox.container.1
  matches '[A-Z][a-z]{2} [A-Z][a-z]{2} +[0-9]+ [0-9]{2}:[0-9]{2}:[0-9]{2} [A-Z]+ 20[0-9]{2}'
  expect_code 2 as op node1 ferry docker busybox -- run --privileged local/busybox:date
  contains "not allowed"
  # the CLI would skip the option and run `image build` as root
  expect_code 2 as op node1 ferry docker busybox -- image --help=false build -f /etc/shadow /etc
  contains "must follow \`image\` directly"
  expect_code 2 as op node1 ferry docker busybox -- load -i /etc/shadow
  contains "may not open files"
  expect_code 3 as guest node1 ferry docker busybox -- ps
  contains "io.ferry.container.docker"
  # a caller that goes away takes the helper's docker CLI with it
  as op node1 ferry docker busybox -- logs -f busybox.container.1 >/dev/null 2>&1 &
  sleep 1
  root_on node1 pgrep -f "docker -H unix:///var/lib/ferry/busybox/docker.sock logs -f" >/dev/null \
    || fail "no docker logs -f running for the caller"
  root_on node1 pkill -f "ferry docker busybox -- logs -f"
  wait || true
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    root_on node1 pgrep -f "docker -H unix:///var/lib/ferry/busybox/docker.sock logs -f" >/dev/null || return 0
    sleep 0.2
  done
  fail "the docker CLI outlived its caller"
}

t_data_survives_stop_and_start_with_same_container() {
  local id_before sum_before
  id_before=$(container_id node1)
  [ -n "$id_before" ] || fail "no running container"
  root_on node1 sh -c 'head -c 65536 /dev/urandom > /srv/busybox/payload'
  sum_before=$(root_on node1 sha256sum /srv/busybox/payload | cut -d' ' -f1)

  expect_ok as op node1 ferry stop busybox
  contains "umount /srv/busybox"
  contains "stop done in"
  expect_ok as op node1 ferry status busybox
  contains "overall                   down"
  node_is_clean node1

  expect_ok as op node1 ferry stop busybox   # stop twice: fine
  node_is_clean node1

  expect_ok as op node1 ferry start busybox
  [ "$(container_id node1)" = "$id_before" ] || fail "container id changed across stop/start"
  [ "$(root_on node1 sha256sum /srv/busybox/payload | cut -d' ' -f1)" = "$sum_before" ] || fail "data changed"
}

t_per_service_group() {
  root_on node1 sh -c 'cat > /etc/ferry/services/other.conf <<EOC
[DEFAULT]
nodes = node1

[ip#1]
ipdev = lab0
ipname = 203.0.113.26
netmask = 24
EOC'
  expect_ok as op node1 ferry reload
  contains "other"
  # svcop may act on busybox …
  expect_ok as svcop node1 ferry stop busybox --rid container#1
  expect_ok as svcop node1 ferry start busybox --rid container#1
  # … and on nothing else
  expect_code 3 as svcop node1 ferry start other
  contains "io.ferry.service.lock"
  contains "'other'"
  root_on node1 ip -4 -br addr show dev lab0 | grep -qF 203.0.113.26/ && fail "other's address was added"
  expect_ok as op node1 ferry start other
  expect_ok as op node1 ferry stop other
  root_on node1 rm -f /etc/ferry/services/other.conf
  expect_ok as op node1 ferry reload
  # a config anyone may write is not trusted
  root_on node1 sh -c 'printf "[DEFAULT]\nnodes = node1\n" > /etc/ferry/services/loose.conf; chmod 666 /etc/ferry/services/loose.conf'
  expect_ok as op node1 ferry reload
  lacks "loose"
  expect_code 1 as op node1 ferry start loose
  contains "the helper has not loaded it"
  root_on node1 grep -q "loose.conf: mode 666: writable by group or others: service not loaded" /var/log/ferry-helper.log \
    || fail "the helper did not log why it left loose.conf out"
  root_on node1 rm -f /etc/ferry/services/loose.conf
}

t_failed_start_leaves_nothing_behind() {
  expect_ok as op node1 ferry stop busybox
  node_is_clean node1
  # the same service with an image that does not exist
  # (without busybox's lease: a lease area belongs to one service)
  root_on node1 sh -c 'sed -e "s#run_image = .*#run_image = local/missing:1#" -e "/^\[lease#1\]/,/^\$/d" /etc/ferry/services/busybox.conf > /etc/ferry/services/badimg.conf'
  expect_ok as op node1 ferry reload
  expect_code 1 as op node1 ferry start badimg
  contains "local/missing:1"
  contains "rolling back"
  root_on node1 ip -4 -br addr show dev lab0 | grep -qF "$VIP/" && fail "address left up"
  node_has_mount node1 && fail "fs left mounted"
  node_runs_dockerd node1 badimg && fail "dockerd left running"
  root_on node1 vgs --noheadings -o vg_tags vgbusybox | grep -q node1 && fail "vg left tagged"
  root_on node1 rm -f /etc/ferry/services/badimg.conf
  expect_ok as op node1 ferry reload
}

t_interrupted_start_rolls_back() {
  # SIGINT lands during the address probe: the start stops after that step
  # and undoes it
  expect_code 1 as op node1 bash -c 'ferry start busybox & p=$!; sleep 0.1; kill -INT $p; wait $p'
  contains "interrupted: rolling back what this start did"
  contains "start of 'busybox' interrupted and rolled back"
  node_is_clean node1
}

t_unknown_service_and_rid() {
  expect_code 2 as op node1 ferry start nosuch
  contains "unknown service 'nosuch'"
  expect_code 2 as op node1 ferry start busybox --rid fs#9
  contains "has no resource fs#9"
  # a partial start that skips the address probe (the guard against
  # running twice) is refused while the address is not up here
  expect_code 2 as op node1 ferry start busybox --rid vg#1,fs#1
  contains "ip#1 is not up here and guards against running 'busybox' on two nodes"
  node_is_clean node1
  expect_code 2 as op node1 ferry start ../../../etc/shadow
  contains "is not a valid service name"
  # a config that does not list this node
  root_on node1 sh -c 'printf "[DEFAULT]\nnodes = node7\n[ip#1]\nipdev = lab0\nipname = 203.0.113.27\nnetmask = 24\n" > /etc/ferry/services/elsewhere.conf'
  expect_ok as op node1 ferry reload
  expect_code 2 as op node1 ferry start elsewhere
  contains "node1 is not one of the nodes of 'elsewhere' (node7)"
  root_on node1 rm /etc/ferry/services/elsewhere.conf
  expect_ok as op node1 ferry reload
}

t_helper_down_is_reported() {
  "$LAB" stop-helper node1
  expect_code 4 as op node1 ferry status busybox
  contains "ferry-helper is not running"
  "$LAB" restart-helper node1
  expect_ok as op node1 ferry status busybox
}

run_test "one-node: status before start"                    t_status_before_start
run_test "one-node: guest is refused, node unchanged"       t_guest_is_refused_and_nothing_changes
run_test "one-node: busctl tree/call from a plain shell"    t_busctl_from_a_plain_shell
run_test "one-node: op starts the service"                  t_op_starts_the_service
run_test "one-node: start twice"                            t_start_twice_is_fine
run_test "one-node: docker passthrough"                     t_docker_passthrough
run_test "one-node: stop/start keeps container and data"    t_data_survives_stop_and_start_with_same_container
run_test "one-node: per-service polkit group"               t_per_service_group
run_test "one-node: failed start rolls back"                t_failed_start_leaves_nothing_behind
run_test "one-node: an interrupted start rolls back"        t_interrupted_start_rolls_back
run_test "one-node: unknown service and rid"                t_unknown_service_and_rid
run_test "one-node: helper down"                            t_helper_down_is_reported

"$LAB" down >/dev/null 2>&1 || true
