#!/usr/bin/env bash
# Failover benchmark (issue 13): power losses of the node running the
# service under Pacemaker, in the two-node lab with lab fencing.
#
#   bash tests/bench/failover.sh [RUNS]     (default 5; `make bench-failover`)
#
# Each run builds a fresh lab (`lab up 2 --pacemaker`: a crashed lab node
# cannot be powered on again), puts the service on node1 in odd runs and on
# node2 in even runs with `ferry relocate` (that relocation's downtime is
# printed beside the failover, same run, same lab), lets Pacemaker adopt it,
# and then `lab crash`es that node. From the crash it times, on the
# survivor:
#   detection  crash → Pacemaker logs the node lost (Corosync token 1000 ms)
#   fence      → the fence completed (stonith history, ns precision)
#   lease      → the helper acquired the lease (audit line of the acquire)
#   start      → the container answers (`ferry docker SVC -- top CID`)
#   total      crash → the container answers, with the ext4 live there
#                (kernel: /sys/fs/ext4/<the survivor's loop device>)
# and checks that the container id and a checksummed file are the same as
# before the crash, and that the ext4 was never live on both nodes. The
# Markdown report goes to stdout and target/bench/failover.md.
set -euo pipefail

RUNS=${1:-5}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB=$REPO/tests/lab/lab
BIN=${FERRY_BIN_DIR:-$REPO/target/release}
OUTDIR=$REPO/target/bench
REPORT=$OUTDIR/failover.md
CONF=/etc/ferry/services/busybox.conf

