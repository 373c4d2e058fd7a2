#!/usr/bin/env bash
# The AWX path for real: build the execution environment (execution-environment.yml) with
# ansible-builder and podman, then run jobs in it the way AWX and AAP do, and check their artifacts.
# `scripts/test.sh ee` calls this (run it under the lab lock on a shared machine).
#
#   scripts/ee.sh            build (cached), then the jobs and their checks, then take the hosts down
#   scripts/ee.sh build      only the images
#   KEEP=1 scripts/ee.sh     leave ag-ee-host, ag-ee-api and ag-ee-net up afterwards
#   FORCE=1 scripts/ee.sh    rebuild the wheelhouse and the images from scratch (no layer cache), as on a
#                            fresh machine (not the lab image: lab/images.sh builds it, cached, as for Molecule)
#
# No container registry is reachable, so the EE's base image is made from the lab's Debian image
# (lab/images.sh, localhost/agentguard-lab:bookworm) and the build is offline: the Python packages
# the build installs are downloaded on this machine first (`pip download`, with this machine's pip
# configuration, for the image's Python) into a wheelhouse that is mounted into every build step
# (PIP_NO_INDEX, PIP_FIND_LINKS); nothing of it stays in a layer. The definition built is
# execution-environment.yml with three changes only (what a Debian base needs): the base image,
# the Python (the image's /usr/bin/python3) and apt-get as the package manager. The collection's
# own Python and system requirements come from its meta/execution-environment.yml, as from Galaxy.
#
# The jobs, as AWX runs them: `ansible-runner transmit` packs the job (inventory, the machine
# credential's key, the playbook's FQCN) on the controller side, `ansible-runner worker` runs it in
# the EE container (AWX's receptor does the same in its pod), `ansible-runner process` writes the
# artifacts (job_events, status, rc, stdout) back here. The EE reaches the lab host over SSH on a
# network of its own (ag-ee-net, --internal), with a checked host key; the host is a systemd
# container of the lab image running openssh-server. Jobs: agentguard.hardening.harden_agent by its
# FQCN twice (changed, then changed=0), then a project playbook that imports
# agentguard.hardening.egress_report (the way an AWX job template, which names a file of its project,
# reaches a collection's playbook), writing its report to a mounted path.
# tests/ee/test_awx_job.py checks the artifacts, the reports and the host's firewall.
#
# Caching: each image carries the hash of its inputs in a label (like lab/images.sh): the base
# image (lab image id, wheelhouse, this script's base recipe), the EE image (base image id, the
# definition, the collection's files as listed in the tarball's FILES.json, ansible-builder's version).
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$ROOT"
# shellcheck source=lab/env.sh
. lab/env.sh

STATE=$LAB_STATE/ee
LAB_IMAGE=$LAB_IMAGE_REPO:bookworm
BASE_IMAGE=localhost/agentguard-ee:base-bookworm
EE_IMAGE=localhost/agentguard-ee:ci
LABEL=org.agentguard.ee.inputs
PYVER=3.11            # bookworm's python3; the base build fails if the image has another one
NET=ag-ee-net NET4=198.18.79.0/24 NET6=fd00:a9e:79::/64
HOST=ag-ee-host HOST4=198.18.79.20 HOST6=fd00:a9e:79::20
API=ag-ee-api API4=198.18.79.10 API6=fd00:a9e:79::10
JOB_TIMEOUT=${JOB_TIMEOUT:-600}

