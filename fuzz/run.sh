#!/usr/bin/env bash
# ferry's fuzz runs (see README, "Fuzzing").
#
#   fuzz/run.sh short         each target: its corpus, then a few seconds of
#                             new inputs (make check; stable Rust is enough)
#   fuzz/run.sh long [T…]     each target (or T…) until FUZZ_RUNS executions
#                             (default 10 million), with AddressSanitizer when
#                             a nightly toolchain is there; prints the counts
#                             (FUZZ_MAX_TIME=S: stop a target after S seconds;
#                             FUZZ_TRACE_COMPARES=0: without comparison
#                             tracing, about twice the executions a second,
#                             for a corpus that already has the keywords)
#   fuzz/run.sh cmin          fuzz/corpus/ = the seeds, the repo's config
#                             fixtures, what long runs found, minimized
#                             (cargo fuzz cmin)
#
# Crashes land in fuzz/artifacts/<target>/; the run fails on the first one.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(service_config node_config passthrough_args dbus_method)
MAX_LEN=${FUZZ_MAX_LEN:-8192}

command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz missing (make deps installs it)" >&2; exit 1; }

# Stable Rust builds the targets with coverage but no sanitizer; a nightly
# adds AddressSanitizer (zbus decodes with some unsafe code).
toolchain() {
  if [[ ${FUZZ_SANITIZER:-} == none ]]; then
    echo "none"
  elif [[ -n ${FUZZ_SANITIZER:-} ]]; then
    echo "$FUZZ_SANITIZER"
  elif rustup toolchain list 2>/dev/null | grep -q "^nightly"; then
    echo "address"
  else
    echo "none"
  fi
}

fuzz() { # fuzz SANITIZER cargo-fuzz-args…
  local san=$1
  shift
  local sub=$1
  shift
  if [[ $san == none ]]; then
    cargo fuzz "$sub" -s none "$@"
  else
    cargo +nightly fuzz "$sub" -s "$san" "$@"
  fi
}

case ${1:-short} in
short)
  # Every corpus file once, then 10 s of mutation per target. A dev build,
  # with overflow checks and debug assertions: the build, not the run, is
  # most of make check's fuzz time (optimized with one codegen unit: 7.5 min
  # on 2 cores; with 16: 3 min; dev: 1.5 min), and executions in numbers
  # are the long run's job (-O). Its own target dir: a long run's build
  # stays as it is.
  short=(--dev --target-dir fuzz/target/short)
  fuzz none build "${short[@]}"
  for t in "${TARGETS[@]}"; do
    echo "fuzz: $t"
    # New inputs go to a scratch dir: the kept corpus is only read.
    scratch="fuzz/target/short-corpus-$t"
    log="fuzz/target/short-$t.log"
    mkdir -p "$scratch"
    if ! fuzz none run "${short[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- -max_len="$MAX_LEN" \
      -max_total_time="${FUZZ_SECONDS:-10}" -print_final_stats=1 >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "fuzz: $t crashed: see $log and fuzz/artifacts/$t/" >&2
      exit 1
    fi
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units)' "$log"
  done
  ;;
long)
  shift
  ((${#@})) && TARGETS=("$@")
  san=$(toolchain)
  runs=${FUZZ_RUNS:-10000000}
  build=()
  [[ ${FUZZ_TRACE_COMPARES:-1} == 0 ]] && build=(--no-trace-compares --target-dir fuzz/target/no-trace-compares)
  fuzz "$san" build "${build[@]}"
  mkdir -p "${FUZZ_LOGS:-fuzz/logs}"
  for t in "${TARGETS[@]}"; do
    log="${FUZZ_LOGS:-fuzz/logs}/$t.log"
    echo "fuzz: $t: $runs executions, sanitizer $san, max_len $MAX_LEN, trace-compares ${FUZZ_TRACE_COMPARES:-1}, log $log"
    # New inputs go to a scratch corpus: `fuzz/run.sh cmin` folds them into
    # the kept one.
    scratch="fuzz/target/corpus-$t"
    mkdir -p "$scratch"
    start=$(date +%s)
    fuzz "$san" run "${build[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- -max_len="$MAX_LEN" \
      -runs="$runs" -max_total_time="${FUZZ_MAX_TIME:-0}" -print_final_stats=1 >"$log" 2>&1 || {
      tail -n 40 "$log" >&2
      echo "fuzz: $t crashed: see $log and fuzz/artifacts/$t/" >&2
      exit 1
    }
    secs=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "fuzz: $t: $execs executions, $rate exec/s, ${secs} s (build included), no crash"
  done
  ;;
cmin)
  (cd fuzz && cargo run -q --example gen_seeds)
  mkdir -p fuzz/seeds/service_config fuzz/seeds/node_config
  for f in tests/configs/*/*.conf tests/lab/busybox.conf tests/package/every-interface.conf; do
    cp "$f" "fuzz/seeds/service_config/$(echo "$f" | tr / _)"
  done
  printf '[node]\nhost_id = 1\n\n[peer node2]\nhost_id = 2\n' >fuzz/seeds/node_config/lab
  printf '[node]\nnodename = node1\nremote = sudo\nssh_connect_timeout = 2\nhost_id = 1\n\n[peer node2]\nremote = ssh\nhost_id = 2\n' >fuzz/seeds/node_config/full
  printf '[node]\nhost_id = 1\n[peer a]\nhost_id = 1\n[peer]\nhost_id = 0\n[other]\nx = 1\n' >fuzz/seeds/node_config/bad
  san=$(toolchain)
  fuzz "$san" build
  for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    cp -n "fuzz/seeds/$t"/* "fuzz/corpus/$t/"
    # What the long runs found (fuzz/target/corpus-<t>) joins too; cmin
    # keeps the smallest set with all their coverage.
    if [[ -d fuzz/target/corpus-$t ]]; then cp -n "fuzz/target/corpus-$t"/* "fuzz/corpus/$t/" 2>/dev/null || true; fi
    # -use_counters=0: keep one input per edge, not per hit count (a few
    # hundred files rather than thousands).
    fuzz "$san" cmin "$t" "fuzz/corpus/$t" -- -max_len="$MAX_LEN" -use_counters=0 >"fuzz/target/cmin-$t.log" 2>&1 ||
      { tail -n 20 "fuzz/target/cmin-$t.log" >&2; exit 1; }
    echo "fuzz: $t corpus: $(ls "fuzz/corpus/$t" | wc -l) files, $(du -sh "fuzz/corpus/$t" | cut -f1)"
  done
  ;;
*)
  echo "usage: fuzz/run.sh short|long [TARGET…]|cmin" >&2
  exit 2
  ;;
esac
