"""The recorder (egress_rules learn=true) and egress_learned against real kernels, then the proposal.

Audit mode on the lab's host namespace: more distinct destinations than the log's burst (20) over both
families, from the host's processes, from a user recorded apart (uid 100) and from a container behind a
Docker-like bridge; every one must be in the recorder's sets with its exact count, a second run must
change nothing while the sets hold members, the proposal must name what a name led to and flag the rest,
and the proposal applied in enforce mode must keep the named destinations and block the flagged one.
"""
import collections

import pytest

from ansible_collections.agentguard.hardening.plugins.filter.egress_learn_proposal import egress_learn_proposal

from .conftest import CDN4, CDN6, V4, V6

SYSTEM_UID = 100
POLICY = dict(
    allow=[dict(name="inference-api", host="api.test", ports=[443])],
    dns_servers=[V4["dns"], V6["dns"]],
    resolve_timeout=1.0,
    mode="audit",
    learn=True,
    learn_users=[str(SYSTEM_UID)],
)
# 12 CDN addresses x 2 ports x 2 families = 48 distinct destinations of the host's processes.
HOST_TARGETS = ["tcp:%s:%d" % (a, p) for a in CDN4 for p in (443, 80)] + \
               ["tcp:[%s]:%d" % (a, p) for a in CDN6 for p in (443, 80)]
RAW = ["tcp:%s:8443" % V4["forbidden"], "tcp:[%s]:8443" % V6["forbidden"]]  # no name leads there
USER_TARGETS = ["tcp:%s:80" % V4["allowed"], "tcp:[%s]:80" % V6["allowed"]]  # api.test:80, only uid 100


def members(lab):
    text = lab.run("ipset", "save").stdout
    return [line for line in text.splitlines() if line.startswith("add ag") and "-_learn" in line.split()[1]]


def recorded(lab):
    """The recorder's members as {(set, (address, protocol, port))}."""
    out = set()
    for line in members(lab):
        _, name, member = line.split()[:3]
        address, proto_port = member.rsplit(",", 1)
        protocol, port = proto_port.split(":")
        out.add((name, (address, protocol, int(port))))
    return out


def key(target):
    kind, rest = target.split(":", 1)
    host, port = rest.rsplit(":", 1)
    return host.strip("[]"), kind, int(port)


def learned(egress, names):
    return egress({"names": names, "resolvers": [V4["dns"]], "dns_source": "none"},
                  diff=False, module="agentguard.hardening.egress_learned")


def test_records_every_destination_exactly_and_proposes(lab, egress):
    bridge = lab.add_bridge("docker0", 30)
    container = lab.add_container(bridge, 2)
    policy = dict(POLICY, scope_networks=["docker0"])
    first = egress(policy)
    assert first["changed"]
    sets = lab.run("ipset", "save").stdout
    for name in ("ag4-_learn", "ag6-_learn", "ag4-_learn-u100", "ag6-_learn-u100", "ag4-_learn-fwd", "ag6-_learn-fwd"):
        assert "create %s hash:ip,port" % name in sets
    # Audit mode: every attempt connects; twice each, so each count is 2 (one packet per attempt).
    for attempt in (1, 2):
        assert set(lab.probe(HOST_TARGETS + RAW).values()) == {"ok"}, attempt
        assert set(lab.probe(USER_TARGETS, uid=SYSTEM_UID).values()) == {"ok"}, attempt
    assert set(lab.probe(["tcp:%s:8443" % V4["allowed"], "tcp:[%s]:8443" % V6["allowed"]], ns=container.ns).values()) == {"ok"}
    assert set(lab.probe(["tcp:%s:443" % V4["allowed"]]).values()) == {"ok"}  # allowed: never recorded

    # Exactly the destinations tried, each in its bucket: nothing else the host sends is recorded.
    expected = set(("ag%s-_learn" % (6 if ":" in key(t)[0] else 4), key(t)) for t in HOST_TARGETS + RAW)
    expected |= set(("ag%s-_learn-u100" % (6 if ":" in key(t)[0] else 4), key(t)) for t in USER_TARGETS)
    expected |= set((("ag4-_learn-fwd", (V4["allowed"], "tcp", 8443)), ("ag6-_learn-fwd", (V6["allowed"], "tcp", 8443))))
    assert recorded(lab) == expected
    # Idempotent while the sets hold members: their members are not state.
    again = egress(policy)
    assert not again["changed"], again.get("diff")
    assert not egress(policy, check=True)["changed"]
    assert recorded(lab) == expected

    result = learned(egress, ["cdn.test", "api.test"])
    got = collections.Counter()
    by_key = {}
    for entry in result["entries"]:
        by_key[(entry["address"], entry["protocol"], entry["port"], entry["bucket"])] = entry
        got[entry["bucket"]] += 1
    assert got == {"host": len(HOST_TARGETS) + len(RAW), "u100": 2, "fwd": 2}
    assert len(HOST_TARGETS) > 20  # more than the log's burst, every one recorded
    for target in HOST_TARGETS + RAW:
        address, protocol, port = key(target)
        assert by_key[(address, protocol, port, "host")]["count"] == 2, target
    for target in USER_TARGETS:
        address, protocol, port = key(target)
        entry = by_key[(address, protocol, port, "u100")]
        assert entry["count"] == 2 and entry["uid"] == SYSTEM_UID
        assert (address, protocol, port, "host") not in by_key  # recorded apart, not twice
    assert ("198.18.1.10", "tcp", 443, "host") not in by_key
    assert by_key[(CDN4[0], "tcp", 443, "host")]["names"] == {"cdn.test": ["resolved"]}
    assert by_key[(V4["forbidden"], "tcp", 8443, "host")]["names"] == {}
    for info in result["sets"].values():
        assert not info["full"]

    out = egress_learn_proposal({"lab": {"learned": result, "allow": POLICY["allow"], "dns_servers": POLICY["dns_servers"],
                                         "dns_mode": "pinned"}}, system_uid_max=999)
    assert out["errors"] == []
    proposed = dict((e["host"], e) for e in out["proposal"]["allow"])
    assert proposed["cdn.test"]["ports"] == [80, 443] and "users" not in proposed["cdn.test"]
    assert proposed["cdn.test"]["seen"]["count"] == 2 * len(HOST_TARGETS)
    assert proposed["api.test"]["ports"] == [80, 8443]  # 80 from uid 100, 8443 from the container
    assert "users" not in proposed["api.test"]
    assert sorted(f["host"] for f in out["proposal"]["flagged"]) == sorted([V4["forbidden"], V6["forbidden"]])
    assert all(e["host"] not in (V4["forbidden"], V6["forbidden"]) for e in out["allow"])

    # The proposal in enforce mode: what the agent needed still works, the flagged address is blocked.
    enforce = dict(policy, mode="enforce", allow=out["allow"])
    assert egress(enforce)["changed"]
    assert set(lab.probe(HOST_TARGETS[:4] + HOST_TARGETS[-4:], timeout=1.0).values()) == {"ok"}
    assert set(lab.probe(USER_TARGETS, uid=SYSTEM_UID, timeout=1.0).values()) == {"ok"}
    assert set(lab.probe(RAW, timeout=1.0).values()) == {"timeout"}
    assert not egress(enforce)["changed"]


