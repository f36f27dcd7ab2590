#!/usr/bin/env bash
# Runs the replicated counter (examples/counter.rs) as three processes on loopback ports
# 17101-17103, SIGKILLs one, keeps counting, restarts it on its data directory and checks
# that it catches up and that every member applied the same values. About 8 s after the
# build (at most about 70 s); exits nonzero, with the members' last lines, on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p raftline-examples --example counter
bin="${CARGO_TARGET_DIR:-target}/debug/examples/counter"
work=$(mktemp -d)
peers=1=127.0.0.1:17101,2=127.0.0.1:17102,3=127.0.0.1:17103
declare -A pids=()

# Each member runs under `timeout`, so none outlives this script by more than 2 minutes even
# if the script itself is killed; `pkill -P` reaches the member behind its `timeout`.
cleanup() {
  for pid in "${pids[@]}"; do
    pkill -KILL -P "$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() {
  echo "run-counter: FAILED: $*" >&2
  for i in 1 2 3; do
    echo "--- member $i, last lines of stdout and stderr:" >&2
    tail -n 4 "$work/n$i.out" "$work/n$i.err" >&2 || true
  done
  exit 1
}

start() { # start MEMBER: starts (or restarts) member MEMBER on its data directory
  timeout 120 "$bin" --id "$1" --peers "$peers" --dir "$work/n$1" \
    >>"$work/n$1.out" 2>>"$work/n$1.err" &
  pids[$1]=$!
  disown # no "Killed" notice from bash when the member is killed
}

value() { # value MEMBER: the last counter value MEMBER printed (0 before any)
  local v
  v=$(grep -o 'counter = [0-9]*' "$work/n$1.out" 2>/dev/null | tail -n 1 | cut -d' ' -f3) || true
  echo "${v:-0}"
}

wait_until() { # wait_until MEMBER VALUE SECONDS: until MEMBER printed a counter >= VALUE
  local deadline=$((SECONDS + $3))
  while (($(value "$1") < $2)); do
    ((SECONDS < deadline)) || fail "member $1 did not reach $2 within $3 s (it shows $(value "$1"))"
    sleep 0.2
  done
}

echo "starting members 1, 2, 3 on 127.0.0.1:17101-17103 (data under $work)"
for i in 1 2 3; do start "$i"; done
wait_until 1 20 20 # an election, then 20 increments
wait_until 2 20 5
wait_until 3 20 5
echo "all three count: $(value 1), $(value 2), $(value 3)"

pkill -KILL -P "${pids[2]}" || fail "member 2 was not running"
while kill -0 "${pids[2]}" 2>/dev/null; do sleep 0.1; done # its `timeout` ends with it
echo "SIGKILLed member 2 at $(value 2)"
# Far enough for the others to snapshot and compact past member 2's log.
target=$(($(value 1) + 40))
wait_until 1 "$target" 15
wait_until 3 "$target" 5

others=$(($(value 1) > $(value 3) ? $(value 1) : $(value 3)))
restored_before=$(grep -c 'restored a snapshot' "$work/n2.out" || true)
start 2
echo "restarted member 2 on its data directory; the others are at $others"
wait_until 2 "$others" 20
restored=$(($(grep -c 'restored a snapshot' "$work/n2.out" || true) - restored_before))
echo "member 2 caught up: $(value 2) (snapshots restored since its restart: $restored)"

# The value after each log index must be the same on every member that applied it.
disagree=$(cat "$work"/n?.out | grep -o 'applied #[0-9]*: counter = [0-9]*' | sort -u |
  cut -d: -f1 | uniq -d | head -n 5) || true
[[ -z "$disagree" ]] || fail "members applied different values at: $disagree"
echo "run-counter: OK (all members applied the same value at every index)"
