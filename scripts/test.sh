#!/usr/bin/env bash
# Every test of the project, in order of cost; stops at the first failing stage.
# `make test` (and .ci/run) call this. Stages can be chosen: scripts/test.sh unit netns ...
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(pytest compat sanity lint build ee molecule)
declare -a report=()
# The unit tests on every core (pytest-xdist); the namespace tests side by side, then those that read the
# kernel's log one at a time (scripts/netns.sh). pytest exits non-zero when it collects no test.
pytest_stage() {
  python -m pytest -p no:cacheprovider -n auto tests/unit && bash scripts/netns.sh
}
run_stage() {
  local name=$1; shift
  local start=$SECONDS
  echo "=== $name"
  if "$@"; then
    report+=("$(printf '%-9s ok      %4ds' "$name" $((SECONDS - start)))")
  else
    report+=("$(printf '%-9s FAILED  %4ds' "$name" $((SECONDS - start)))")
    printf '%s\n' "=== summary" "${report[@]}"
    exit 1
  fi
}
for stage in "${stages[@]}"; do
  case $stage in
    pytest)   run_stage pytest pytest_stage ;;
    unit)     run_stage unit python -m pytest -q -p no:cacheprovider -n auto tests/unit ;;
    netns)    run_stage netns bash scripts/netns.sh ;;
    compat)   run_stage compat bash scripts/compat.sh ;;
    sanity)   run_stage sanity bash scripts/sanity.sh ;;
    lint)     run_stage lint bash scripts/lint.sh ;;
    build)    run_stage build bash scripts/build.sh importer ;;
    # The AWX path: the EE image built with ansible-builder, jobs run in it with ansible-runner (podman).
    ee)       run_stage ee bash scripts/ee.sh ;;
    molecule) run_stage molecule bash scripts/molecule.sh ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
printf '%s\n' "=== summary" "${report[@]}"
