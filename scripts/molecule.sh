#!/usr/bin/env bash
# Every Molecule scenario against the offline podman lab, then the NEGATIVE CONTROL.
# `make molecule` and `scripts/test.sh molecule` call this.
#
#   scripts/molecule.sh                      all scenarios, collect failures, fail at the end
#   scripts/molecule.sh default rollback     only these (the negative control runs with `default`)
#   MOLECULE_JOBS=3 (default 3)              scenarios run at the same time (a bounded worker pool)
#   FAIL_FAST=1 scripts/molecule.sh          at the first failure: start nothing more, stop the
#                                            scenarios still running (their hosts are removed)
#   SCENARIO_TIMEOUT=900 (s, per scenario;   logs always go to tests/output/molecule/<scenario>.log
#     `containers` gets at least 1500: it installs and loads two container engines per host)
#   KEEP_LAB=1 scripts/molecule.sh           leave the lab up afterwards (it is taken down at exit
#                                            otherwise, unless it was already up when we started)
#
# Concurrency: the longest scenarios start first (EXPECTED, seconds measured one at a time), each
# in its own process with its own log and timeout; a scenario listed in EXCLUSIVE waits for a time
# when it can run beside nothing it conflicts with (shared lab state, see there). Everything else a
# scenario checks on the shared lab is keyed by its hosts' own addresses (kernel LOG lines by SRC,
# the lab services' logs by peer address and port), so scenarios can run side by side.
#
# Negative control: `default` runs with --destroy never; its guard (agentguard-guard.service, which would
# put our rules back within a second) is stopped, its test host then gets an ACCEPT rule at
# the top of AGENTGUARD-EGRESS (iptables and ip6tables) and `molecule verify` MUST fail, with every
# blocked probe getting through. A verify that passes there means the tests test nothing: the
# suite fails. The host is destroyed afterwards.
set -uo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$ROOT" || exit 2
# shellcheck source=lab/env.sh
. lab/env.sh

# A scenario whose directory does not exist (none today) is skipped with a line saying so (named on
# the command line, it is an error).
ALL=(default users-scope audit-mode backends platforms persistence rollback filtering-dns containers resolved
  host-services tls-gate guard learn)
# Seconds each scenario took when run one at a time (CI machine, 2 cores, 2026-11-30). resolved: an
# estimate (about twice default's role runs; 680 s measured beside default on a machine loaded by
# other work); host-services and tls-gate: not measured yet; learn: 327 s alone (2026-12-06). Only the order uses them.
declare -A EXPECTED=([filtering-dns]=500 [containers]=430 [resolved]=400 [rollback]=230 [platforms]=240
  [backends]=205 [default]=165 [persistence]=150 [users-scope]=135 [audit-mode]=110 [host-services]=300
  [tls-gate]=300 [guard]=300 [learn]=330)
