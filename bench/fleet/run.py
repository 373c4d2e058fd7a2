#!/usr/bin/env python
"""Fleet rollout cost: playbooks/harden-agent.yml over M lab hosts, against `ansible -m ping`.

M systemd test hosts (lab containers from lab/lab.sh, reached over SSH on the lab network, as a
real fleet is) are hardened with playbooks/harden-agent.yml and the lab policy. Measured, as
wall time of the whole ansible run: the first run (fresh hosts), then REPS rounds that each run
the idempotent hardening and the ping floor in alternating order. Medians and the ratio.

Usage (root): .venv/bin/python bench/fleet/run.py [--hosts 20] [--reps 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)


def sh(*argv, **kw):
    return subprocess.run(argv, check=kw.pop("check", True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, **kw)


def env():
    e = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_PIPELINING="true",
             ANSIBLE_FORKS="25", CONTAINERS_CONF=os.path.join(ROOT, "lab", "containers.conf"),
             ANSIBLE_HOST_KEY_CHECKING="false")
    e["PATH"] = VENV_BIN + os.pathsep + e["PATH"]
    return e


def start_hosts(count):
    sh("bash", os.path.join(ROOT, "lab", "lab.sh"), "up")
    names = ["ag-fleet-%02d" % i for i in range(count)]
    for name in names:
        sh("bash", os.path.join(ROOT, "lab", "lab.sh"), "agent-rm", name, check=False)
        sh("bash", os.path.join(ROOT, "lab", "lab.sh"), "agent", name, "bookworm")
    addresses = {}
    for name in names:
        out = sh("podman", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name,
                 env=env()).stdout.strip()
        addresses[name] = out
    return addresses


def inventory(addresses, workdir):
    key = os.path.join(ROOT, "lab", ".state", "ssh", "id_ed25519")
    hosts = dict((name, {"ansible_host": ip}) for name, ip in addresses.items())
    inv = {"all": {"children": {"agents": {"hosts": hosts, "vars": {
        "ansible_user": "root", "ansible_ssh_private_key_file": key,
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    }}}}}
    path = os.path.join(workdir, "hosts.yml")
    with open(path, "w") as handle:
        json.dump(inv, handle)
    # The lab policy (inventories/lab/group_vars) applies to the fleet too.
    os.symlink(os.path.join(ROOT, "inventories", "lab", "group_vars"), os.path.join(workdir, "group_vars"))
    return path


def timed(argv):
    start = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          env=env(), cwd=ROOT, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(argv), proc.stdout[-3000:]))
    return elapsed, proc.stdout


def recap_changed(output):
    return sum(int(part.split("=")[1]) for line in output.splitlines() if " : ok=" in line
               for part in line.split() if part.startswith("changed="))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the hosts running")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "fleet.json"))
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="agfleet-")
    addresses = start_hosts(args.hosts)
    inv = inventory(addresses, workdir)
    # One batch (serial is a play keyword: extra vars only): this measures the work, not the rollout's pacing.
    # A whole fleet in one batch on a small controller needs more than the default 60 s between
    # arming the on-host rollback and disarming it over a fresh connection.
    play = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inv,
            "-e", '{"egress_serial": ["100%"], "egress_rollback_timeout": 300}',
            os.path.join(ROOT, "playbooks", "harden-agent.yml")]
    ping = [os.path.join(VENV_BIN, "ansible"), "-i", inv, "agents", "-m", "ansible.builtin.ping"]
    try:
        timed(ping)  # host keys, ControlMaster sockets: the same warm start for both sides
        first, output = timed(play)
        assert recap_changed(output) > 0
        runs = {"idempotent": [], "ping": []}
        for rep in range(args.reps):
            for side in (("idempotent", "ping") if rep % 2 == 0 else ("ping", "idempotent")):
                elapsed, output = timed(play if side == "idempotent" else ping)
                if side == "idempotent":
                    assert recap_changed(output) == 0, "the re-run changed something"
                runs[side].append(elapsed)
                print("rep %d %-10s %.1f s" % (rep + 1, side, elapsed), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            for name in addresses:
                sh("bash", os.path.join(ROOT, "lab", "lab.sh"), "agent-rm", name, check=False)
    med = dict((k, statistics.median(v)) for k, v in runs.items())
    result = {"hosts": args.hosts, "first_run_s": round(first, 1), "median_s": med, "runs": runs,
              "ratio_idempotent_vs_ping": round(med["idempotent"] / med["ping"], 2),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print("| M hosts | first run (s) | idempotent run (s) | ansible -m ping (s) | idempotent / ping |")
    print("|---|---|---|---|---|")
    ratio = result["ratio_idempotent_vs_ping"]
    print("| %d | %.1f | %.1f | %.1f | %.2fx |" % (args.hosts, first, med["idempotent"], med["ping"], ratio))


if __name__ == "__main__":
    main()
