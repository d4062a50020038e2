# What a user without rights (guest) can do to a stop from a mount namespace
# of his own: plant binaries there for the helper to run as root (issue 12,
# item 1), and pin the filesystem where no process holds it (item 5). Every
# verdict about the disk is the kernel's (/sys/fs/ext4/<loop device>).

"$LAB" up 1 || { echo "lab up failed"; FAILED=$((FAILED + 1)); return 0; }

G_STATE=$(mktemp -d)

ext4_live_on() { # NODE
  local dev
  dev=$(root_on "$1" readlink -f /run/ferry-lab/disks/data0)
  [ -e "/sys/fs/ext4/$(basename "$dev")" ]
}
no_marker() { # NODE: no planted binary ever ran
  local m
  m=$(root_on "$1" sh -c 'cat /tmp/ferry-guest-ran 2>/dev/null; ls -l /etc/ferry-pwned 2>/dev/null' || true)
  [ -z "$m" ] || fail "a planted binary ran: $m"
}

# The guest's (or root's) namespace: every directory of programs replaced by
# a tmpfs where each name the host has there is a script that records who
# ran it and, as root, writes /etc. Then it keeps a copy of the service's
# mount and sleeps, with its cwd in $1. $0: a file it writes when ready.
PLANT='
set -e
s=$(mktemp -d /tmp/ferry-guest.XXXXXX)
cp /bin/busybox "$s/busybox"
b="$s/busybox"
# only real root can write /etc: the mark of a planted program run as root
printf "#!%s sh\n%s touch /etc/ferry-pwned 2>/dev/null && echo \"\$0 root \$*\" >> /tmp/ferry-guest-ran\nexit 0\n" "$b" "$b" > "$s/fake"
chmod 755 "$s/fake"
dirs=""
for d in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin /usr/libexec /usr/local/libexec; do
  [ -d "$d" ] || continue
  "$b" ls "$d" > "$s/names$(echo "$d" | tr / _)"
  dirs="$dirs $d"
done
for d in $dirs; do
  "$b" mount -t tmpfs planted "$d"
  for n in $("$b" cat "$s/names$(echo "$d" | "$b" tr / _)"); do "$b" cp "$s/fake" "$d/$n"; done
done
cd "$1"
echo planted > "$0"
exec "$b" sleep 600'

t_setup() {
  expect_ok as op node1 ferry start busybox
  ext4_live_on node1 || fail "the service did not start"
  root_on node1 rm -f /tmp/ferry-guest-ran /etc/ferry-pwned
}

# Item 1: the helper ran `nsenter --mount=<guest ns> umount`, i.e. the guest's
# umount, as root. Now nothing of that namespace may run: the guest's copy
# (locked in his user namespace) goes with his processes; root's copy in a
# plain `unshare -m` is unmounted in place, and its processes live on.
t_planted_binaries_never_run_as_root() {
  root_on node1 rm -f /tmp/ferry-guest-ran /etc/ferry-pwned
  as guest node1 unshare -Urm sh -c "$PLANT" /tmp/g-ready /srv/busybox &
  local g=$!
  root_on node1 unshare -m --propagation private sh -c "$PLANT" /tmp/r-ready / &
  local r=$!
  local i
  for i in $(seq 50); do
    root_on node1 test -s /tmp/g-ready -a -s /tmp/r-ready && break
    sleep 0.1
  done
  root_on node1 test -s /tmp/g-ready -a -s /tmp/r-ready || fail "the namespaces were not planted"
  root_on node1 rm -f /tmp/g-ready /tmp/r-ready
  # armed: what the helper used to run there runs the guest's program
  local gpid
  gpid=$(root_on node1 pgrep -u guest -n -f "busybox sleep 600")
  root_on node1 nsenter --mount=/proc/$gpid/ns/mnt -- umount /srv/busybox >/dev/null 2>&1 || true
  root_on node1 grep -q "umount root" /tmp/ferry-guest-ran || fail "the guest's namespace is not armed"
  root_on node1 rm -f /tmp/ferry-guest-ran /etc/ferry-pwned
  expect_ok as op node1 ferry stop busybox
  contains "in mount namespace"
  contains "keeps a copy of the mount: kill its processes"
  no_marker node1
  ! ext4_live_on node1 || fail "the ext4 is still live on node1"
  # root's namespace: unmounted there, not killed
  kill -0 $r 2>/dev/null || fail "root's unshare was killed; its copy should have been unmounted in place"
  kill $r $g 2>/dev/null || true
  wait $r $g 2>/dev/null || true
  expect_ok as op node1 ferry start busybox
  no_marker node1
}

