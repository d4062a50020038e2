#!/usr/bin/env bash
# The Debian package on a fresh Debian 12 that boots with systemd as PID 1,
# under systemd-nspawn (DESIGN §11): install, bus activation through
# systemd, an operator's start and stop, the journal's audit fields, man
# pages, completion, a helper restart and an upgrade that keep a service's
# processes, purge.
#
#   bash tests/package/run.sh [DEB]     (make package-test builds the deb first)
#   FERRY_PKGTEST_VERBOSE=1 shows what each passing test saw, too.
#
# The node boots from an overlay on the cached tree (tests/package/tree.sh),
# so each run starts fresh. Addresses: only 198.51.100.0/24, only inside the
# node; the host side of the veth gets none (IPv6 link-local included).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T0=$(date +%s%N)
ms() { echo $((($(date +%s%N) - $1) / 1000000)); }

DEB=${1:-$(ls -t "$REPO"/target/debian/ferry_*.deb 2>/dev/null | head -1)}
[ -f "$DEB" ] || { echo "package: no .deb (run make deb)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "package: run as root" >&2; exit 2; }

NAME=ferrypkg                  # machine name and hostname of the node
VETH=ve-$NAME                  # the host side of the node's veth
NODE_IP=198.51.100.2/24        # host0's own address (systemd-networkd)
VIP=198.51.100.10              # the service's address
CACHE=${FERRY_PKGTEST_CACHE:-/var/tmp/ferry-pkgtest}
WORK=$CACHE/run
ROOT=$WORK/root
NSPAWN_PID= PID1=

PASSED=0 FAILED=0 FAILED_NAMES=()
# check NAME CMD…: one test; its output goes to the log, and to the screen on failure.
check() {
  local name=$1; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then
    PASSED=$((PASSED + 1)); echo "ok   $name"
    [ "${FERRY_PKGTEST_VERBOSE:-0}" = 0 ] || printf '%s\n' "$out" | sed 's/^/     | /'
  else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); echo "FAIL $name"
    printf '%s\n' "$out" | sed 's/^/     | /' | tail -40
  fi
}
fail() { echo "$*" >&2; return 1; }

# Run a command in the booted node, as root or (as USER …) as a user.
node() {
  nsenter -t "$PID1" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 TERM=dumb "$@"
}
as() { local u=$1; shift; node runuser -u "$u" -- env HOME="/home/$u" "$@"; }

teardown() {
  # A crashed earlier run: its nspawn's pid is in the pid file; stop that
  # process only if it still is that nspawn.
  if [ -z "$NSPAWN_PID" ] && [ -f "$WORK/nspawn.pid" ]; then
    NSPAWN_PID=$(cat "$WORK/nspawn.pid")
    tr '\0' ' ' <"/proc/$NSPAWN_PID/cmdline" 2>/dev/null | grep -q "systemd-nspawn .*-M $NAME " ||
      NSPAWN_PID=
  fi
  if [ -n "$NSPAWN_PID" ] && [ -d "/proc/$NSPAWN_PID" ]; then
    [ -z "$PID1" ] || node systemctl poweroff --no-block >/dev/null 2>&1
    # SIGTERM makes nspawn shut the container down cleanly
    [ -n "$PID1" ] || kill "$NSPAWN_PID" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$NSPAWN_PID" ] || break; sleep 0.1; done
    [ ! -d "/proc/$NSPAWN_PID" ] || kill -9 "$NSPAWN_PID" 2>/dev/null
    for _ in $(seq 50); do [ -d "/proc/$NSPAWN_PID" ] || break; sleep 0.1; done
  fi
  NSPAWN_PID= PID1=
  # nspawn leaves empty cgroups behind: remove them, deepest first.
  for h in systemd unified; do
    [ -d "/sys/fs/cgroup/$h/$NAME" ] &&
      find "/sys/fs/cgroup/$h/$NAME" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  mountpoint -q "$ROOT" && { umount "$ROOT" || umount -l "$ROOT"; }
  # never remove through a mount: the lower layer is the cached tree
  mountpoint -q "$ROOT" || rm -rf "$WORK"
}

