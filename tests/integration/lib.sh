# Helpers for the lab integration tests. Each test is a function run in a
# subshell with `set -e`; an assertion that fails prints what it saw.

LAB=${LAB:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../lab" && pwd)/lab}
SVC=busybox
VIP=203.0.113.25

# on NODE [--user U] -- CMD…   (output on stdout, status preserved)
on() { "$LAB" exec "$@"; }
# as USER NODE CMD…
as() { local u=$1 n=$2; shift 2; "$LAB" exec "$n" --user "$u" -- "$@"; }
root_on() { local n=$1; shift; "$LAB" exec "$n" -- "$@"; }

fail() { echo "ASSERTION FAILED: $*" >&2; exit 1; }

# expect_code N CMD… : run, keep its output in $OUT, require exit status N
expect_code() {
  local want=$1; shift
  set +e
  OUT=$("$@" 2>&1)
  local got=$?
  set -e
  printf '%s\n' "$OUT"
  [ "$got" = "$want" ] || fail "exit $got (wanted $want): $*"
}
expect_ok() { expect_code 0 "$@"; }

# contains NEEDLE [TEXT] (TEXT defaults to $OUT)
contains() {
  local needle=$1 text=${2-$OUT}
  grep -qF -- "$needle" <<<"$text" || fail "expected '$needle' in:
$text"
}
lacks() {
  local needle=$1 text=${2-$OUT}
  ! grep -qF -- "$needle" <<<"$text" || fail "did not expect '$needle' in:
$text"
}
# matches REGEX [TEXT]
matches() {
  local re=$1 text=${2-$OUT}
  grep -qE -- "$re" <<<"$text" || fail "expected /$re/ in:
$text"
}

# The status line of one resource: "up", "down", …
res_state() { # NODE RID
  as op "$1" ferry status "$SVC" | awk -v rid="$2" '$0 ~ "- "rid" " {print $4; exit}'
}
container_id() { # NODE → 12-char id of the running container, or empty
  as op "$1" ferry status "$SVC" | sed -n 's/.*container#1 *\.\.\.\. up *\([0-9a-f]\{12\}\)@.*/\1/p'
}

# What a node really has, asked as root, not through ferry.
node_has_vip() { root_on "$1" ip -4 -br addr show dev lab0 | grep -qF "$VIP/"; }
node_has_mount() { root_on "$1" findmnt -n /srv/busybox >/dev/null 2>&1; }
# The nodes share one pid namespace: count only processes in the node's own
# mount namespace.
node_runs_dockerd() { # NODE [SVC]
  root_on "$1" sh -c 'me=$(readlink /proc/self/ns/mnt)
    for p in $(pgrep -f "dockerd.*/var/lib/ferry/$0/"); do
      [ "$(readlink /proc/$p/ns/mnt 2>/dev/null)" = "$me" ] && exit 0
    done; exit 1' "${2:-$SVC}"
}
node_is_clean() { # NODE: nothing of the service is left on it
  ! node_has_vip "$1" || fail "$1 still has $VIP"
  ! node_has_mount "$1" || fail "$1 still has /srv/busybox mounted"
  ! node_runs_dockerd "$1" || fail "$1 still runs the service's dockerd"
}

PASSED=0
FAILED=0
FAILED_NAMES=()
run_test() { # NAME FUNCTION
  local name=$1 fn=$2 log
  log=$(mktemp)
  local t0=$(date +%s%N)
  if ( set -e; "$fn" ) >"$log" 2>&1; then
    PASSED=$((PASSED + 1))
    printf 'test %-60s ok (%d ms)\n' "$name" $((($(date +%s%N) - t0) / 1000000))
    # numbers a test measured, shown even when it passes
    grep '^measured: ' "$log" | sed 's/^/    /' || true
  else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    printf 'test %-60s FAILED\n' "$name"
    sed 's/^/    | /' "$log" | tail -60
  fi
  rm -f "$log"
}

# hold_lock USER FILE [call]: a client of USER's on node1 that takes
# busybox's Service.Lock over its own bus connection and keeps it
# (minibus.py hold); waits for its word ("locked <pid>" or "error <name>").
MINIBUS_PY=$(cat "$(dirname "${BASH_SOURCE[0]}")/minibus.py")
hold_lock() {
  local user=$1 file=$2 i
  root_on node1 rm -f "$file" "$file.go" "$file.call"
  as "$user" node1 python3 -c "$MINIBUS_PY" hold busybox "$file" ${3:-} >/dev/null 2>&1 &
  for i in $(seq 50); do
    root_on node1 test -s "$file" && break
    sleep 0.1
  done
  root_on node1 cat "$file" 2>/dev/null || fail "the lock holder did not answer"
}

# node1's helper log: its size now, and what was logged since that size.
HELPER_LOG=/var/log/ferry-helper.log
log_size() { root_on node1 stat -c %s "$HELPER_LOG"; }
log_since() { sleep 0.2; root_on node1 tail -c +$(($1 + 1)) "$HELPER_LOG"; }