# Item 5: an O_PATH fd of /srv/busybox sent over a unix socket to itself and
# closed: no process holds the fs, the kernel does. The stop names the
# socket's holder, kills it (audited, as fuser -km would), and lets go.
PIN_PY='
import os, socket, sys, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
fd = os.open("/srv/busybox", os.O_PATH)
socket.send_fds(a, [b"x"], [fd])
os.close(fd)
os.chdir("/")
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(600)
'
t_fd_in_a_socket_buffer_does_not_wedge_the_stop() {
  ext4_live_on node1 || expect_ok as op node1 ferry start busybox
  root_on node1 rm -f /tmp/pin-ready
  as guest node1 python3 -c "$PIN_PY" /tmp/pin-ready &
  local p=$!
  local i
  for i in $(seq 50); do root_on node1 test -s /tmp/pin-ready && break; sleep 0.1; done
  root_on node1 test -s /tmp/pin-ready || fail "the pin was not set"
  local pin_pid
  pin_pid=$(root_on node1 cat /tmp/pin-ready)
  # no process has a file on it: fuser sees nothing
  expect_ok root_on node1 sh -c 'fuser -m /srv/busybox 2>&1 || true'
  expect_ok as op node1 ferry stop busybox
  contains "never received"
  contains "$pin_pid"
  ! ext4_live_on node1 || fail "the ext4 is still live on node1"
  wait $p 2>/dev/null || true
  # one audit record for the kill, naming the socket's holder
  root_on node1 grep "never received" /var/log/ferry-helper.log | grep "audit" | grep -q "$pin_pid" \
    || fail "the kill was not audited"
}

# A pin that no kill frees (a loop device on the fs) is named, with what to
# do, and the stop fails without letting go of the rest.
t_loop_device_pin_is_named() {
  expect_ok as op node1 ferry start busybox
  root_on node1 sh -c 'truncate -s 1M /srv/busybox/pin.img && losetup -f --show /srv/busybox/pin.img > /run/x-pin-loop'
  trap 'root_on node1 sh -c "losetup -d \$(cat /run/x-pin-loop); rm -f /run/x-pin-loop"' EXIT
  expect_code 1 as op node1 ferry stop busybox
  contains "is still busy after"
  contains "loop device $(root_on node1 cat /run/x-pin-loop) backed by /srv/busybox/pin.img: losetup -d"
  ext4_live_on node1 || fail "the ext4 went although a loop device holds it"
  root_on node1 sh -c 'losetup -d $(cat /run/x-pin-loop); rm -f /run/x-pin-loop /srv/busybox/pin.img'
  trap - EXIT
  expect_ok as op node1 ferry stop busybox
  ! ext4_live_on node1 || fail "node1 still holds the ext4"
}

run_test "setup: the service runs on node1" t_setup
run_test "1. planted binaries in a guest's namespace never run as root" t_planted_binaries_never_run_as_root
run_test "5. an fd in a socket buffer does not wedge the stop" t_fd_in_a_socket_buffer_does_not_wedge_the_stop
run_test "5. a loop device pin is named with what to do" t_loop_device_pin_is_named
rm -rf "$G_STATE"