die() { echo "bench: error: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }
(( EUID == 0 )) || die "the lab needs root"
for b in ferry ferry-helper; do [[ -x $BIN/$b ]] || die "$BIN/$b is missing: cargo build --release first"; done

WORK=$(mktemp -d /tmp/ferry-bench-failover.XXXXXX)
cleanup() {
  local rc=$?
  [[ ${FERRY_KEEP_LAB:-0} == 1 ]] || "$LAB" down >/dev/null 2>&1 || true
  ((rc == 0)) && rm -rf "$WORK" || echo "bench: failed (exit $rc); raw data in $WORK" >&2
  exit "$rc"
}
trap cleanup EXIT

root() { local n=$1; shift; "$LAB" exec "$n" -- "$@"; }
op() { local n=$1; shift; "$LAB" exec "$n" --user op -- "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# "2026-12-01 21:30:02.123" or an RFC 3339 time → epoch ms
to_ms() { local s; s=$(date -u -d "$1" +%s%N 2>/dev/null) || return 1; echo $((s / 1000000)); }

# One run: prints "total detection fence lease start ext4 relocation both"
one_run() { # RUN
  local run=$1 holder survivor dev t0 t_ext4="" t_ans="" cid sum i
  if (( run % 2 )); then holder=node1 survivor=node2; else holder=node2 survivor=node1; fi
  "$LAB" up 2 --pacemaker >"$WORK/up.$run" 2>&1 || { tail -20 "$WORK/up.$run" >&2; die "lab up failed"; }
  root node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' $CONF
  root node1 cat $CONF | root node2 install -m 0644 /dev/stdin $CONF
  op node1 ferry reload >/dev/null
  op node2 ferry reload >/dev/null
  for i in $(seq 1 60); do root node1 crm_mon -1 2>/dev/null | grep -q "fence-lab.*Started" && break; sleep 0.5; done
  # start on the other node, relocate to the holder: the same run's
  # relocation downtime
  op "$survivor" ferry start busybox >/dev/null
  local reloc
  reloc=$(root "$survivor" ferry relocate busybox --to "$holder" 2>&1 | grep -o 'downtime [0-9]* ms' | grep -o '[0-9]*') \
    || die "run $run: relocate failed"
  cid=$(op "$holder" ferry status busybox | sed -n 's/.*container#1 *\.\.\.\. up *\([0-9a-f]\{12\}\)@.*/\1/p')
  [[ -n $cid ]] || die "run $run: no container on $holder"
  sum=$(root "$holder" sh -c 'head -c 1048576 /dev/urandom >/srv/busybox/check && sync && sha256sum /srv/busybox/check' | cut -d' ' -f1)
  root node1 crm configure primitive svc ocf:ferry:service params service=busybox \
    op start timeout=150s interval=0 op stop timeout=60s interval=0 \
    op monitor interval=5s timeout=30s meta resource-stickiness=100 >/dev/null
  for i in $(seq 1 100); do
    root node1 crm_resource --locate -r svc 2>/dev/null | grep -q "running on: $holder" && break
    sleep 0.2
  done
  root node1 crm_resource --locate -r svc 2>/dev/null | grep -q "running on: $holder" || die "run $run: Pacemaker did not adopt svc on $holder"
  sleep 2 # a few monitors, a quiet cluster
  dev=$(basename "$(root "$holder" readlink -f /run/ferry-lab/disks/data0)")
  local sdev
  sdev=$(basename "$(root "$survivor" readlink -f /run/ferry-lab/disks/data0)")
  # the kernel's view of both, every 10 ms, from now to the end of the run
  : >"$WORK/both.$run"
  ( while [[ ! -e $WORK/stop.$run ]]; do
      [[ -e /sys/fs/ext4/$dev && -e /sys/fs/ext4/$sdev ]] && echo BOTH >>"$WORK/both.$run"
      sleep 0.01
    done ) &
  local sampler=$!
  t0=$(now_ms)
  "$LAB" crash "$holder" >"$WORK/crash.$run" 2>&1
  while (( $(now_ms) - t0 < 180000 )); do
    if [[ -z $t_ext4 && -e /sys/fs/ext4/$sdev ]]; then t_ext4=$(now_ms); fi
    if [[ -n $t_ext4 ]] && root "$survivor" ferry docker busybox -- top "$cid" >/dev/null 2>&1; then
      t_ans=$(now_ms); break
    fi
    sleep 0.02
  done
  touch "$WORK/stop.$run"; wait "$sampler" || true
  [[ -n $t_ans ]] || die "run $run: the container did not answer on $survivor in 180 s"
  # the parts, from the survivor's logs
  local t_lost t_fence t_lease line
  # Pacemaker's log: "Dec 01 22:10:37.503 node2 …", local time (UTC here),
  # to the ms (the fence history's `completed` is cut to the second)
  pcmk_ms() { to_ms "$(awk '{print $1, $2}' <<<"$1") $(date +%Y) $(awk '{print $3}' <<<"$1")"; }
  line=$(root "$survivor" grep -E "Node $holder state is now lost" /var/log/pacemaker/pacemaker.log | head -1)
  t_lost=$(pcmk_ms "$line") || t_lost=""
  line=$(root "$survivor" grep -E "Operation 'off' targeting $holder by .*OK" /var/log/pacemaker/pacemaker.log | head -1)
  t_fence=$(pcmk_ms "$line") || t_fence=""
  line=$(root "$survivor" grep 'action="io.ferry.lease.acquire"' /var/log/ferry-helper.log | grep 'result="ok"' | tail -1)
  t_lease=$(to_ms "$(awk '{print $1}' <<<"$line")") || t_lease=""
  local takeover
  takeover=$(root "$survivor" grep -c 'io.ferry.lease.takeover' /var/log/ferry-helper.log || true)
  # what the failover must keep
  [[ $(op "$survivor" ferry status busybox | sed -n 's/.*container#1 *\.\.\.\. up *\([0-9a-f]\{12\}\)@.*/\1/p') == "$cid" ]] \
    || die "run $run: the container id changed"
  [[ $(root "$survivor" sha256sum /srv/busybox/check | cut -d' ' -f1) == "$sum" ]] || die "run $run: the checksummed file differs"
  local both=no
  [[ -s $WORK/both.$run ]] && both=YES
  d() { [[ -n $1 && -n $2 ]] && echo $(($2 - $1)) || echo "?"; }
  # how long the lab took to "lose power" (kill every process, drop the
  # mounts): the switch confirms a fence only once that is done
  local crash_ms
  crash_ms=$(grep -o 'crashed (.*) in [0-9]* ms' "$WORK/crash.$run" | grep -o '[0-9]* ms$' | grep -o '[0-9]*') || crash_ms="?"
  echo "$((t_ans - t0)) $(d "$t0" "$t_lost") $(d "$t_lost" "$t_fence") $(d "$t_fence" "$t_lease") $(d "$t_lease" "$t_ans") $((t_ext4 - t0)) $reloc $both $holder $takeover $crash_ms"
}

mkdir -p "$OUTDIR"
: >"$WORK/runs"
for run in $(seq 1 "$RUNS"); do
  say "run $run/$RUNS"
  r=$(one_run "$run")
  say "run $run: $r"
  echo "$r" >>"$WORK/runs"
done
"$LAB" down >/dev/null 2>&1 || true

stats() { # COLUMN → "median (min–max)"
  awk -v c="$1" '$c ~ /^[0-9]+$/ {print $c}' "$WORK/runs" | sort -n | awk '
    {v[NR]=$1} END { if (!NR) {print "?"; exit}
      m = (NR % 2) ? v[(NR+1)/2] : int((v[NR/2] + v[NR/2+1]) / 2)
      printf "%d (%d–%d)", m, v[1], v[NR] }'
}
{
  echo "## Failover after a power loss (\`make bench-failover\`, $RUNS runs, $(date -u +%F))"
  echo
  echo "- lab: two nodes, Corosync knet token 1000 ms, two_node; Pacemaker 2.1.5, stonith-action=off through the lab's power switch (fence_ferrylab); sanlock io_timeout 1; service busybox (ip, lease, vg, two nested fs, one container)."
  echo "- each run: a fresh lab, the service relocated onto the node to crash (odd runs node1, even node2), adopted by Pacemaker, then \`lab crash\`."
  echo
  echo "| run | crashed | **failover** | detection | fence | lease | start | ext4 live on survivor | relocation downtime | takeover lines | ext4 on both | lab crash took |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  n=0
  while read -r total det fen lea sta ext reloc both holder tk crash; do
    n=$((n + 1))
    echo "| $n | $holder | **$total** | $det | $fen | $lea | $sta | $ext | $reloc | $tk | $both | $crash |"
  done <"$WORK/runs"
  echo
  echo "| ms, median (min–max) | failover | detection | fence | lease | start | relocation downtime |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  echo "| | **$(stats 1)** | $(stats 2) | $(stats 3) | $(stats 4) | $(stats 5) | $(stats 7) |"
  echo
  echo "max failover: $(awk '{print $1}' "$WORK/runs" | sort -n | tail -1) ms"
} | tee "$REPORT"
! grep -q ' YES ' "$WORK/runs" || die "the ext4 was live on both nodes in some run"