def test_a_full_set_refuses_new_destinations(lab, egress):
    policy = dict(POLICY, learn_maxelem=5)
    egress(policy)
    assert set(lab.probe(HOST_TARGETS[:8]).values()) == {"ok"}  # audit: the traffic still passes
    result = learned(egress, [])
    status = result["sets"]["ag4-_learn"]
    assert status["entries"] == 5 and status["full"]
    assert not result["sets"]["ag6-_learn"]["full"]


@pytest.mark.parametrize("option", [dict(learn_maxelem=1000), dict(learn_timeout=3600)])
def test_a_changed_bound_recreates_the_sets(lab, egress, option):
    egress(POLICY)
    lab.probe(HOST_TARGETS[:2])
    changed = egress(dict(POLICY, **option))
    assert changed["changed"]
    assert members(lab) == []


def test_the_playbook_writes_a_valid_proposal(lab, egress, tmp_path):
    """playbooks/egress_learn.yml end to end against the lab's host namespace (one host, group agents)."""
    import json
    import os
    import subprocess

    import yaml

    from .conftest import PYTHON, ROOT

    egress(POLICY)
    assert set(lab.probe(HOST_TARGETS[:4] + RAW).values()) == {"ok"}
    host_vars = dict(egress_allow=POLICY["allow"], egress_dns_servers=POLICY["dns_servers"], egress_learn_names=["cdn.test"],
                     ansible_connection="local", ansible_become=False,
                     ansible_python_interpreter=os.path.join(ROOT, "tests", "netns", "netns-python"))
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"agents": {"hosts": {"lab": host_vars}}}))
    env = dict(os.environ, AGENTGUARD_NETNS=lab.host, AGENTGUARD_NETNS_PYTHON=PYTHON, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"), PWD=str(tmp_path))
    env["PATH"] = os.path.dirname(PYTHON) + os.pathsep + env["PATH"]
    proc = subprocess.run([os.path.join(os.path.dirname(PYTHON), "ansible-playbook"), "-i", str(inventory),
                           os.path.join(ROOT, "playbooks", "egress_learn.yml")], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    proposal = yaml.safe_load((tmp_path / "egress-learn" / "proposal.yml").read_text())
    hosts = dict((e["host"], e) for e in proposal["egress_allow"])
    assert sorted(hosts) == ["api.test", "cdn.test"]
    assert hosts["cdn.test"]["ports"] == [80, 443]
    text = (tmp_path / "egress-learn" / "proposal.yml").read_text()
    assert "# FLAGGED, left out" in text and V4["forbidden"] in text
    assert "## Flagged" in (tmp_path / "egress-learn" / "proposal.md").read_text()