log() { printf 'ee: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
label_of() { podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
drop_old() {  # drop_old OLD_ID TAG: remove the image a rebuild replaced (kept when still in use)
  if [ -n "$1" ] && [ "$1" != "$(image_id "$2")" ]; then podman image rm "$1" >/dev/null 2>&1 || true; fi
}

# The base recipe: pip from the wheelhouse, and the lab image's user `agent` (uid 1000) removed, so
# the EE's uid 1000 gets group 0 and the home /runner, as in the EE images AWX runs (entrypoint).
base_containerfile() {
  cat <<EOF
FROM $LAB_IMAGE
RUN test "\$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$PYVER" \\
 && python3 "\$(echo /wheelhouse/pip-*.whl)/pip" install -q --no-index --find-links /wheelhouse --break-system-packages --root-user-action=ignore pip \\
 && userdel -r agent
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse
CMD ["bash"]
EOF
}

build() {
  local t0=$SECONDS def=$STATE/def wheels specs hash old no_cache=()
  [ -z "${FORCE:-}" ] || no_cache=(--no-cache)
  env -u FORCE lab/images.sh bookworm
  rm -rf "$def" "$STATE/context"
  mkdir -p "$def/meta"
  ansible-galaxy collection build --force --output-path "$def" "$ROOT" >/dev/null
  cp meta/ee-collections.yml "$def/meta/"
  # The definition for a Debian base, and the pip requirements the build will install.
  specs=$(python - "$def" <<'EOF'
import sys, yaml
out = sys.argv[1]
with open("execution-environment.yml") as handle:
    ee = yaml.safe_load(handle)
ee["images"]["base_image"]["name"] = "localhost/agentguard-ee:base-bookworm"
ee["dependencies"]["python_interpreter"] = {"python_path": "/usr/bin/python3"}
ee.setdefault("options", {})["package_manager_path"] = "/usr/bin/apt-get"
# pip is in the base image (ensurepip is not in Debian's python3 without python3-venv).
ee["options"]["skip_pip_install"] = True
class Dumper(yaml.SafeDumper):  # lists indented under their key, as yamllint (ansible-lint) wants
    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)
with open(out + "/execution-environment.yml", "w") as handle:
    yaml.dump(ee, handle, Dumper=Dumper, sort_keys=False, explicit_start=True, width=120)
deps = ee["dependencies"]
specs = [deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"],
         ee["options"].get("container_init", {}).get("package_pip", "dumb-init==1.2.5"),
         # ansible-builder's builder stage; pip itself for the base image
         "bindep", "pyyaml", "packaging", "pip"]
with open("meta/execution-environment.yml") as handle:
    python = yaml.safe_load(handle)["dependencies"].get("python")
if python:
    with open(python) as handle:
        specs += [line.split("#")[0].strip() for line in handle if line.split("#")[0].strip()]
print("\n".join(specs))
EOF
)
  # 1. The wheelhouse, for the image's Python (a directory per set of requirements).
  hash=$(printf '%s\n%s\n' "$specs" "$PYVER" | sha256sum | cut -c1-16)
  wheels=$STATE/wheels-$hash
  [ -z "${FORCE:-}" ] || rm -rf "$wheels"
  if [ ! -d "$wheels" ]; then
    log "downloading the wheelhouse $wheels"
    rm -rf "$wheels.tmp"
    printf '%s\n' "$specs" > "$STATE/wheelhouse.txt"
    timeout 600 pip download -q -d "$wheels.tmp" --only-binary=:all: --python-version "$PYVER" --implementation cp \
      --platform manylinux_2_36_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64 \
      -r "$STATE/wheelhouse.txt" 2>&1 | { grep -v 'is ignored' || true; }
    mv "$wheels.tmp" "$wheels"
  fi
  # 2. The base image.
  mkdir -p "$STATE/base"
  base_containerfile > "$STATE/base/Containerfile"
  hash=$({ image_id "$LAB_IMAGE"; ls "$wheels"; cat "$STATE/base/Containerfile"; } \
    | sha256sum | cut -c1-16)
  if [ "$(label_of "$BASE_IMAGE")" != "$hash" ] || [ -n "${FORCE:-}" ]; then
    log "building $BASE_IMAGE (inputs $hash)"
    old=$(image_id "$BASE_IMAGE")
    podman build -q "${no_cache[@]}" --label "$LABEL=$hash" -v "$wheels:/wheelhouse:ro" -t "$BASE_IMAGE" "$STATE/base" >/dev/null
    drop_old "$old" "$BASE_IMAGE"
  else
    log "$BASE_IMAGE is up to date (inputs $hash)"
  fi
  # 3. The EE image.
  hash=$({ image_id "$BASE_IMAGE"; cat "$def/execution-environment.yml" \
    "$def/meta/ee-collections.yml"; tar -xzOf "$def"/agentguard-hardening-*.tar.gz FILES.json MANIFEST.json;
    ansible-builder --version; } | sha256sum | cut -c1-16)
  if [ "$(label_of "$EE_IMAGE")" != "$hash" ] || [ -n "${FORCE:-}" ]; then
    log "building $EE_IMAGE with ansible-builder (inputs $hash)"
    printf 'additional_build_steps:\n  append_final:\n    - LABEL %s=%s\n' "$LABEL" "$hash" >> "$def/execution-environment.yml"
    mkdir -p "$ROOT/tests/output"
    old=$(image_id "$EE_IMAGE")
    if ! timeout 1200 ansible-builder build "${no_cache[@]}" -f "$def/execution-environment.yml" -c "$STATE/context" -t "$EE_IMAGE" \
        --container-runtime podman -v 3 --extra-build-cli-args="-v $wheels:/wheelhouse:ro" \
        > "$ROOT/tests/output/ee-build.log" 2>&1; then
      tail -n 40 "$ROOT/tests/output/ee-build.log" >&2
      die "ansible-builder build failed (tests/output/ee-build.log)"
    fi
    drop_old "$old" "$EE_IMAGE"
    # The build's intermediate stages (galaxy, builder): untagged, with the base image's label, so ours only.
    podman images -q --filter dangling=true --filter "label=$LABEL" | xargs -r podman image rm >/dev/null 2>&1 || true
  else
    log "$EE_IMAGE is up to date (inputs $hash)"
  fi
  log "images ready in $((SECONDS - t0)) s"
}

down() {
  podman rm -f -t 0 ag-ee-job "$HOST" "$API" >/dev/null 2>&1 || true
  podman network rm -f "$NET" >/dev/null 2>&1 || true
}

up() {
  local deadline state
  down
  podman network create --internal --disable-dns --subnet "$NET4" --ipv6 --subnet "$NET6" "$NET" >/dev/null
  # The allowed destination of the job's policy: something that accepts TCP on 443 (the role's canary connects).
  podman run -d --init --name "$API" --hostname "$API" --network "$NET" --ip "$API4" --ip6 "$API6" \
    "$LAB_IMAGE" nc -lk 443 >/dev/null
  podman run -d --name "$HOST" --hostname "$HOST" --network "$NET" --ip "$HOST4" --ip6 "$HOST6" \
    --cap-add NET_ADMIN --cap-add SYSLOG "$LAB_IMAGE" /sbin/init >/dev/null
  deadline=$((SECONDS + 90)) state=
  while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(timeout 10 podman exec "$HOST" systemctl is-system-running 2>/dev/null) || true
    case "$state" in running|degraded) break ;; esac
    sleep 0.5
  done
  case "$state" in running|degraded) ;; *) die "$HOST: systemd did not come up in 90 s (state '$state')" ;; esac
  podman exec "$HOST" systemctl is-active -q ssh.service || die "$HOST: sshd is not running"
}