# Shared lab state: what a scenario must not run beside ("*": anything else). None today: the scenarios
# that give the lab resolver names of their own (filtering-dns's rotating name, persistence's pool) each
# write their own file in lab/.state/dns/hosts.d, and no scenario moves a name another one resolves.
declare -A EXCLUSIVE=()
SUITES=(bookworm bullseye trixie)   # images the scenarios use (lab/images.sh caches them)
SCENARIO_TIMEOUT=${SCENARIO_TIMEOUT:-900}
FAIL_FAST=${FAIL_FAST:-0}
# Three at a time on CI's 2 cores: a scenario waits on probes' timeouts, the rollback's timer, reboots and the
# guard as much as it computes. The whole stage took 1535 s with 3 (2026-12-07, load average 5 to 8), 2415 s
# with 2 in the full run before it; every scenario still passed, the longest (tls-gate) in 642 s of its 900.
MOLECULE_JOBS=${MOLECULE_JOBS:-3}
[[ "$MOLECULE_JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "molecule.sh: MOLECULE_JOBS must be a positive integer, not '$MOLECULE_JOBS'" >&2; exit 2; }
# The scenarios' shared base, named here as well: Molecule looks for it only below a VCS root.
MOLECULE=(molecule --base-config "$ROOT/.config/molecule/config.yml")
LOGS=$ROOT/tests/output/molecule
mkdir -p "$LOGS"
# One file per scenario with its result rows, written by its worker; this run's own directory.
ROWS=$(mktemp -d "${TMPDIR:-/tmp}/molecule-rows.XXXXXX") || exit 2
export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0 COLUMNS=200

declare -a scenarios=() skipped=()
if [ $# -gt 0 ]; then
  for s in "$@"; do
    [ -f "molecule/$s/molecule.yml" ] || { echo "molecule.sh: no scenario $s" >&2; exit 2; }
    scenarios+=("$s")
  done
else
  for s in "${ALL[@]}"; do
    if [ -f "molecule/$s/molecule.yml" ]; then scenarios+=("$s"); else skipped+=("$s"); fi
  done
fi

failed=0
t_all=$SECONDS

say() { printf '\n=== molecule: %s\n' "$*"; }
row() {  # row NAME RESULT SECONDS [NOTE]: appended to the rows of the scenario being run ($row_file)
  printf '%-17s %-7s %5ss  %s\n' "$1" "$2" "$3" "${4:-}" >> "${row_file:-$ROWS/lab}"
}
summary() {
  local s
  printf '\n=== molecule summary (%ss in all, %s at a time; logs in %s)\n' "$((SECONDS - t_all))" "$MOLECULE_JOBS" \
    "${LOGS#"$ROOT"/}"
  printf '%-17s %-7s %6s\n' scenario result time
  cat "$ROWS/lab" 2>/dev/null
  for s in "${scenarios[@]}"; do cat "$ROWS/$s" 2>/dev/null; done
  for s in "${skipped[@]}"; do printf '%-17s %-7s %5ss  %s\n' "$s" skipped 0 "no molecule/$s/molecule.yml yet"; done
}
finish() {
  summary
  rm -rf "$ROWS"
  if [ "$failed" -ne 0 ]; then echo "molecule: FAILED"; exit 1; fi
  echo "molecule: all passed"; exit 0
}
tail_log() { echo "--- last lines of $1"; tail -n 60 "$1"; }

# ------------------------------------------------------------------ lab
# Tests stop what they start: a lab this run brought up goes down at exit, whatever the outcome,
# so its servers do not keep running (and loading the machine) after the suite.
# shellcheck disable=SC2317  # run by the EXIT trap below
lab_down_at_exit() {
  say "lab down (KEEP_LAB=1 keeps it)"
  timeout 300 lab/lab.sh down > "$LOGS/lab-down.log" 2>&1 || tail_log "$LOGS/lab-down.log"
}
if [ "${KEEP_LAB:-0}" != 1 ] && ! podman network exists "$LAB_NET" 2>/dev/null; then
  trap lab_down_at_exit EXIT
fi
say "lab up (images cached; lab/lab.sh)"
t0=$SECONDS
for suite in "${SUITES[@]}"; do
  if ! timeout 1800 lab/images.sh "$suite" > "$LOGS/images-$suite.log" 2>&1; then
    tail_log "$LOGS/images-$suite.log"; row lab FAILED $((SECONDS - t0)) "image $suite"; failed=1; finish
  fi
done
if ! timeout 600 lab/lab.sh up > "$LOGS/lab-up.log" 2>&1; then
  tail_log "$LOGS/lab-up.log"; row lab FAILED $((SECONDS - t0)) "lab.sh up"; failed=1; finish
fi
row lab ok $((SECONDS - t0)) "$(grep -o 'all [0-9]* probes passed' "$LOGS/lab-up.log" || true)"
for s in "${skipped[@]}"; do echo "molecule.sh: skipping $s: molecule/$s/molecule.yml does not exist yet"; done

# ------------------------------------------------------------------ scenarios
# Each scenario runs in a worker process (run_scenario, in the background); its rows go to
# $ROWS/<scenario>, its exit status to $ROWS/.<scenario>.rc, the pid of the command it is waiting
# for to $ROWS/.<scenario>.pid (FAIL_FAST stops that command; `timeout` passes the signal on to
# Molecule and the Ansible processes under it).
negative_control() {
  local t0=$SECONDS log=$LOGS/negative-control.log host=ag-mol-default rc n want
  say "NEGATIVE CONTROL: open $host's firewall, molecule verify must FAIL"
  {
    podman exec "$host" systemctl stop agentguard-guard.service &&
    podman exec "$host" iptables -w -I AGENTGUARD-EGRESS 1 -j ACCEPT -m comment --comment "negative control" &&
    podman exec "$host" ip6tables -w -I AGENTGUARD-EGRESS 1 -j ACCEPT -m comment --comment "negative control"
  } > "$log" 2>&1 || { tail_log "$log"; row negative-control FAILED $((SECONDS - t0)) "could not open the firewall"; return 1; }
  # Nothing can be logged with the firewall open: do not wait for the LOG rule's token bucket
  # (conftest.wait_for_log_budget), it only makes the control slower, never more lenient.
  MOL_LOG_BUDGET_WAIT=0 timeout 600 "${MOLECULE[@]}" verify -s default >> "$log" 2>&1 &
  echo $! > "$ROWS/.default.pid"
  wait $!
  rc=$?
  # Every blocked probe must have got through; that is what must make verify fail. How many there
  # are comes from the verify tests' own list (molecule/shared/tests/conftest.py, BLOCKED).
  want=$(cd molecule/shared/tests && python -c 'import conftest; print(len(conftest.BLOCKED))' 2>>"$log") || want=unknown
  n=$(grep -c 'FAILED .*test_blocked.py::test_denied\[' "$log" || true)
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$n" = "$want" ]; then
    row negative-control ok $((SECONDS - t0)) "verify failed as it must: $n/$want blocked probes got through"
  else
    tail_log "$log"
    row negative-control FAILED $((SECONDS - t0)) "verify rc $rc with the firewall open, $n/$want blocked probes got through"
    return 1
  fi
}

# Molecule destroys a failed scenario's hosts only after its cleanup playbook passed. Hosts left
# behind (the `containers` hosts run --privileged, with dockerd inside) are removed here, by name.
remove_leftover_hosts() {  # remove_leftover_hosts SCENARIO
  local name
  for name in $(python3 -c 'import sys, yaml; print(" ".join(p["name"] for p in yaml.safe_load(open(sys.argv[1]))["platforms"]))' \
      "molecule/$1/molecule.yml"); do
    if podman container exists "$name"; then
      podman rm -f -t 10 "$name" > /dev/null && echo "molecule.sh: removed the leftover test host $name"
    fi
  done
}

run_scenario() {  # run_scenario SCENARIO (a worker): molecule test, and for `default` the negative control
  local s=$1 t0=$SECONDS log=$LOGS/$1.log rc note limit status=0
  local -a args=(test -s "$s")
  row_file=$ROWS/$s
  [ "$s" != default ] || args+=(--destroy never)   # kept for the negative control
  limit=$SCENARIO_TIMEOUT
  [ "$s" != containers ] || [ "$limit" -ge 1500 ] || limit=1500
  timeout "$limit" "${MOLECULE[@]}" "${args[@]}" > "$log" 2>&1 &
  echo $! > "$ROWS/.$s.pid"
  wait $!
  rc=$?
  note=$(grep -Eo '[0-9]+ passed[^=]*' "$log" | tail -n 1 | sed 's/ *$//')
  if [ "$rc" -eq 0 ]; then
    row "$s" ok $((SECONDS - t0)) "$note"
  else
    if [ -e "$ROWS/.stop" ]; then note="stopped (FAIL_FAST); $note"
    elif [ "$rc" -eq 124 ]; then note="timed out after ${limit}s"
    else note="rc $rc; $note"; fi
    row "$s" FAILED $((SECONDS - t0)) "$note"
    [ "$s" = default ] || remove_leftover_hosts "$s" >> "$log" 2>&1
    status=1
  fi
  if [ "$s" = default ]; then
    if [ "$rc" -eq 0 ] && [ ! -e "$ROWS/.stop" ]; then
      negative_control || status=1
    else
      row negative-control FAILED 0 "not run: default failed"
    fi
    timeout 300 "${MOLECULE[@]}" destroy -s default >> "$log" 2>&1 || true
  fi
  echo "$status" > "$ROWS/.$s.rc"
  return "$status"
}

# Longest first (EXPECTED), so that the last scenario to start is a short one.
mapfile -t pending < <(for s in "${scenarios[@]}"; do printf '%s %s\n' "${EXPECTED[$s]:-300}" "$s"; done |
  sort -k1,1nr -s | cut -d' ' -f2)
declare -A worker=()   # running scenario -> worker pid

blocked_by_running() {  # blocked_by_running SCENARIO: true when it conflicts with a running one
  local s=$1 r
  for r in "${!worker[@]}"; do
    if [ "${EXCLUSIVE[$s]:-}" = "*" ] || [ "${EXCLUSIVE[$r]:-}" = "*" ] ||
       [[ " ${EXCLUSIVE[$s]:-} " == *" $r "* ]] || [[ " ${EXCLUSIVE[$r]:-} " == *" $s "* ]]; then
      return 0
    fi
  done
  return 1
}

stop_running() {  # FAIL_FAST or an interrupt: stop every running scenario, remove its hosts
  local r pid
  touch "$ROWS/.stop"
  for r in "${!worker[@]}"; do
    pid=$(cat "$ROWS/.$r.pid" 2>/dev/null) && kill -TERM "$pid" 2>/dev/null
  done
  for r in "${!worker[@]}"; do
    wait "${worker[$r]}" 2>/dev/null
    remove_leftover_hosts "$r" >> "$LOGS/$r.log" 2>&1
    unset "worker[$r]"
  done
}
trap 'say "interrupted: stopping the running scenarios"; stop_running; failed=1; finish' INT TERM

say "scenarios, $MOLECULE_JOBS at a time, longest first: ${pending[*]}"
while [ ${#pending[@]} -gt 0 ] || [ ${#worker[@]} -gt 0 ]; do
  if [ ! -e "$ROWS/.stop" ]; then
    rest=()
    for s in "${pending[@]}"; do
      if [ ${#worker[@]} -lt "$MOLECULE_JOBS" ] && ! blocked_by_running "$s"; then
        say "start $s (log ${LOGS#"$ROOT"/}/$s.log)"
        run_scenario "$s" > /dev/null 2>&1 &
        worker[$s]=$!
      else
        rest+=("$s")
      fi
    done
    pending=("${rest[@]}")
  else
    for s in "${pending[@]}"; do row_file=$ROWS/$s row "$s" "not run" 0 "FAIL_FAST: an earlier scenario failed"; done
    pending=()
  fi
  [ ${#worker[@]} -gt 0 ] || continue
  wait -n   # one worker ended (each is bounded by its timeouts); 127: none left to wait for
  [ $? -ne 127 ] || sleep 1
  for s in "${!worker[@]}"; do
    if [ -z "${worker[$s]+set}" ] || [ ! -e "$ROWS/.$s.rc" ]; then continue; fi
    wait "${worker[$s]}"
    unset "worker[$s]"
    if [ "$(cat "$ROWS/.$s.rc")" = 0 ]; then
      say "$s passed: $(cut -c19- "$ROWS/$s" | head -n 1)"
    else
      failed=1
      say "$s FAILED: $(cut -c19- "$ROWS/$s" | tr '\n' ' ')"
      tail_log "$LOGS/$s.log"
      [ "$s" != default ] || [ ! -s "$LOGS/negative-control.log" ] || tail_log "$LOGS/negative-control.log"
      if [ "$FAIL_FAST" = 1 ] && [ ! -e "$ROWS/.stop" ]; then
        say "FAIL_FAST: stopping ${!worker[*]}"
        stop_running
        break
      fi
    fi
  done
done
finish
