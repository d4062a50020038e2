#!/usr/bin/env bash
# Run the lab integration tests: builds a fresh lab for each suite, tears it
# down at the end (FERRY_KEEP_LAB=1 leaves it up for a look).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"

cleanup() { [ "${FERRY_KEEP_LAB:-0}" = 1 ] || "$LAB" down >/dev/null 2>&1; }
trap cleanup EXIT

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(one-node two-nodes locks-audit exclusion status guest hardening leaseloss cockpit failover tutorial pacemaker podman)
for suite in "${suites[@]}"; do
  [ -f "$HERE/$suite.sh" ] || { echo "no suite $suite" >&2; exit 2; }
  echo "=== suite $suite"
  suite_start=$SECONDS
  source "$HERE/$suite.sh"
  echo "=== suite $suite took $((SECONDS - suite_start)) s"
done

echo
if [ "$FAILED" -gt 0 ]; then
  echo "failed: ${FAILED_NAMES[*]}"
fi
echo "integration: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
