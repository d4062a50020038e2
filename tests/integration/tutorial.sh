# The tutorial replayed on a brand-new service, as `op`, with ferry alone:
# two fresh, empty data disks (fs#1 and fs#2 nested in it), an empty private
# daemon, the image loaded through `ferry docker`, the first container, then
# relocation to node2 and back. Every status tree is compared line by line
# with the tutorial's (columns, states, comments; the lab's labels).
# Then the pieces on their own: the daemon on demand and its refusals, a
# missing image, the nested filesystems (order, a busy child, a missing
# child device), attach and detach in a real terminal (tmux).

"$LAB" up 2 || { echo "lab up failed"; FAILED=$((FAILED + 1)); return 0; }

CONF=/etc/ferry/services/busybox.conf
STORAGE=ip#1,lease#1,vg#1,fs#1,fs#2
T_STATE=$(mktemp -d)

# The lab's resource lines, in the order status prints them.
t_lines() { # STATE (up|down) for the storage
  local s=$1
  printf '%s\n' \
    "|  |- vg#1           .... $s$(pad "$s")vgbusybox" \
    "|  |- fs#1           .... $s$(pad "$s")/run/ferry-lab/disks/data0@/srv/busybox" \
    "|  |- fs#2           .... $s$(pad "$s")/run/ferry-lab/disks/data1@/srv/busybox/appdata" \
    "|  |- ip#1           .... $s$(pad "$s")203.0.113.25@lab0" \
    "|  '- lease#1        .... $s$(pad "$s")ferry-busybox@/run/ferry-lab/disks/lease0"
}
pad() { printf '%*s' $((9 - ${#1})) ''; }

# same_tree EXPECTED [TEXT]: line by line, or the diff.
same_tree() {
  local want=$1 got=${2-$OUT} d
  if ! d=$(diff -u <(printf '%s\n' "$want") <(printf '%s\n' "$got")); then
    fail "status tree differs from the tutorial's shape:
$d"
  fi
}

ext4_live() { # NODE DISK(data0|data1): the kernel still holds the fs through NODE's loop device
  local dev
  dev=$(root_on "$1" readlink -f "/run/ferry-lab/disks/$2")
  [ -e "/sys/fs/ext4/$(basename "$dev")" ]
}
node_clean_kernel() { # NODE
  node_is_clean "$1"
  ! ext4_live "$1" data0 || fail "$1: the kernel still holds data0's ext4"
  ! ext4_live "$1" data1 || fail "$1: the kernel still holds data1's ext4"
  local l
  l=$(as op "$1" ferry status busybox --local | awk '$3 == "lease#1" {print $5}')
  # down, or warn "held by" the other node: never held here
  [ -n "$l" ] && [ "$l" != up ] || fail "$1: lease#1 is '$l'"
}

# The image, as an operator makes it: a busybox-static rootfs, imported
# from stdin (the docker CLI runs as root on the node: no paths).
import_image() { # NODE
  as op "$1" sh -c 'd=$(mktemp -d) && mkdir "$d/bin" && cp /bin/busybox "$d/bin/" &&
    for i in sh date sleep cat echo; do ln -s busybox "$d/bin/$i"; done &&
    tar -C "$d" -c . | ferry docker busybox -- import \
      --change "CMD [\"/bin/sh\",\"-c\",\"while true; do date; sleep 1; done\"]" - local/busybox:date;
    rc=$?; rm -rf "$d"; exit $rc'
}

t_transcript() {
  # A brand-new service: both data disks empty again (lab up loaded the
  # image; a new user has none).
  node_clean_kernel node1
  root_on node1 mkfs.ext4 -q -F /run/ferry-lab/disks/data0
  root_on node1 mkfs.ext4 -q -F /run/ferry-lab/disks/data1

  # Initial state: the storage is up (the tutorial starts there).
  expect_ok as op node1 ferry start busybox --rid $STORAGE

  echo "## root@deb1:/# busybox.opensvc.com docker images"
  expect_ok as op node1 ferry docker busybox -- images
  matches '^REPOSITORY +TAG +IMAGE ID +CREATED +SIZE$'
  [ "$(printf '%s\n' "$OUT" | wc -l)" = 1 ] || fail "the new daemon should have no image"
  node_runs_dockerd node1 || fail "the daemon was not started on demand"

  echo "## docker pull opensvc/busybox:date — no registry in the lab: import instead"
  OUT=$(import_image node1 2>&1) || fail "import failed: $OUT"
  expect_ok as op node1 ferry docker busybox -- images
  matches '^local/busybox +date +[0-9a-f]{12} '

  echo "## busybox.opensvc.com print status"
  expect_ok as op node1 ferry print status busybox
  same_tree "busybox
overall                   warn
|- avail                  warn
|  |- container#1    .... down     local/busybox:date
|  |  |                            # can not find container id
$(t_lines up)
|- sync                   n/a
'- hb                     n/a"

  echo "## busybox.opensvc.com startcontainer"
  expect_ok as op node1 ferry start busybox --rid container#1
  matches 'CONTAINER#1 +docker -H unix://[^ ]*docker.sock run -d -t -i .*--name=busybox.container.1 local/busybox:date'
  contains "wait for container up status"
  local ID
  ID=$(container_id node1)
  [ -n "$ID" ] || fail "no container id"
  echo "$ID" >"$T_STATE/id"

  echo "## print status"
  expect_ok as op node1 ferry print status busybox
  same_tree "busybox
overall                   up
|- avail                  up
|  |- container#1    .... up       $ID@local/busybox:date
$(t_lines up)
|- sync                   n/a
'- hb                     n/a"

  echo "## docker attach (here: logs; attach itself: the tmux test)"
  sleep 1.2
  expect_ok as op node1 ferry docker busybox -- logs --tail 1 busybox.container.1
  matches '[0-9]{2}:[0-9]{2}:[0-9]{2} UTC [0-9]{4}'

  echo "## Change Service Config: nodes = node1 node2"
  root_on node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' $CONF
  expect_ok as op node1 ferry reload
  expect_ok as op node1 ferry print status busybox
  same_tree "busybox
overall                   warn
|- avail                  up
|  |- container#1    .... up       $ID@local/busybox:date
$(t_lines up)
|- sync                   down
|  '- sync#i0        .... down     sync svc config to nodes
|                                  # node2 need update
'- hb                     n/a"

  echo "## syncnodes (outside the window: skipped), syncnodes --force"
  expect_ok as op node1 ferry sync busybox --force
  expect_ok as op node1 ferry print status busybox
  same_tree "busybox
overall                   up
|- avail                  up
|  |- container#1    .... up       $ID@local/busybox:date
$(t_lines up)
|- sync                   up
|  '- sync#i0        .... up       sync svc config to nodes
'- hb                     n/a"

  echo "## the passive node"
  # Where the tutorial's passive node shows vg#1 plain down, ferry also says
  # who holds the storage: the VG's tag and the lease's holder (warn: it is
  # not free). Wait until node2's helper has joined the lockspace.
  local i
  for i in $(seq 100); do
    as op node2 ferry status busybox --local | grep -q 'joining the lockspace' || break
    sleep 0.1
  done
  expect_ok as op node2 ferry print status busybox
  same_tree "busybox
overall                   down
|- avail                  down
|  |- container#1    .... down     local/busybox:date
|  |  |                            # docker daemon is not running
|  |- vg#1           .... down     vgbusybox
|  |  |                            # tagged by node1
|  |- fs#1           .... down     /run/ferry-lab/disks/data0@/srv/busybox
|  |- fs#2           .... down     /run/ferry-lab/disks/data1@/srv/busybox/appdata
|  |- ip#1           .... down     203.0.113.25@lab0
|  '- lease#1        .... warn     ferry-busybox@/run/ferry-lab/disks/lease0
|                                  # held by node1 (host_id 1)
|- sync                   up
|  '- sync#i0        .... up       sync svc config to nodes
'- hb                     n/a"

  # data on both filesystems, to check on the other node
  root_on node1 sh -c 'head -c 262144 /dev/urandom > /srv/busybox/payload; head -c 262144 /dev/urandom > /srv/busybox/appdata/payload'
  root_on node1 sha256sum /srv/busybox/payload /srv/busybox/appdata/payload >"$T_STATE/sums"

  echo "## Execute Service Relocation: stop on node1"
  expect_ok as op node1 ferry stop busybox
  # fs#2 (the child) is unmounted before fs#1
  [ "$(grep -n 'umount /srv/busybox/appdata' <<<"$OUT" | cut -d: -f1 | head -1)" -lt \
    "$(grep -n 'umount /srv/busybox ' <<<"$OUT" | cut -d: -f1 | head -1)" ] || fail "unmount order"
  expect_ok as op node1 ferry print status busybox
  same_tree "busybox
overall                   down
|- avail                  down
|  |- container#1    .... down     local/busybox:date
|  |  |                            # docker daemon is not running
$(t_lines down)
|- sync                   up
|  '- sync#i0        .... up       sync svc config to nodes
'- hb                     n/a"
  node_clean_kernel node1

  echo "## start on node2"
  expect_ok as op node2 ferry start busybox
  expect_ok as op node2 ferry print status busybox
  same_tree "busybox
overall                   up
|- avail                  up
|  |- container#1    .... up       $ID@local/busybox:date
$(t_lines up)
|- sync                   up
|  '- sync#i0        .... up       sync svc config to nodes
'- hb                     n/a"
  [ "$(root_on node2 sha256sum /srv/busybox/payload /srv/busybox/appdata/payload)" = "$(cat "$T_STATE/sums")" ] \
    || fail "data changed in the move"

  echo "## and back: relocate (switch) to node1"
  expect_ok as op node2 ferry switch busybox --to node1
  [ "$(container_id node1)" = "$ID" ] || fail "container id on node1 is '$(container_id node1)', was '$ID'"
  node_clean_kernel node2
  [ "$(root_on node1 sha256sum /srv/busybox/payload /srv/busybox/appdata/payload)" = "$(cat "$T_STATE/sums")" ] \
    || fail "data changed in the move back"
  expect_ok as op node1 ferry stop busybox
  node_clean_kernel node1
}

# What a failed test left running must not fail the next one.
reset_nodes() {
  as op node1 ferry stop busybox >/dev/null 2>&1 || true
  as op node2 ferry stop busybox >/dev/null 2>&1 || true
}

t_on_demand_refused_when_storage_is_not_up() {
  node_clean_kernel node1
  expect_code 1 as op node1 ferry docker busybox -- images
  contains "docker daemon of service busybox is not running"
  contains "ip#1 (203.0.113.25) is not up here"
  contains "ferry start busybox --rid $STORAGE"
  ! node_runs_dockerd node1 || fail "a daemon was started"
  # everything but the child fs: still refused, naming it
  expect_ok as op node1 ferry start busybox --rid ip#1,lease#1,vg#1,fs#1
  expect_code 1 as op node1 ferry docker busybox -- images
  contains "fs#2 (/srv/busybox/appdata) is not mounted here"
  ! node_runs_dockerd node1 || fail "a daemon was started"
  # a guest may not even ask
  expect_code 3 as guest node1 ferry docker busybox -- images
  expect_ok as op node1 ferry stop busybox
  node_clean_kernel node1
}

t_on_demand_daemon_keeps_running_until_stop() {
  expect_ok as op node1 ferry start busybox --rid $STORAGE
  ! node_runs_dockerd node1 || fail "daemon before any docker call"
  expect_ok as op node1 ferry docker busybox -- image ls
  node_runs_dockerd node1 || fail "no daemon after ferry docker"
  expect_ok as op node1 ferry docker busybox -- ps -a
  node_runs_dockerd node1 || fail "the daemon did not keep running"
  root_on node1 grep -q 'action=io.ferry.container.start-daemon' /var/log/ferry-helper.log \
    || root_on node1 grep -q 'io.ferry.container.start-daemon' /var/log/ferry-helper.log \
    || fail "no audit record of the on-demand start"
  expect_ok as op node1 ferry stop busybox
  contains "no more container handled by docker daemon. shut it down"
  node_clean_kernel node1
}

t_missing_image() {
  root_on node1 cp $CONF "$CONF.orig"
  trap 'root_on node1 mv "$CONF.orig" $CONF; as op node1 ferry reload >/dev/null' EXIT
  root_on node1 sh -c "printf '\n[container#2]\ntype = docker\nrun_image = local/nosuch:1\n' >> $CONF"
  expect_ok as op node1 ferry reload
  # the daemon runs before the start (on demand): a failed start keeps it
  expect_ok as op node1 ferry start busybox --rid $STORAGE
  expect_ok as op node1 ferry docker busybox -- images
  expect_code 1 as op node1 ferry start busybox --rid container#2
  contains "image local/nosuch:1 is not in the service's docker daemon"
  contains "ferry docker busybox -- load < image.tar"
  contains "import"
  node_runs_dockerd node1 || fail "the rollback stopped a daemon that ran before the start"
  expect_ok as op node1 ferry stop busybox
  node_clean_kernel node1
  # a whole start that fails at the image: everything is rolled back
  expect_code 1 as op node1 ferry start busybox
  contains "image local/nosuch:1 is not in the service's docker daemon"
  node_clean_kernel node1
}

t_nested_order() {
  expect_ok as op node1 ferry start busybox
  local m1 m2
  m1=$(grep -n 'mount -t ext4 -o rw /run/ferry-lab/disks/data0 /srv/busybox ' <<<"$OUT" | cut -d: -f1)
  m2=$(grep -n 'mount -t ext4 -o rw /run/ferry-lab/disks/data1 /srv/busybox/appdata' <<<"$OUT" | cut -d: -f1)
  [ -n "$m1" ] && [ -n "$m2" ] && [ "$m1" -lt "$m2" ] || fail "fs#1 must be mounted before fs#2"
  root_on node1 findmnt -n /srv/busybox/appdata >/dev/null || fail "appdata not mounted"
  expect_ok as op node1 ferry stop busybox
  m2=$(grep -n 'umount /srv/busybox/appdata' <<<"$OUT" | cut -d: -f1 | head -1)
  m1=$(grep -n 'umount /srv/busybox ' <<<"$OUT" | cut -d: -f1 | head -1)
  [ -n "$m1" ] && [ -n "$m2" ] && [ "$m2" -lt "$m1" ] || fail "fs#2 must be unmounted before fs#1"
  node_clean_kernel node1
}

t_busy_child_at_stop() {
  expect_ok as op node1 ferry start busybox
  root_on node1 sh -c 'cd /srv/busybox/appdata && echo $$ > /tmp/busy.pid && exec sleep 600' \
    </dev/null >/dev/null 2>&1 &
  local i pid=""
  for i in $(seq 50); do
    pid=$(root_on node1 cat /tmp/busy.pid 2>/dev/null || true)
    [ -n "$pid" ] && break
    sleep 0.1
  done
  [ -n "$pid" ] || fail "the busy process did not start"
  [ "$(readlink /proc/$pid/cwd)" = /srv/busybox/appdata ] || fail "cwd of $pid: $(readlink /proc/$pid/cwd)"
  expect_ok as op node1 ferry stop busybox
  sleep 0.3
  ! kill -0 "$pid" 2>/dev/null || fail "the process in the child fs ($pid) still runs"
  node_clean_kernel node1
  root_on node1 rm -f /tmp/busy.pid
}

t_missing_child_device() {
  root_on node1 mv /run/ferry-lab/disks/data1 /run/ferry-lab/disks/data1.away
  set +e
  OUT=$(as op node1 ferry start busybox 2>&1)
  local rc=$?
  set -e
  root_on node1 mv /run/ferry-lab/disks/data1.away /run/ferry-lab/disks/data1
  printf '%s\n' "$OUT"
  [ "$rc" = 1 ] || fail "start exit $rc (wanted 1)"
  contains "device /run/ferry-lab/disks/data1 not found"
  contains "rolling back"
  node_clean_kernel node1
}

t_attach_and_detach_in_a_terminal() {
  expect_ok as op node1 ferry start busybox
  local ID
  ID=$(container_id node1)
  local S=ferry-attach-$$
  tmux kill-session -t "$S" 2>/dev/null || true
  tmux new-session -d -s "$S" -x 120 -y 30 \
    "$LAB exec node1 --user op -- ferry docker busybox -- attach busybox.container.1; echo ATTACH-EXIT=\$?; sleep 30"
  local i pane=""
  for i in $(seq 60); do
    pane=$(tmux capture-pane -p -t "$S")
    [ "$(grep -cE '[0-9]{2}:[0-9]{2}:[0-9]{2} UTC [0-9]{4}' <<<"$pane")" -ge 2 ] && break
    sleep 0.25
  done
  echo "$pane"
  [ "$(grep -cE '[0-9]{2}:[0-9]{2}:[0-9]{2} UTC [0-9]{4}' <<<"$pane")" -ge 2 ] \
    || { tmux kill-session -t "$S"; fail "no date lines streamed"; }
  tmux send-keys -t "$S" C-p
  tmux send-keys -t "$S" C-q
  for i in $(seq 40); do
    pane=$(tmux capture-pane -p -t "$S")
    grep -q 'ATTACH-EXIT=' <<<"$pane" && break
    sleep 0.25
  done
  tmux kill-session -t "$S" 2>/dev/null || true
  echo "$pane"
  # docker 20.10's CLI says "read escape sequence" and exits 1 on a detach
  grep -q 'read escape sequence' <<<"$pane" || fail "attach did not detach with Ctrl-p Ctrl-q"
  grep -q 'ATTACH-EXIT=' <<<"$pane" || fail "ferry docker attach did not return after the detach"
  [ "$(container_id node1)" = "$ID" ] || fail "the container did not keep running after the detach"
  expect_ok as op node1 ferry stop busybox
  node_clean_kernel node1
}

run_test "tutorial: transcript on a brand-new service (empty disks)"   t_transcript
reset_nodes
run_test "tutorial: docker on demand refused without the storage"     t_on_demand_refused_when_storage_is_not_up
reset_nodes
run_test "tutorial: docker starts the daemon on demand; stop stops it" t_on_demand_daemon_keeps_running_until_stop
reset_nodes
run_test "tutorial: a missing image says how to load it"              t_missing_image
reset_nodes
run_test "tutorial: nested filesystems: parent first, child first out" t_nested_order
reset_nodes
run_test "tutorial: a busy child fs at stop"                          t_busy_child_at_stop
reset_nodes
run_test "tutorial: a missing child device rolls the start back"      t_missing_child_device
reset_nodes
run_test "tutorial: attach in a terminal, Ctrl-p Ctrl-q detaches"     t_attach_and_detach_in_a_terminal
rm -rf "$T_STATE"
