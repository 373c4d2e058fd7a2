"""The host's own services that need a way out, and whether a policy gives them one."""
import os

from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P
from ansible_collections.agentguard.hardening.plugins.module_utils import _services as S
from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import HostIO

USERS = {"_apt": 42, "_chrony": 105, "agent": 1000}


def policy(**over):
    params = dict(allow=[dict(name="api", host="198.18.0.10")], dns_servers=["198.18.0.53"])
    params.update(over)
    return P.build_policy(params, USERS.__getitem__)


def test_detect_by_process_name_each_once_sorted():
    comms = ["bash", "chronyd", "dhclient", "dhclient", "unattended-upgr", "systemd-network", "sshd"]
    assert S.detect_services(comms) == [
        {"name": "dhclient", "kind": "dhcp"}, {"name": "systemd-networkd", "kind": "dhcp"},
        {"name": "chrony", "kind": "time"}, {"name": "unattended-upgrades", "kind": "updates"}]
    assert S.detect_services(set()) == []


def test_the_hosts_comms_of_a_proc_tree(tmp_path):
    for pid, comm in (("1", "systemd\n"), ("77", "chronyd\n")):
        os.makedirs(str(tmp_path / pid))
        (tmp_path / pid / "comm").write_text(comm)
    os.makedirs(str(tmp_path / "self"))
    os.makedirs(str(tmp_path / "99"))  # ended while read: no comm
    assert HostIO.comms(str(tmp_path)) == {"systemd", "chronyd"}
    assert HostIO.comms(str(tmp_path / "missing")) == set()


def test_what_each_kind_needs():
    running = S.detect_services({"chronyd", "unattended-upgr", "dhclient"})
    blocked = S.blocked_services(policy(dhcp=False), running)
    assert [(b["name"], b["kind"]) for b in blocked] == [
        ("dhclient", "dhcp"), ("chrony", "time"), ("unattended-upgrades", "updates")]
    assert "egress_dhcp: true" in blocked[0]["needs"] and "UDP 123" in blocked[1]["needs"]
    recipes = policy(allow=[
        dict(name="time", host="198.18.0.123", ports=["100-200"], protocol="udp", users=["_chrony"]),
        dict(name="mirror", host="198.18.0.80", ports=[80, 443], users=["_apt"])])
    assert S.blocked_services(recipes, running) == []
    # A mirror open to everyone but not to _apt by name, or on another port, is not the recipe.
    wrong = policy(allow=[dict(name="mirror", host="198.18.0.80", ports=[80]),
                          dict(name="nts", host="198.18.0.123", ports=[4460], users=["_chrony"]),
                          dict(name="apt", host="198.18.0.81", ports=[8080], users=["_apt"])])
    assert [b["name"] for b in S.blocked_services(wrong, running)] == ["unattended-upgrades"]


def test_unrestricted_host_services_are_never_blocked():
    running = S.detect_services({"chronyd", "dhclient"})
    assert S.blocked_services(policy(scope="users", users=["agent"], dhcp=False), running) == []
    assert S.blocked_services(policy(scope="none", scope_networks=["docker0"], dhcp=False), running) == []
    assert S.blocked_services(policy(mode="audit", dhcp=False), running) == []