# ---- the tree, the overlay, what must be there before boot
t=$(date +%s%N)
TREE=$(bash "$HERE/tree.sh") || exit 1
echo "package: tree ready in $(ms "$t") ms ($TREE)"
teardown                                   # what a crashed run left
trap teardown EXIT
mkdir -p "$WORK/upper" "$WORK/work" "$ROOT"
mount -t overlay overlay -o "lowerdir=$TREE,upperdir=$WORK/upper,workdir=$WORK/work" "$ROOT"

echo "$NAME" >"$ROOT/etc/hostname"
cp "$DEB" "$ROOT/root/ferry.deb"
# The node has no route to the archive: download what the package needs
# now, in a chroot; apt inside the node then installs from its cache.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
t=$(date +%s%N)
chroot "$ROOT" apt-get install -y -qq --download-only /root/ferry.deb >"$WORK/chroot-apt.log" 2>&1 ||
  { cat "$WORK/chroot-apt.log"; exit 1; }
echo "package: dependencies resolved in the chroot in $(ms "$t") ms"
chroot "$ROOT" useradd -m -s /bin/bash op
mkdir -p "$ROOT/etc/systemd/network"
cat >"$ROOT/etc/systemd/network/50-host0.network" <<EOF
[Match]
Name=host0

[Network]
Address=$NODE_IP
LinkLocalAddressing=no
EOF
chroot "$ROOT" systemctl enable -q systemd-networkd.service

# ---- boot (DESIGN §11)
t=$(date +%s%N)
unshare --mount --propagation private bash -c '
  for h in systemd unified; do
    mkdir -p /sys/fs/cgroup/$h/'"$NAME"' && echo $$ >/sys/fs/cgroup/$h/'"$NAME"'/cgroup.procs
  done
  # The host'"'"'s /run is on disk; nspawn will not clean its propagate dir there.
  mount -t tmpfs tmpfs /run/systemd
  exec systemd-nspawn -D '"$ROOT"' -M '"$NAME"' --boot --register=no --keep-unit \
    --private-users=no --link-journal=no --network-veth --console=read-only
' >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!
echo "$NSPAWN_PID" >"$WORK/nspawn.pid"
for _ in $(seq 200); do
  PID1=$(cat "/proc/$NSPAWN_PID/task/$NSPAWN_PID/children" 2>/dev/null | awk '{print $1}')
  [ -n "$PID1" ] && [ -e "/proc/$PID1/root/run/systemd/private" ] && break
  [ -d "/proc/$NSPAWN_PID" ] || { cat "$WORK/console.log"; exit 1; }
  sleep 0.05
done
[ -n "$PID1" ] && [ -e "/proc/$PID1/root/run/systemd/private" ] ||
  { echo "package: the node did not boot within 10 s" >&2; cat "$WORK/console.log"; exit 1; }
state=$(node timeout 60 systemctl is-system-running --wait 2>&1)
echo "package: booted in $(ms "$t") ms (system $state)"
# The host side: up, so the node's ARP probe has a link, and no address at all.
ip link set "$VETH" addrgenmode none 2>/dev/null
ip link set "$VETH" up

# ---- tests
t_install() {
  node apt-get install -y --no-install-recommends /root/ferry.deb
}
t_group() { node getent group ferry-operators; }
t_not_started() {
  node systemctl is-active ferry-helper.service && fail "the helper runs before any call"
  node busctl --system status io.ferry.Helper1 >/dev/null 2>&1 && fail "io.ferry.Helper1 has an owner"
  return 0
}
t_help_version() {
  node /usr/libexec/ferry-helper --version | grep -q "^ferry-helper " || fail "helper --version"
  node /usr/libexec/ferry-helper --help | grep -q "io.ferry.Helper1" || fail "helper --help"
  node ferry --version | grep -Eq "^ferry [0-9.]+ \(git [0-9a-f]+|unknown\)" || fail "ferry --version"
  node systemctl is-active ferry-helper.service && fail "--help started the helper"
  return 0
}

OP_UID=$(node id -u op)

