#!/usr/bin/env bash
# Every Molecule scenario against the offline podman lab, then the NEGATIVE CONTROL.
# `make molecule` and `scripts/test.sh molecule` call this.
#
#   scripts/molecule.sh                      all scenarios, collect failures, fail at the end
#   scripts/molecule.sh default rollback     only these (the negative control runs with `default`)
#   FAIL_FAST=1 scripts/molecule.sh          stop at the first failure
#   SCENARIO_TIMEOUT=900 (s, per scenario;   KEEP_LOGS: logs always go to tests/output/molecule/
#     `containers` gets at least 1500: it installs and loads two container engines per host)
#   KEEP_LAB=1 scripts/molecule.sh           leave the lab up afterwards (it is taken down at exit
#                                            otherwise, unless it was already up when we started)
#
# Negative control: `default` runs with --destroy never; its test host then gets an ACCEPT rule at
# the top of AGENTGUARD-EGRESS (iptables and ip6tables) and `molecule verify` MUST fail, with every
# blocked probe getting through. A verify that passes there means the tests test nothing: the
# suite fails. The host is destroyed afterwards.
set -uo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$ROOT" || exit 2
# shellcheck source=lab/env.sh
. lab/env.sh

ALL=(default users-scope audit-mode backends platforms persistence rollback filtering-dns containers)
SUITES=(bookworm bullseye trixie)   # images the scenarios use (lab/images.sh caches them)
SCENARIO_TIMEOUT=${SCENARIO_TIMEOUT:-900}
FAIL_FAST=${FAIL_FAST:-0}
LOGS=$ROOT/tests/output/molecule
mkdir -p "$LOGS"
export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0 COLUMNS=200

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=("${ALL[@]}")
for s in "${scenarios[@]}"; do
  [ -f "molecule/$s/molecule.yml" ] || { echo "molecule.sh: no scenario $s" >&2; exit 2; }
done

declare -a rows=()
failed=0
t_all=$SECONDS

say() { printf '\n=== molecule: %s\n' "$*"; }
row() { rows+=("$(printf '%-17s %-7s %5ss  %s' "$1" "$2" "$3" "${4:-}")"); }
summary() {
  printf '\n=== molecule summary (%ss in all; logs in %s)\n' "$((SECONDS - t_all))" "${LOGS#"$ROOT"/}"
  printf '%-17s %-7s %6s\n' scenario result time
  printf '%s\n' "${rows[@]}"
}
finish() {
  summary
  if [ "$failed" -ne 0 ]; then echo "molecule: FAILED"; exit 1; fi
  echo "molecule: all passed"; exit 0
}
fail_now() { failed=1; [ "$FAIL_FAST" = 1 ] && finish; return 0; }
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

# ------------------------------------------------------------------ scenarios
negative_control() {
  local t0=$SECONDS log=$LOGS/negative-control.log host=ag-mol-default rc n want
  say "NEGATIVE CONTROL: open $host's firewall, molecule verify must FAIL"
  {
    podman exec "$host" iptables -w -I AGENTGUARD-EGRESS 1 -j ACCEPT -m comment --comment "negative control" &&
    podman exec "$host" ip6tables -w -I AGENTGUARD-EGRESS 1 -j ACCEPT -m comment --comment "negative control"
  } > "$log" 2>&1 || { tail_log "$log"; row negative-control FAILED $((SECONDS - t0)) "could not open the firewall"; fail_now; return; }
  # Nothing can be logged with the firewall open: do not wait for the LOG rule's token bucket
  # (conftest.wait_for_log_budget), it only makes the control slower, never more lenient.
  MOL_LOG_BUDGET_WAIT=0 timeout 600 molecule verify -s default >> "$log" 2>&1
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
    fail_now
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

for s in "${scenarios[@]}"; do
  say "molecule test -s $s"
  t0=$SECONDS
  log=$LOGS/$s.log
  args=(test -s "$s")
  [ "$s" != default ] || args+=(--destroy never)   # kept for the negative control
  limit=$SCENARIO_TIMEOUT
  [ "$s" != containers ] || [ "$limit" -ge 1500 ] || limit=1500
  timeout "$limit" molecule "${args[@]}" > "$log" 2>&1
  rc=$?
  note=$(grep -Eo '[0-9]+ passed[^=]*' "$log" | tail -n 1 | sed 's/ *$//')
  if [ "$rc" -eq 0 ]; then
    row "$s" ok $((SECONDS - t0)) "$note"
  else
    tail_log "$log"
    [ "$rc" -eq 124 ] && note="timed out after ${limit}s" || note="rc $rc; $note"
    row "$s" FAILED $((SECONDS - t0)) "$note"
    [ "$s" = default ] || remove_leftover_hosts "$s" >> "$log" 2>&1
    fail_now
  fi
  if [ "$s" = default ]; then
    if [ "$rc" -eq 0 ]; then
      negative_control
    else
      row negative-control FAILED 0 "not run: default failed"
    fi
    timeout 300 molecule destroy -s default >> "$log" 2>&1 || true
  fi
done
finish
