#!/usr/bin/env bash
# Relocation benchmark: `ferry relocate` against the same steps done by hand
# with plain shell commands, in the same two-node lab, in the same run.
#
#   bash tests/bench/relocate.sh [RUNS]      (default 5; `make bench`)
#
# Each of the RUNS rounds moves the service node1 → node2 → node1 with ferry,
# then node1 → node2 → node1 with plain shell commands: 2×RUNS samples per
# step for each, both directions equally. One warm-up round of each is not
# counted. The Markdown report goes to stdout and to target/bench/relocate.md.
# FERRY_KEEP_LAB=1 leaves the lab up at the end; BENCH_CALLS (default 20) is
# the number of samples of each D-Bus / CLI call measurement.
# The lab also runs service podbox (podman, `lab up --podman`): after the
# docker rounds, RUNS rounds of `ferry relocate podbox` there and back, in
# a section of their own beside docker's figures (BENCH_PODMAN=0 skips it).
set -euo pipefail

RUNS=${1:-5}
CALLS=${BENCH_CALLS:-20}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]   (RUNS a positive integer, default 5)" >&2; exit 2; }
[[ $CALLS =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_CALLS must be a positive integer" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB=$REPO/tests/lab/lab
BIN=${FERRY_BIN_DIR:-$REPO/target/release}
OUTDIR=$REPO/target/bench
REPORT=$OUTDIR/relocate.md

SVC=busybox
CONF=/etc/ferry/services/$SVC.conf
SVC_OBJ=/io/ferry/Helper1/service/$SVC

die() { echo "bench: error: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

STAGE="start"
WORK=""
cleanup() {
  local rc=$?
  if ((rc != 0)); then
    echo "bench: failed during: $STAGE (exit $rc); raw data in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  if [[ ${FERRY_KEEP_LAB:-0} == 1 ]]; then
    say "lab left up (FERRY_KEEP_LAB=1): tests/lab/lab down removes it"
  else
    "$LAB" down >/dev/null 2>&1 || echo "bench: warning: lab down failed: run tests/lab/lab down" >&2
    ((rc == 0)) || say "the lab was torn down; FERRY_KEEP_LAB=1 keeps it for a look"
  fi
  exit "$rc"
}

# ------------------------------------------------------------ prerequisites

(( EUID == 0 )) || die "the lab needs root"
for b in ferry ferry-helper; do
  [[ -x $BIN/$b ]] || die "$BIN/$b is missing: run 'cargo build --release' (or 'make build') first"
done
# The plain-shell daemon start polls /_ping with curl on the unix socket
# (the nodes see the host's /usr).
if ! command -v curl >/dev/null; then
  say "curl is missing: installing it"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null; } \
    || die "cannot install curl"
fi
for c in arping busybox busctl docker dockerd containerd e2fsck vgchange awk; do
  command -v "$c" >/dev/null || die "$c is missing: run 'make deps' (tests/deps.sh)"
done

WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
trap cleanup EXIT

# ------------------------------------------------------------ helpers

op()   { local n=$1; shift; "$LAB" exec "$n" --user op -- "$@"; }
root() { local n=$1; shift; "$LAB" exec "$n" -- "$@"; }
now_us() { echo "${EPOCHREALTIME//[.,]/}"; }

# Samples: one line "SOURCE RUN KEY MICROSECONDS" in $WORK/samples,
# SOURCE = ferry | shell | extra.
SAMPLES=$WORK/samples
: >"$SAMPLES"
add() { echo "$1 $2 $3 $4" >>"$SAMPLES"; }

# ------------------------------------------------------------ ferry's output

# Parse one `ferry relocate` output (file $1, target node $2) into samples
# (source ferry, run $3). Each helper call's last line ends with "(N ms)";
# the target's lines come prefixed with "NODE: ".
parse_ferry() {
  local file=$1 to=$2 run=$3
  awk -v to="$to" -v run="$run" '
    function ms(line) {              # the "(N ms)" at the end of a line
      if (match(line, /\([0-9]+ ms\)$/)) return substr(line, RSTART + 1, RLENGTH - 5) + 0
      return -1
    }
    function put(key, v) { if (v >= 0) { printf "ferry %s %s %d\n", run, key, v * 1000; seen[key] = 1 } }
    # one sample per relocation for steps done once per filesystem: the sum
    function add(key, v) { if (v >= 0) { acc[key] += v; seen[key] = 1 } }
    {
      remote = (index($0, to ": ") == 1)
      line = $0
      if (remote) line = substr(line, length(to) + 3)
      if (!remote) {
        if (line ~ / answers, same config, service down there \(/) put("precheck", ms(line))
        else if (line ~ / is ready to start it: connected, locked \(/) put("ready", ms(line))
        else if (line ~ / is down: .*\([0-9]+ ms\)$/)               put("c_stop", ms(line))
        else if (line ~ / docker daemon stopped in /)                 put("d_stop", ms(line))
        else if (line ~ / umount \/.*\([0-9]+ ms\)$/)               add("umount", ms(line))
        else if (line ~ / vgchange -a n /)                            put("vg_deact", ms(line))
        else if (line ~ /nothing to deactivate/)                      put("vg_deact", ms(line))
        else if (line ~ / vgchange --deltag /)                        put("vg_untag", ms(line))
        else if (line ~ / ip addr del /)                              put("ip_del", ms(line))
        else if (line ~ / release lease /)                            put("lease_rel", ms(line))
        else if (match(line, /relocated to [^:]+: stop [0-9]+ ms, check down [0-9]+ ms, start [0-9]+ ms; downtime [0-9]+ ms/)) {
          s = substr(line, RSTART, RLENGTH); gsub(/[^0-9 ]/, " ", s); n = split(s, f, " ")
          put("stop_total", f[n-3]); put("check_down", f[n-2]); put("start_seen", f[n-1]); put("downtime", f[n])
          start_seen = f[n-1]
        }
      } else {
        # the parallel start: "timeline (ms): STEP A-B, STEP A-B, …" (ms from its start)
        if (match(line, /timeline \(ms\): .*/)) {
          s = substr(line, RSTART + 15); n = split(s, part, ", ")
          for (i = 1; i <= n; i++) {
            m = split(part[i], w, " "); split(w[m], ab, "-"); name = w[1]
            for (j = 2; j < m; j++) name = name "_" w[j]
            printf "ferry %s tl:%s:from %d\n", run, name, ab[1] * 1000
            printf "ferry %s tl:%s:to %d\n", run, name, ab[2] * 1000
            if (!(name in order)) order[name] = i
          }
        }
        else if (line ~ / ip addr add .*\([0-9]+ ms\)$/)            put("ip_add", ms(line))
        else if (line ~ / gratuitous arp .*\([0-9]+ ms\)$/)         put("announce", ms(line))
        else if (line ~ / acquire lease /)                            put("lease_acq", ms(line))
        else if (line ~ / vgchange --addtag /)                        put("vg_tag", ms(line))
        else if (line ~ / vgchange -a y /)                            put("vg_act", ms(line))
        else if (line ~ /nothing to activate/)                        put("vg_act", ms(line))
        else if (line ~ / mount -t .*\([0-9]+ ms\)$/)               add("fs_mount", ms(line))
        else if (line ~ / docker daemon answers .*\([0-9]+ ms\)$/)  put("d_start", ms(line))
        else if (line ~ / boots while the storage comes up \([0-9]+ ms\)$/) put("d_prepare", ms(line))
        else if (line ~ / is up \([0-9]+ ms\)$/)                     put("c_start", ms(line))
        else if (match(line, /start done in [0-9]+ ms/)) {
          s = substr(line, RSTART, RLENGTH); gsub(/[^0-9]/, "", s); put("start_done", s); start_done = s
        }
      }
    }
    END {
      for (k in acc) put(k, acc[k])
      if (start_seen != "" && start_done != "") put("start_overhead", start_seen - start_done)
      n = split("precheck c_stop d_stop umount vg_deact vg_untag lease_rel ip_del ip_add announce lease_acq vg_tag vg_act fs_mount d_start c_start start_done downtime", want, " ")
      for (i = 1; i <= n; i++) if (!seen[want[i]]) printf "bench: warning: no %s line in this ferry output\n", want[i] > "/dev/stderr"
    }' "$file" >>"$SAMPLES"
}

# n counts ferry relocations, for file names.
FERRY_N=0
ferry_relocate() {   # FROM TO RUN (RUN = - for a warm-up)
  local from=$1 to=$2 run=$3 out t0 t1
  FERRY_N=$((FERRY_N + 1))
  out=$WORK/ferry-$FERRY_N-$from-$to.out
  STAGE="ferry relocate $from → $to (run $run)"
  t0=$(now_us)
  if ! op "$from" ferry relocate "$SVC" --to "$to" >"$out" 2>&1; then
    cat "$out" >&2
    die "ferry relocate $SVC --to $to on $from failed (output above)"
  fi
  t1=$(now_us)
  if [[ $run != - ]]; then
    parse_ferry "$out" "$to" "$run"
    add ferry "$run" wall $((t1 - t0))
  fi
}

# ------------------------------------------------------------ podman (podbox)

# `ferry relocate podbox` (issue 15): one `ferry relocate` output → samples
# of source podman: the container's stop and start, the totals, downtime.
parse_podman() {   # FILE TO RUN
  awk -v to="$2" -v run="$3" '
    function ms(line) {
      if (match(line, /\([0-9]+ ms\)$/)) return substr(line, RSTART + 1, RLENGTH - 5) + 0
      return -1
    }
    function put(key, v) { if (v >= 0) printf "podman %s %s %d\n", run, key, v * 1000 }
    {
      remote = (index($0, to ": ") == 1); line = $0
      if (remote) line = substr(line, length(to) + 3)
      if (!remote && line ~ /CONTAINER#1 .*no podman process of the service left/) put("c_stop", ms(line))
      else if (!remote && line ~ / umount \/.*\([0-9]+ ms\)$/) put("umount", ms(line))
      else if (remote && line ~ /CONTAINER#1 .* is up \([0-9]+ ms\)$/) put("c_start", ms(line))
      else if (remote && line ~ / mount -t .*\([0-9]+ ms\)$/) put("fs_mount", ms(line))
      else if (remote && match(line, /start done in [0-9]+ ms/)) {
        s = substr(line, RSTART, RLENGTH); gsub(/[^0-9]/, "", s); put("start_done", s)
      } else if (!remote && match(line, /relocated to [^:]+: stop [0-9]+ ms, check down [0-9]+ ms, start [0-9]+ ms; downtime [0-9]+ ms/)) {
        s = substr(line, RSTART, RLENGTH); gsub(/[^0-9 ]/, " ", s); n = split(s, f, " ")
        put("stop_total", f[n-3]); put("downtime", f[n])
      }
    }' "$1" >>"$SAMPLES"
}

PODMAN_N=0
podman_relocate() {   # FROM TO RUN (RUN = - for a warm-up)
  local from=$1 to=$2 run=$3 out
  PODMAN_N=$((PODMAN_N + 1))
  out=$WORK/podman-$PODMAN_N-$from-$to.out
  STAGE="ferry relocate podbox $from → $to (run $run)"
  op "$from" ferry relocate podbox --to "$to" >"$out" 2>&1 || { cat "$out" >&2; die "ferry relocate podbox --to $to on $from failed (output above)"; }
  [[ $run == - ]] || parse_podman "$out" "$to" "$run"
}

# podbox on node1 and node2, then RUNS rounds there and back (busybox stays
# where it is: the two services move independently).
podman_bench() {
  [[ ${BENCH_PODMAN:-1} == 1 ]] || return 0
  local pconf=/etc/ferry/services/podbox.conf r
  STAGE="podbox set-up (nodes = node1 node2, reload, sync, start)"
  say "podman: podbox on two nodes, warm-up, then $RUNS rounds there and back"
  root node1 sed -i 's/^nodes = .*/nodes = node1 node2/' "$pconf"
  { op node1 ferry reload && op node1 ferry sync podbox --force && op node1 ferry start podbox; } \
    >"$WORK/podman-setup.out" 2>&1 || { cat "$WORK/podman-setup.out" >&2; die "podbox set-up failed"; }
  podman_relocate node1 node2 -
  podman_relocate node2 node1 -
  for ((r = 1; r <= RUNS; r++)); do
    podman_relocate node1 node2 "$r.1"
    podman_relocate node2 node1 "$r.2"
  done
}

# ------------------------------------------------------------ plain shell

# Both sides run inside the node as ONE bash each, which times its own steps
# with $EPOCHREALTIME (a builtin: no fork, no lab-exec overhead counted) and
# prints "KEY MICROSECONDS" lines. Paths and arguments are the helper's
# (helper/src/container/daemon.rs, DESIGN §7).
NODE_COMMON='
set -euo pipefail
S=/var/lib/ferry/busybox
SOCK=$S/docker.sock
VIP=203.0.113.25
DEV=lab0
VG=vgbusybox
DISK=/run/ferry-lab/disks/data0
MNT=/srv/busybox
DISK2=/run/ferry-lab/disks/data1
MNT2=/srv/busybox/appdata
export DOCKER_CONFIG=$S/docker-config
docker_() { docker -H "unix://$SOCK" "$@"; }
# A sleep without a fork: read from a pipe nobody writes to.
exec {NAPFD}<> <(:)
nap() { read -r -t "$1" -u "$NAPFD" _ || :; }
# Results go to fd 3 (stdout), so `step KEY CMD >/dev/null` silences CMD only.
exec 3>&1
step() {   # KEY CMD...: run, print "KEY us"; a failure names the step
  local key=$1 t0 t1; shift
  t0=${EPOCHREALTIME//[.,]/}
  if ! "$@"; then echo "shell step $key failed on $(hostname): $*" >&2; exit 1; fi
  t1=${EPOCHREALTIME//[.,]/}
  echo "$key $((t1 - t0))" >&3
}
'

SHELL_STOP=$NODE_COMMON'
NODE=$1
# State letter of a process, empty when gone; a zombie counts as gone
# (PID 1 here reaps orphans only every few seconds: never kill -0 alone).
gone() {
  local s=""
  { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 0
  s=${s##*) }; s=${s%% *}
  [[ $s == Z || $s == X ]]
}
terminate() {   # PIDFILE: SIGTERM, wait (bounded, 15 s) until gone
  local pid i
  pid=$(<"$1")
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 5000; i++)); do gone "$pid" && return 0; nap 0.003; done
  echo "pid $pid ($1) still runs 15 s after SIGTERM" >&2; return 1
}
stop_daemons() {
  terminate $S/docker.pid || return 1
  terminate $S/containerd.pid || return 1
  rm -f $S/docker.sock $S/docker.pid $S/containerd.sock $S/containerd.sock.ttrpc $S/containerd.pid
}
umount_all() {
  # a dockerd that died badly leaves its netns bind mount behind
  if grep -q " $S/x/netns/default " /proc/self/mounts; then umount "$S/x/netns/default" || return 1; fi
  umount -R "$MNT"
}
step c_stop   docker_ stop -t 10 busybox.container.1 >/dev/null
step d_stop   stop_daemons
step umount   umount_all
step vg_deact vgchange -q -a n "$VG" >/dev/null
step vg_untag vgchange -q --deltag "$NODE" "$VG" >/dev/null
step ip_del   ip addr del "$VIP/24" dev "$DEV"
'

SHELL_START=$NODE_COMMON'
NODE=$1
fsck1() { local rc=0; e2fsck -p "$1" >/dev/null || rc=$?; ((rc <= 1)) || { echo "e2fsck -p $1 exit $rc" >&2; return 1; }; }
fsck_() { fsck1 "$DISK" && fsck1 "$DISK2"; }
mount_() { mount -t ext4 -o rw "$DISK" "$MNT" && mount -t ext4 -o rw "$DISK2" "$MNT2"; }
probe() {   # iputils: exit 0 = no answer = the address is free
  arping -D -c1 -w1 -I "$DEV" "$VIP" >/dev/null || { echo "$VIP is in use on the wire" >&2; return 1; }
}
# LOG CMD...: in the background, detached like the helper does it: its own
# session, a clean environment, no inherited descriptor but stdin (/dev/null)
# and stdout/stderr (LOG, appended). $! is the pid of the daemon (exec all along).
detach() {
  local log=$1; shift
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      ((fd > 2)) && eval "exec $fd>&-"
    done 2>/dev/null
    exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin setsid "$@"
  ) </dev/null >>"$log" 2>&1 &
}
start_daemons() {
  local i pid
  rm -f $S/docker.sock $S/docker.pid $S/containerd.sock $S/containerd.sock.ttrpc $S/containerd.pid
  detach $S/containerd.log containerd --config $S/containerd.toml
  pid=$!
  echo "$pid" >$S/containerd.pid
  for ((i = 0; i < 2000; i++)); do [[ -S $S/containerd.sock ]] && break; nap 0.005; done
  [[ -S $S/containerd.sock ]] || { echo "containerd does not listen after 10 s" >&2; return 1; }
  detach $S/dockerd.log dockerd -H unix://$SOCK --data-root $MNT/docker --exec-root $S/x \
    --pidfile $S/docker.pid --containerd $S/containerd.sock --config-file $S/daemon.json \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip $VIP
  for ((i = 0; i < 2000; i++)); do
    [[ $(curl -s -m 2 --unix-socket "$SOCK" http://docker/_ping 2>/dev/null) == OK ]] && return 0
    nap 0.01
  done
  echo "dockerd does not answer /_ping after 20 s" >&2; return 1
}
until_running() {
  local i
  for ((i = 0; i < 3000; i++)); do
    [[ $(docker_ inspect -f "{{.State.Running}}" busybox.container.1) == true ]] && return 0
    nap 0.005
  done
  echo "busybox.container.1 not running after 30 s" >&2; return 1
}
step arp_probe     probe
step ip_addr_add   ip addr add "$VIP/24" dev "$DEV"
step announce      busybox arping -U -c1 -I "$DEV" "$VIP" >/dev/null
step vg_tag        vgchange -q --addtag "$NODE" "$VG" >/dev/null
step vg_act        vgchange -q -a y "$VG" >/dev/null
step e2fsck        fsck_
step mount_only    mount_
step d_start       start_daemons
step docker_start  docker_ start busybox.container.1 >/dev/null
step until_running until_running
'

shell_relocate() {   # FROM TO RUN (RUN = - for a warm-up)
  local from=$1 to=$2 run=$3 f
  f=$WORK/shell-$from-$to-$run
  STAGE="plain-shell relocation $from → $to (run $run): stop on $from"
  root "$from" bash -c "$SHELL_STOP" shell-stop "$from" >"$f.stop" \
    || die "plain-shell stop on $from failed; steps done: $(tr '\n' ' ' <"$f.stop")"
  STAGE="plain-shell relocation $from → $to (run $run): start on $to"
  root "$to" bash -c "$SHELL_START" shell-start "$to" >"$f.start" \
    || die "plain-shell start on $to failed; steps done: $(tr '\n' ' ' <"$f.start")"
  if [[ $run != - ]]; then
    local k v stop=0 start=0
    while read -r k v; do add shell "$run" "$k" "$v"; stop=$((stop + v)); done <"$f.stop"
    while read -r k v; do add shell "$run" "$k" "$v"; start=$((start + v)); done <"$f.start"
    add shell "$run" stop_total "$stop"
    add shell "$run" start_done "$start"
    add shell "$run" downtime $((stop + start))
  fi
}

# ------------------------------------------------------------ extra measurements

# CMD run $CALLS times as USER (op or root) in NODE, each timed in one bash
# loop inside the node; samples under KEY.
time_calls() {   # KEY NODE USER CMD...
  local key=$1 node=$2 user=$3; shift 3
  local loop='n=$1; shift; for ((i = 0; i < n; i++)); do
      t0=${EPOCHREALTIME//[.,]/}; "$@" >/dev/null || { echo "call failed: $*" >&2; exit 1; }
      t1=${EPOCHREALTIME//[.,]/}; echo $((t1 - t0)); done'
  local out
  STAGE="measuring $key"
  if [[ $user == root ]]; then
    out=$(root "$node" bash -c "$loop" time-calls "$CALLS" "$@") || die "$key: $* failed in $node"
  else
    out=$(op "$node" bash -c "$loop" time-calls "$CALLS" "$@") || die "$key: $* failed in $node as $user"
  fi
  local i=0 v
  for v in $out; do i=$((i + 1)); add extra "$i" "$key" "$v"; done
}

# KEY NODE USER PATH IFACE MEMBER: $CALLS calls over one bus connection
# (tests/integration/minibus.py), each timed in-process: what a client that
# stays connected (a Cockpit page, a monitor) waits for one call.
MINIBUS_PY=$(cat "$HERE/../integration/minibus.py")
time_bus_calls() {
  local key=$1 node=$2 user=$3; shift 3
  local out i=0 v
  STAGE="measuring $key"
  if [[ $user == root ]]; then
    out=$(root "$node" python3 -c "$MINIBUS_PY" time "$CALLS" "$@") || die "$key: $* failed in $node"
  else
    out=$(op "$node" python3 -c "$MINIBUS_PY" time "$CALLS" "$@") || die "$key: $* failed in $node as $user"
  fi
  for v in $out; do i=$((i + 1)); add extra "$i" "$key" "$v"; done
}

helper_rss_kb() {   # NODE
  root "$1" bash -c 'p=$(cat /run/ferry-lab/ferry-helper.pid) && awk "/^VmRSS:/ {print \$2}" /proc/$p/status' \
    || die "cannot read ferry-helper's VmRSS in $1"
}

# ------------------------------------------------------------ statistics

# "median min max count" of the samples SOURCE KEY, in µs; empty when none.
stats() {
  awk -v s="$1" -v k="$2" '$1 == s && $3 == k {print $4}' "$SAMPLES" | sort -n | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) exit
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "%s %s %s %d\n", m, v[1], v[NR], NR
    }'
}

# Per-run sum of several keys of one source, stored as a new key.
derive_sum() {   # SOURCE NEWKEY KEY...
  local src=$1 new=$2; shift 2
  awk -v s="$src" -v new="$new" -v keys="$*" '
    BEGIN { n = split(keys, k, " "); for (i = 1; i <= n; i++) want[k[i]] = 1 }
    $1 == s && ($3 in want) { sum[$2] += $4; cnt[$2]++ }
    END { for (r in sum) if (cnt[r] == n) printf "%s %s %s %d\n", s, r, new, sum[r] }' "$SAMPLES" >"$WORK/derived"
  cat "$WORK/derived" >>"$SAMPLES"
}

fmt_ms() {   # µs → ms, precision by size
  awk -v u="$1" 'BEGIN { m = u / 1000; if (m < 1) printf "%.2f", m; else if (m < 10) printf "%.1f", m; else printf "%.0f", m }'
}

cell() {   # SOURCE KEY [plain]: "median (min–max)" in ms, "–" when no samples
  local st med mn mx n
  st=$(stats "$1" "$2")
  [[ -n $st ]] || { echo "–"; return; }
  read -r med mn mx n <<<"$st"
  if [[ ${3:-} == plain || $n -eq 1 ]]; then
    fmt_ms "$med"
  else
    echo "$(fmt_ms "$med") ($(fmt_ms "$mn")–$(fmt_ms "$mx"))"
  fi
}

# ------------------------------------------------------------ the run

T_BEGIN=$(now_us)
STAGE="lab up 2"
say "building a two-node lab"
"$LAB" up 2 $( [[ ${BENCH_PODMAN:-1} == 1 ]] && echo --podman ) >"$WORK/lab-up.log" 2>&1 || { cat "$WORK/lab-up.log" >&2; die "lab up 2 failed (output above)"; }

RSS_IDLE1=$(helper_rss_kb node1)
RSS_IDLE2=$(helper_rss_kb node2)

STAGE="service set-up (nodes = node1 node2, reload, sync, start)"
say "two-node service: reload, sync --force, start on node1"
root node1 sed -i 's/^nodes = .*/nodes = node1 node2/' "$CONF"
root node1 grep -q '^nodes = node1 node2$' "$CONF" || die "could not set 'nodes = node1 node2' in node1:$CONF"
op node1 ferry reload >"$WORK/setup.out" 2>&1 || { cat "$WORK/setup.out" >&2; die "ferry reload failed"; }
op node1 ferry sync "$SVC" --force >>"$WORK/setup.out" 2>&1 || { cat "$WORK/setup.out" >&2; die "ferry sync $SVC --force failed"; }
op node1 ferry start "$SVC" >>"$WORK/setup.out" 2>&1 || { cat "$WORK/setup.out" >&2; die "ferry start $SVC failed"; }

say "warm-up: ferry node1 → node2 → node1, plain shell node1 → node2 → node1 (not counted)"
ferry_relocate node1 node2 -
ferry_relocate node2 node1 -
shell_relocate node1 node2 -
shell_relocate node2 node1 -

for ((r = 1; r <= RUNS; r++)); do
  say "round $r/$RUNS: ferry there and back, plain shell there and back"
  ferry_relocate node1 node2 "$r.1"
  ferry_relocate node2 node1 "$r.2"
  shell_relocate node1 node2 "$r.1"
  shell_relocate node2 node1 "$r.2"
done

STAGE="checking the service is up on node1"
op node1 ferry status "$SVC" >"$WORK/status.out" 2>&1 || { cat "$WORK/status.out" >&2; die "ferry status $SVC failed on node1"; }
grep -Eq '^ *overall +up' "$WORK/status.out" || { cat "$WORK/status.out" >&2; die "after the runs, $SVC is not up on node1 (status above)"; }

say "D-Bus and CLI calls, $CALLS each"
time_calls dbus_ping     node1 op   busctl --system call io.ferry.Helper1 /io/ferry/Helper1 org.freedesktop.DBus.Peer Ping
time_calls vgs_root      node1 root vgs --noheadings -o vg_tags vgbusybox
time_calls dbus_status   node1 op   busctl --system call io.ferry.Helper1 "$SVC_OBJ" io.ferry.Helper1.Service Status
time_calls announce_op   node1 op   busctl --system call io.ferry.Helper1 "$SVC_OBJ/ip_231" io.ferry.Helper1.Ip Announce
time_calls announce_root node1 root busctl --system call io.ferry.Helper1 "$SVC_OBJ/ip_231" io.ferry.Helper1.Ip Announce
time_calls status_cli    node1 op   ferry status "$SVC" --local
time_bus_calls bus_ping      node1 op   /io/ferry/Helper1 org.freedesktop.DBus.Peer Ping
time_bus_calls bus_status    node1 op   "$SVC_OBJ" io.ferry.Helper1.Service Status
time_bus_calls bus_announce_op   node1 op   "$SVC_OBJ/ip_231" io.ferry.Helper1.Ip Announce
time_bus_calls bus_announce_root node1 root "$SVC_OBJ/ip_231" io.ferry.Helper1.Ip Announce
time_calls status_slow   node1 op   ferry status "$SVC" --local --refresh

RSS_AFTER1=$(helper_rss_kb node1)
RSS_AFTER2=$(helper_rss_kb node2)

podman_bench

STAGE="writing the report"
derive_sum shell ip_add   arp_probe ip_addr_add
derive_sum shell fs_mount e2fsck mount_only
derive_sum shell c_start  docker_start until_running

row() {   # LABEL FERRY_KEY SHELL_KEY DESIGN
  local f="–" s="–"
  [[ $2 == - ]] || f=$(cell ferry "$2")
  [[ $3 == - ]] || s=$(cell shell "$3")
  echo "| $1 | $f | $s | $4 |"
}
xrow() {   # LABEL KEY NOTE
  echo "| $1 | $(cell extra "$2") | $3 |"
}

# The parallel part of ferry's start on the target: each step's median
# from/to (ms since the start's first call), as a bar (one character per
# 20 ms). "probe" is the address probe Lease.Claim started in the helper.
timeline_section() {
  local keys k from to
  keys=$(awk '$1 == "ferry" && $3 ~ /^tl:.*:from$/ {k = $3; sub(/^tl:/, "", k); sub(/:from$/, "", k); print k}' "$SAMPLES" | sort -u)
  [[ -n $keys ]] || { echo "(no timeline: the start did not run in parallel)"; echo; return; }
  echo "## Start on the target: what overlapped (ferry, medians over $((2 * RUNS)) starts, ms from the start's first call)"
  echo
  echo "| step | from | to | 0 ms, one character per 20 ms |"
  echo "| --- | --- | --- | --- |"
  for k in $keys; do
    read -r from _ <<<"$(stats ferry "tl:$k:from")"
    read -r to _ <<<"$(stats ferry "tl:$k:to")"
    echo "$from $to $k"
  done | sort -n | while read -r from to k; do
    awk -v a="$from" -v b="$to" -v k="$k" 'BEGIN {
      a /= 1000; b /= 1000; bar = ""
      for (i = 0; i < int(b / 20 + 0.5) || i == 0; i++) bar = bar (i < int(a / 20 + 0.5) ? "." : "#")
      gsub(/_/, " ", k)
      printf "| %s | %.0f | %.0f | `%s` |\n", k, a, b, bar }'
  done
  echo
}

mkdir -p "$OUTDIR"
{
  echo "# ferry relocation benchmark"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r), $(awk '/^MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo)"
  echo "- ferry: $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown), binaries from ${BIN#"$REPO"/}"
  echo "- lab: tests/lab/lab, two nodes; service busybox (ip, sanlock lease at io_timeout 1, vg, two nested fs, one container on a private containerd + dockerd). The plain shell takes no lease: ferry's downtime includes its lease and its guards, the shell's has neither."
  echo "- samples: $RUNS rounds, each node1 → node2 → node1 by ferry, then the same by plain shell: $((2 * RUNS)) relocations of each, half each way, after one uncounted warm-up round of each"
  echo "- all times in ms: median (min–max). ferry: each helper call's own time as \`ferry relocate\` prints it (as op; the target's lines come over ssh). plain shell: each command as root inside the node, timed in-node with \`\$EPOCHREALTIME\` (no lab-exec or ssh cost). DESIGN §7: the raw medians measured when the lab was designed."
  echo
  echo "| step | ferry median (min–max) | plain shell median (min–max) | DESIGN §7 |"
  echo "| --- | --- | --- | --- |"
  echo "| **source node (stop)** | | | |"
  row "container stop (\`docker stop -t 10\`, until exited)" c_stop c_stop 65
  row "daemon stop (containerd + dockerd SIGTERM, until gone)" d_stop d_stop 25
  row "\`umount\` (\`-R\`) both fs (fs#2 inside fs#1)" umount umount 7
  row "\`vgchange -a n\` (ferry: skipped for a VG it knows has no LV)" vg_deact vg_deact ""
  row "\`vgchange --deltag\`" vg_untag vg_untag ""
  row "lease release (sanlock, through the library; shell: no lease)" lease_rel - ""
  row "\`ip addr del\`" ip_del ip_del 4
  row "**stop total** (ferry: \`stop\` as timed by relocate)" stop_total stop_total ""
  row "check down here (ferry status)" check_down - ""
  echo "| **target node (start)** | | | |"
  row "ip add incl. free-address check (ferry: the probe Claim started, 200 ms window, ran while the storage came up; shell: arping first)" ip_add ip_add ""
  row "&nbsp;&nbsp;↳ free-address check (shell: iputils \`arping -D -c1 -w1\`)" - arp_probe 1010
  row "&nbsp;&nbsp;↳ \`ip addr add\`" - ip_addr_add ""
  row "announce (gratuitous ARP; shell: busybox \`arping -U -c1\`)" announce announce 15
  row "lease acquire (ferry: Lease.Claim, first; sanlock, persistent, OWNER_NOWAIT; shell: no lease)" lease_acq - ""
  row "\`vgchange --addtag\` (ferry: reads the tags only if the VG metadata changed since it knew them)" vg_tag vg_tag ""
  row "\`vgchange -a y\` (ferry: skipped for a VG it knows has no LV)" vg_act vg_act ""
  row "fs: \`e2fsck -p\` + \`mount -t ext4\`" fs_mount fs_mount "13"
  row "&nbsp;&nbsp;↳ \`e2fsck -p\`" - e2fsck 5
  row "&nbsp;&nbsp;↳ \`mount\`" - mount_only 8
  row "daemon start (ferry: containerd spawned right after the claim (\`PrepareDaemon\`, next row), then dockerd until \`/_ping\` answers; shell: containerd + dockerd)" d_start d_start 150
  row "&nbsp;&nbsp;↳ ferry: \`PrepareDaemon\` (spawn containerd, do not wait; it boots while the VG and the fs come up)" d_prepare - ""
  row "container start (until running)" c_start c_start 178
  row "&nbsp;&nbsp;↳ \`docker start\`" - docker_start 160
  row "&nbsp;&nbsp;↳ until \`.State.Running\` (shell: \`docker inspect\` polls)" - until_running 18
  row "**start total on the target** (ferry: \`start done in\`)" start_done start_done ""
  row "go + exit overhead (relocate's \`start\`, from the go to the target's exit, − target's \`start done in\`)" start_overhead - ""
  row "**downtime** (ferry: stop → started there; shell: sum of the steps)" downtime downtime "1500"
  echo
  echo "Not part of the downtime: ferry's pre-check of the target (ssh, same config, service down there) $(cell ferry precheck); the target's \`ferry start --wait-go\` made ready before the stop (ssh session, process, helper connection, lock there) $(cell ferry ready); the whole \`ferry relocate\` process seen from the host (incl. \`lab exec\`) $(cell ferry wall)."
  echo
  timeline_section
  if [[ ${BENCH_PODMAN:-1} == 1 ]]; then
    echo "## podman: service podbox, beside docker's busybox (same run)"
    echo
    echo "podbox: ip, sanlock lease (io_timeout 1), one ext4, one container run by rootful podman (storage on the ext4, no daemon). $((2 * RUNS)) \`ferry relocate podbox\` after one uncounted round; busybox stays up on node1 meanwhile. The docker column repeats busybox's figures from above (it also has a VG and two fs)."
    echo
    echo "| step | podman (podbox) median (min–max) | docker (busybox) median (min–max) |"
    echo "| --- | --- | --- |"
    echo "| container stop (podman: \`podman stop\` until conmon is gone; docker: \`docker stop\`) | $(cell podman c_stop) | $(cell ferry c_stop) |"
    echo "| daemon stop | – (no daemon) | $(cell ferry d_stop) |"
    echo "| \`umount\` | $(cell podman umount) | $(cell ferry umount) |"
    echo "| **stop total** | $(cell podman stop_total) | $(cell ferry stop_total) |"
    echo "| fs: \`e2fsck -p\` + \`mount\` | $(cell podman fs_mount) | $(cell ferry fs_mount) |"
    echo "| daemon start | – (no daemon) | $(cell ferry d_start) |"
    echo "| container start (podman: \`podman start\` + one inspect) | $(cell podman c_start) | $(cell ferry c_start) |"
    echo "| **start total on the target** | $(cell podman start_done) | $(cell ferry start_done) |"
    echo "| **downtime** | $(cell podman downtime) | $(cell ferry downtime) |"
    echo
  fi
  echo "## Calls ($CALLS each, in node1 while the service is up, timed in-node around the whole process)"
  echo
  echo "| what | median (min–max) ms | note |"
  echo "| --- | --- | --- |"
  xrow "\`busctl call\` … \`org.freedesktop.DBus.Peer Ping\` as op" dbus_ping "busctl process + bus round trip: the floor"
  xrow "\`busctl call\` … \`Service Status\` as op (read-only)" dbus_status "no polkit; from what the helper knows (status_cache.rs): no LVM, no dockerd"
  xrow "\`vgs --noheadings -o vg_tags vgbusybox\` as root (for comparison)" vgs_root "one LVM command"
  xrow "\`busctl call\` … \`ip_231 Ip Announce\` as op" announce_op "polkit check (rule for ferry-operators) + one gratuitous ARP"
  xrow "\`busctl call\` … \`ip_231 Ip Announce\` as root" announce_root "root skips polkit"
  xrow "\`ferry status busybox --local\` as op (whole process)" status_cli ""
  xrow "\`Peer Ping\` as op, over one connection (minibus.py, timed in-process)" bus_ping "the bus round trip alone"
  xrow "**\`Service Status\` as op, over one connection** (minibus.py, timed in-process)" bus_status "what a connected client waits for a status"
  xrow "\`ip_231 Ip Announce\` as op, over one connection" bus_announce_op "with the polkit check"
  xrow "\`ip_231 Ip Announce\` as root, over one connection" bus_announce_root "root skips polkit: the difference to op is polkit's cost per privileged call"
  xrow "\`ferry status busybox --local --refresh\` as op (whole process)" status_slow "the slow path: asks LVM and dockerd"
  echo
  echo "ferry-helper VmRSS: node1 $RSS_IDLE1 kB idle after \`lab up\` → $RSS_AFTER1 kB after the runs; node2 $RSS_IDLE2 kB → $RSS_AFTER2 kB."
  echo
  echo "Whole benchmark: $(( ($(now_us) - T_BEGIN) / 1000000 )) s (lab up included, lab down not)."
} >"$REPORT"

cat "$REPORT"
say "report written to ${REPORT#"$REPO"/}"