# What an administrator does after installing: an operator in the group,
# the example rule, an address-only service config. Then the first call.
t_activation() {
  node usermod -aG ferry-operators op || return 1
  node cp /usr/share/doc/ferry/examples/50-ferry-operators.rules /etc/polkit-1/rules.d/
  node sh -c "printf '%s\n' '[DEFAULT]' 'nodes = $NAME' '' '[ip#1]' 'ipdev = host0' \
    'ipname = $VIP' 'netmask = 24' >/etc/ferry/services/vip.conf"
  # every interface kind, for the introspection comparison below
  node sh -c 'cat >/etc/ferry/services/all.conf' <"$HERE/every-interface.conf"
  as op ferry status vip || return 1
  node systemctl is-active ferry-helper.service || fail "ferry-helper.service is not active"
  node journalctl -b -u dbus.service --no-pager |
    grep "Activating via systemd: service name='io.ferry.Helper1'" ||
    fail "the bus did not start the helper through systemd"
}
t_start() {
  as op ferry start vip || return 1
  node ip -4 -o addr show dev host0 | grep -F " $VIP/24 " || fail "$VIP is not on host0"
  as op ferry status vip | grep -E "^overall +up" || fail "status is not up"
}
t_host_clean() {
  # host side: no IPv4, no IPv6, nothing of 198.51.100.0/24 on the host at all
  [ -z "$(ip -o addr show dev "$VETH")" ] || fail "$VETH has an address: $(ip -o addr show dev "$VETH")"
  ! ip -o addr show | grep -F "198.51.100." || fail "a 198.51.100.x address on the host"
}
t_journal() {
  # Matches on different fields must hold in one record: the audit record
  # of the operator's ip.add that succeeded.
  local out
  out=$(node journalctl -u ferry-helper --no-pager -o verbose FERRY_SERVICE=vip \
    FERRY_UID="$OP_UID" FERRY_ACTION=io.ferry.ip.add FERRY_RESULT=ok FERRY_RID=ip#1)
  echo "$out"
  grep -q "FERRY_TARGET=audit\|TARGET=audit" <<<"$out" || fail "no audit record of ip.add by uid $OP_UID"
}
t_man() {
  node man -P cat ferry | grep -q "EXIT STATUS" || fail "man ferry"
  node man -P cat ferry.conf | grep -q "ipdev" || fail "man ferry.conf"
  node man -P cat 8 ferry-helper | grep -q "FERRY_SERVICE" || fail "man ferry-helper"
  node man -P cat ferry-status | grep -q -- "--all-nodes" || fail "man ferry-status"
}
t_completion() {
  # An interactive bash as the operator: Debian's ~/.bashrc loads
  # bash-completion, whose loader finds ferry's completion on first use.
  local out
  out=$(as op bash -ic '
    complete -p ferry >/dev/null 2>&1 || _completion_loader ferry
    spec=$(complete -p ferry) || exit 1
    echo "spec: $spec"
    fn=$(sed -n "s/.*-F \([^ ]*\) .*/\1/p" <<<"$spec")
    COMP_WORDS=(ferry st); COMP_CWORD=1; COMP_LINE="ferry st"; COMP_POINT=${#COMP_LINE}
    "$fn" ferry st ferry
    echo "reply: ${COMPREPLY[*]}"' 2>&1)
  echo "$out"
  grep -q "^reply:.*\bstatus\b" <<<"$out" && grep -q "^reply:.*\bstart\b" <<<"$out" &&
    grep -q "^reply:.*\bstop\b" <<<"$out" || fail "ferry st<TAB> does not offer status start stop"
  ! grep -q "^reply:.*\brelocate\b" <<<"$out" || fail "ferry st<TAB> offers relocate"
}
t_interfaces() {
  local live
  live=$(node sh -c 'for p in $(busctl --list tree io.ferry.Helper1); do
    busctl introspect --xml-interface io.ferry.Helper1 "$p"; done') || return 1
  diff <(cat "$REPO"/dbus-interfaces/io.ferry.Helper1.*.xml | bash "$HERE/xml-normalize.sh") \
    <(printf '%s\n' "$live" | bash "$HERE/xml-normalize.sh") ||
    fail "dbus-interfaces/ differs from the live helper: regenerate with make dbus-interfaces"
}

# (check runs each test in a subshell: the child's pid is kept in a file.)
# A long-running process in the helper's unit, the way the private
# containerd and dockerd of a service are (docker does not run in this node,
# so a sleep stands in for them). KillMode=process must leave it alone.
CHILD=
helper_pid() { node systemctl show -p MainPID --value ferry-helper.service; }
put_child_in_unit() {
  local main cg
  main=$(helper_pid)
  node sh -c 'setsid sleep 3600 >/dev/null 2>&1 </dev/null & echo $!' >"$WORK/child"
  CHILD=$(cat "$WORK/child")
  # every cgroup hierarchy the helper is in (hybrid: name=systemd and unified)
  while IFS=: read -r _ ctrl path; do
    case $ctrl in
      name=systemd) cg=/sys/fs/cgroup/systemd ;;
      "") cg=/sys/fs/cgroup/unified; node test -d $cg || cg=/sys/fs/cgroup ;;
      *) continue ;;
    esac
    node sh -c "echo $CHILD >$cg$path/cgroup.procs" || return 1
  done < <(node cat "/proc/$main/cgroup")
  node systemctl status --no-pager ferry-helper.service | grep -q "sleep 3600" ||
    fail "the stand-in child is not in ferry-helper.service"
}
child_alive() {
  local st
  CHILD=$(cat "$WORK/child")
  st=$(node sh -c "awk '{print \$3}' /proc/$CHILD/stat" 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ] || fail "the unit's child $CHILD is gone after: $1"
}
t_restart_keeps() {
  local before after
  put_child_in_unit || return 1
  before=$(helper_pid)
  node systemctl restart ferry-helper.service || return 1
  after=$(helper_pid)
  [ "$before" != "$after" ] && [ "$after" != 0 ] || fail "helper pid $before -> $after"
  child_alive "systemctl restart" || return 1
  node ip -4 -o addr show dev host0 | grep -qF " $VIP/24 " || fail "the address went with the restart"
  as op ferry status vip | grep -E "^overall +up"
}
t_upgrade_restarts() {
  local before after
  before=$(helper_pid)
  # Same version again: dpkg runs the upgrade path (postinst configure OLD).
  node apt-get install -y --reinstall --no-install-recommends /root/ferry.deb || return 1
  after=$(helper_pid)
  [ "$before" != "$after" ] && [ "$after" != 0 ] || fail "upgrade did not restart the helper ($before -> $after)"
  child_alive "package upgrade" || return 1
  as op ferry status vip | grep -E "^overall +up"
}
t_stop() {
  as op ferry stop vip || return 1
  ! node ip -4 -o addr show dev host0 | grep -F " $VIP/" || fail "$VIP still on host0"
  node kill "$(cat "$WORK/child")" 2>/dev/null
  return 0
}
t_purge() {
  node apt-get purge -y ferry || return 1
  node systemctl is-active ferry-helper.service && fail "the helper still runs"
  local f
  for f in /usr/bin/ferry /usr/libexec/ferry-helper /lib/systemd/system/ferry-helper.service \
    /usr/share/dbus-1/system.d/io.ferry.Helper1.conf /usr/share/dbus-1/system-services/io.ferry.Helper1.service \
    /usr/share/polkit-1/actions/io.ferry.policy /usr/share/man/man1/ferry.1.gz /run/ferry; do
    node test -e "$f" && fail "$f is still there"
  done
  # the administrator's configs stay
  node test -f /etc/ferry/services/vip.conf || fail "purge removed the service configs"
  return 0
}

t=$(date +%s%N)
check "apt-get install ./ferry.deb in the node, offline" t_install
check "group ferry-operators exists" t_group
check "the helper is not running after install" t_not_started
check "--help and --version answer without the bus" t_help_version
check "first ferry status by an operator starts the helper via the bus and systemd" t_activation
check "an operator starts the address-only service" t_start
check "the host has no address of the node (veth side bare)" t_host_clean
check "journalctl -u ferry-helper FERRY_SERVICE=vip FERRY_UID=<operator>" t_journal
check "man ferry, ferry.conf, ferry-helper, ferry-status" t_man
check "bash completion: ferry st<TAB>" t_completion
check "dbus-interfaces/*.xml match the live helper" t_interfaces
check "systemctl restart ferry-helper keeps the unit's other processes (KillMode=process)" t_restart_keeps
check "a package upgrade restarts the helper and keeps the unit's other processes" t_upgrade_restarts
check "an operator stops the service" t_stop
check "apt-get purge ferry stops the helper and removes its files, keeps configs" t_purge
echo "package: tests took $(ms "$t") ms"

t=$(date +%s%N)
teardown
trap - EXIT
echo "package: poweroff and cleanup took $(ms "$t") ms; whole package test $(ms "$T0") ms"
[ "$FAILED" -eq 0 ] || echo "failed: ${FAILED_NAMES[*]}"
echo "package: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