# job IDENT PLAYBOOK [ansible-runner transmit options]: run one job in the EE as AWX does.
job() {
  local ident=$1 playbook=$2; shift 2
  log "job $ident: $playbook"
  rm -rf "${STATE:?}/out/$ident"
  set +e
  ansible-runner transmit "$STATE/job" -p "$playbook" --ident "$ident" "$@" \
    | timeout "$JOB_TIMEOUT" podman run --rm -i --name ag-ee-job --network "$NET" \
        -v "$STATE/out/reports:/reports" "$EE_IMAGE" ansible-runner worker --private-data-dir /runner \
    | ansible-runner process "$STATE/out/$ident" >/dev/null
  local rc=("${PIPESTATUS[@]}")
  set -e
  log "job $ident: transmit, worker, process exited ${rc[*]}; status $(cat "$STATE/out/$ident/artifacts/status" 2>/dev/null || echo none)"
}

jobs() {
  local t0=$SECONDS key=$STATE/job/env/ssh_key
  rm -rf "$STATE/job" "$STATE/out"
  mkdir -p "$STATE/job/env" "$STATE/job/inventory" "$STATE/job/project" "$STATE/out/reports"
  # The EE runs as uid 1000, group 0 (as AWX's EEs): the mounted report directory is theirs.
  chown 1000:0 "$STATE/out/reports"
  # The machine credential: a key of this run, its public half on the host.
  ssh-keygen -q -t ed25519 -N '' -C ag-ee -f "$STATE/key"
  cp "$STATE/key" "$key"
  podman exec -i "$HOST" sh -c 'install -d -m 700 /root/.ssh && cat > /root/.ssh/authorized_keys' < "$STATE/key.pub"
  rm -f "$STATE/key" "$STATE/key.pub"
  # The host key, checked (the private data directory is /runner in the EE).
  printf '%s %s\n' "$HOST4" "$(podman exec "$HOST" cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f1,2)" \
    > "$STATE/job/known_hosts"
  cat > "$STATE/job/inventory/hosts.yml" <<EOF
---
agents:
  hosts:
    $HOST:
      ansible_host: $HOST4
  vars:
    ansible_user: root
    ansible_ssh_common_args: -o UserKnownHostsFile=/runner/known_hosts -o StrictHostKeyChecking=yes
    egress_allow:
      - {name: lab-api, host: $API4, ports: [443], protocol: tcp}
    egress_dns_servers: [198.18.79.53]
EOF
  job harden-1 agentguard.hardening.harden_agent
  job harden-2 agentguard.hardening.harden_agent
  # A denied attempt for the report to find (198.18.79.66: nobody there, the firewall drops it first).
  podman exec "$HOST" curl -s --max-time 2 http://198.18.79.66/ >/dev/null 2>&1 || true
  # An AWX job template names a playbook of its project: one that imports the collection's playbook.
  printf -- '---\n- name: The report, from the collection in the EE\n  ansible.builtin.import_playbook: agentguard.hardening.egress_report\n' \
    > "$STATE/job/project/egress_report.yml"
  job report egress_report.yml --cmdline '-e egress_report_dir=/reports'
  log "jobs done in $((SECONDS - t0)) s"
  AG_EE_OUT=$STATE/out AG_EE_HOST=$HOST AG_EE_IMAGE=$EE_IMAGE \
    python -m pytest -q -p no:cacheprovider tests/ee
}

[ "$(id -u)" = 0 ] || die "run as root"
case "${1:-all}" in
  build) build ;;
  down) down ;;
  all)
    build
    [ -n "${KEEP:-}" ] || trap down EXIT
    up
    jobs
    ;;
  *) echo "usage: $0 [all|build|down]" >&2; exit 2 ;;
esac
