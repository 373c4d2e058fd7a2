"""The role's filters for container networks: the resolver's interfaces and the summary's warnings."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.agentguard.hardening.plugins.filter.egress_coverage_warnings import FilterModule as Warnings
from ansible_collections.agentguard.hardening.plugins.filter.egress_dns_interfaces import FilterModule as Interfaces
from ansible_collections.agentguard.hardening.plugins.filter.egress_phases import guard_skipped_reason

interfaces = Interfaces().filters()["egress_dns_interfaces"]
warnings = Warnings().filters()["egress_coverage_warnings"]


def test_interfaces_in_dnsmasq_notation_without_cidrs_or_duplicates():
    assert interfaces(["docker0", "br-+", "198.19.0.0/24", "fd00:d0c::/64", "docker0", "podman+"]) == \
        ["docker0", "br-*", "podman*"]
    assert interfaces([]) == []


@pytest.mark.parametrize("value", [["br+x"], ["0.0.0.0/0"], "docker0"])
def test_interfaces_refuse_what_the_module_refuses(value):
    with pytest.raises(AnsibleFilterError):
        interfaces(value)


def test_warnings_name_the_network_the_families_and_the_fix():
    result = {"networks": {"covered": [{"name": "docker0"}], "uncovered": [
        {"name": "br-0123456789ab", "runtime": "docker", "families": ["ipv4", "ipv6"],
         "networks": ["198.19.40.0/24", "fd00:d0c:40::/64"]},
        {"name": "virbr0", "runtime": "libvirt", "families": ["ipv6"], "networks": ["fd00:d0c:50::/64"]},
    ]}}
    access = [{"user": "agent", "uid": 1000, "socket": "/run/docker.sock", "runtime": "docker", "via": "group docker"}]
    got = warnings(result, access)
    assert got == [
        "network br-0123456789ab (docker, 198.19.40.0/24, fd00:d0c:40::/64, ipv4/ipv6) is not covered by "
        "egress_scope_networks: containers on it reach every destination over ipv4/ipv6; add 'br-0123456789ab' "
        "to egress_scope_networks",
        "network virbr0 (libvirt, fd00:d0c:50::/64, ipv6) is not covered by egress_scope_networks: containers on "
        "it reach every destination over ipv6; add 'virbr0' to egress_scope_networks",
        "restricted user agent can reach the docker socket /run/docker.sock (group docker): a container it starts "
        "is forwarded, not matched by uid; use egress_scope host with egress_scope_networks, or take the access away",
    ]


def test_no_warnings_when_nothing_is_open():
    assert warnings({"networks": {"covered": [{"name": "docker0"}], "uncovered": []}}, []) == []
    assert warnings({}) == [] and warnings(None, None) == []


def test_warnings_name_a_service_left_without_a_way_out():
    result = {"services": {"running": [{"name": "chrony", "kind": "time"}],
                           "blocked": [{"name": "chrony", "kind": "time", "needs": "an egress_allow entry for UDP 123"}]}}
    assert warnings(result) == ["chrony is running but the policy leaves it no way out (time): it needs an "
                                "egress_allow entry for UDP 123"]


def test_docker_nftables_backend_is_said_to_be_untested():
    got = warnings({"networks": {"covered": [], "uncovered": [], "docker_firewall_backend": "nftables"}})
    assert len(got) == 1 and got[0].startswith("Docker runs its nftables firewall backend") and "no test" in got[0]
    assert warnings({"networks": {"covered": [], "uncovered": [], "docker_firewall_backend": "iptables"}}) == []


def test_warnings_name_the_entries_the_tls_gate_does_not_cover():
    result = {"tls_gate": {"mode": "enforce", "ungated": [
        {"entry": "egress_allow[2]", "host": "198.18.0.20", "ports": [443, 8443],
         "reason": "an address has no server name to check: TLS to it is not gated"}]}}
    assert warnings(result) == ["egress_allow[2] (198.18.0.20, ports 443, 8443) is not gated by the TLS gate: an "
                                "address has no server name to check: TLS to it is not gated"]
    assert warnings({"tls_gate": {"mode": "off", "ungated": []}}) == []


NFT = {"name": "nftables", "unit": "nftables.service", "installed": True, "enabled": "enabled", "active": "active",
       "alters_rules": True, "opens_egress": True, "effect": "nftables.service is enabled and active; its ... run "
       "/etc/nftables.conf: flush ruleset"}


@pytest.mark.parametrize("guard, says", [(True, "agentguard-guard.service (egress_guard) restores"), ("yes", "restores"),
                                         (False, "the guard does not run (egress_guard false, or no systemd): nothing restores"), ("false", "nothing restores")])
def test_firewall_managers_are_named_with_what_the_guard_does(guard, says):
    """issue 24 item 2: in the plan's and the apply's egress_warnings (check mode too), whatever else is said."""
    found = warnings({}, [], firewalls=[NFT, dict(NFT, name="ufw", alters_rules=False)], guard=guard)
    assert len(found) == 1 and found[0].startswith("nftables (nftables.service is enabled and active") and says in found[0]
    assert warnings({}, [], firewalls=[]) == [] and warnings({}) == []
    # The guard is taken as on when the role's variable is undefined (default(true)).
    assert "restores the allowlist" in warnings({}, [], firewalls=[NFT])[0]


def test_a_guard_that_cannot_run_is_the_first_warning_and_restores_nothing():
    """Never silent: egress_guard true on a host without systemd is said in the plan's and the apply's warnings."""
    reason = "egress_guard: systemd is not PID 1 on this host, so the guard (agentguard-guard.service) is not installed"
    found = warnings({}, [], firewalls=[NFT], guard=True, host={"systemd": False})
    assert found[0].startswith(reason)
    assert len(found) == 2 and "nothing restores" in found[1] and "agentguard-guard.service (egress_guard) restores" not in found[1]
    # The same text as the role's decision says (egress_phases), from one function.
    assert found[0] == guard_skipped_reason(True, {"systemd": False})
    assert warnings({}, [], guard=True, host={"systemd": True}) == []
    assert warnings({}, [], guard=False, host={"systemd": False}) == []  # not asked for (egress_guard false, or absent)
    assert warnings({}, [], guard=True) == []  # nothing known of the host yet
