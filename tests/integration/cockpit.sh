# ferry's Cockpit page (cockpit/) in a real browser: headless Chromium,
# driven by Selenium (cockpit-browser.py), against cockpit-ws in node1 run
# as `op` and as `guest` (--local-session: no login, the bridge runs as that
# user and talks to node1's own system bus). Two nodes, so the page can
# relocate. Screenshots: target/cockpit-screenshots/.

"$LAB" up 2 || { echo "lab up failed"; FAILED=$((FAILED + 1)); return 0; }

CONF=/etc/ferry/services/busybox.conf
SHOTS=$(cd "$HERE/../.." && pwd)/target/cockpit-screenshots
URL_OP=http://127.0.0.1:9090/cockpit/@localhost/ferry/index.html
URL_GUEST=http://127.0.0.1:9091/cockpit/@localhost/ferry/index.html
WS_PIDS=()
mkdir -p "$SHOTS"
rm -f "$SHOTS"/*.png

# cockpit-ws as USER on PORT in node1, in the background (its pid is the
# lab exec's: every step of lab exec execs).
start_ws() { # USER PORT
  "$LAB" exec node1 --user "$1" -- /usr/lib/cockpit/cockpit-ws -p "$2" -a 127.0.0.1 \
    --no-tls --local-session=cockpit-bridge >"$SHOTS/cockpit-ws-$1.log" 2>&1 &
  WS_PIDS+=($!)
}
stop_ws() {
  local p
  for p in "${WS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${WS_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  WS_PIDS=()
}
# The script goes in on stdin: node1 has a /tmp of its own, where a
# checkout under /tmp is not.
browser() { root_on node1 /usr/bin/python3 - "$@" <"$HERE/cockpit-browser.py"; }

t_setup_two_nodes_busybox_up_on_node1() {
  root_on node1 test -f /usr/share/cockpit/ferry/manifest.json || fail "the page is not installed in node1"
  root_on node1 sed -i 's/^nodes = node1$/nodes = node1 node2/' $CONF
  expect_ok as op node1 ferry reload
  expect_ok as op node1 ferry start busybox
  expect_ok as op node1 ferry sync busybox --force
  expect_ok as op node1 ferry status busybox
  contains "overall                   up"
}

t_op_sees_busybox_up_on_node1() {
  expect_ok browser op-up "$URL_OP" "$SHOTS"
  contains "node: node1"
  contains "state: up"
  matches "\|  \|- ip#1 +\.\.\.\. up +203\.0\.113\.25@lab0"
  matches "\|  '- lease#1 +\.\.\.\. up "
  matches '^node1 +up +container#1'
}

t_shell_changes_show_within_a_second() {
  expect_ok browser shell-change "$URL_OP" "$SHOTS"
  matches "measured: page shows 'down' [0-9]+ ms after .ferry stop. returned"
  matches "measured: page shows 'up' [0-9]+ ms after .ferry start. returned"
  node_has_mount node1 || fail "busybox is not mounted on node1 after ferry start"
}

t_guest_sees_the_refusal() {
  expect_ok browser guest "$URL_GUEST" "$SHOTS"
  contains "not authorized: io.ferry.audit.read"
  matches "result: ferry stop busybox failed \(exit 3\):"
  contains "not authorized: uid 2103 is not authorized for io.ferry."
  # refused, so nothing moved: the ext4 is still live on node1
  node_has_mount node1 || fail "guest's refused stop unmounted busybox"
  node_runs_dockerd node1 || fail "guest's refused stop stopped dockerd"
}

t_op_relocates_to_node2_from_the_page() {
  expect_ok browser relocate "$URL_OP" "$SHOTS"
  matches 'downtime: downtime [0-9]+ ms'
  contains "stop on node1"
  contains "start on node2"
  matches '^node2 +up +container#1'
  node_is_clean node1
  node_has_mount node2 || fail "busybox is not mounted on node2"
}

start_ws op 9090
start_ws guest 9091
run_test "cockpit: setup, busybox up on node1 (two nodes)" t_setup_two_nodes_busybox_up_on_node1
run_test "cockpit: op sees busybox up on node1" t_op_sees_busybox_up_on_node1
run_test "cockpit: ferry stop/start in a shell shows within 1 s" t_shell_changes_show_within_a_second
run_test "cockpit: guest sees ferry's refusal, action named" t_guest_sees_the_refusal
run_test "cockpit: op relocates to node2 from the page" t_op_relocates_to_node2_from_the_page
stop_ws
