"""_netdev (module egress_host_state, networks=true): the guest networks and runtimes of a host.

The role compares the bridges reported here with egress_scope_networks and refuses to call a host
hardened while one is uncovered: a bridge missed here, a family wrongly counted as covered or a socket
access not reported would leave a container network open behind a green report.
The links come from real `ip -j -d addr show` output (fixtures/netdev/capture.sh).
"""
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _netdev as N
from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import HostIO

from .conftest import fake_host

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "netdev")


def fixture_text():
    with open(os.path.join(FIXTURES, "addr.json")) as handle:
        return handle.read()


def links():
    return N.parse_links(fixture_text())


def physical(*names):
    return lambda name: name in names


# --- parse_links ---------------------------------------------------------------------------------

def test_links_parsed_from_real_ip_output():
    by_name = dict((link["name"], link) for link in links())
    assert sorted(by_name) == sorted(["lo", "docker0", "veth1a2b3c4", "eth0c", "br-0123456789ab", "br0", "eno1",
                                      "eno1p", "tap0"])
    # Global addresses only: not lo's (scope host), not the fe80:: every link has (scope link).
    assert by_name["docker0"]["addresses"] == ["198.18.200.1/24", "fd00:d0c::1/64"]
    assert by_name["br-0123456789ab"]["addresses"] == ["198.18.201.1/24"]
    assert by_name["lo"]["addresses"] == [] and by_name["veth1a2b3c4"]["addresses"] == []
    assert by_name["tap0"]["addresses"] == ["198.18.203.1/32"]
    assert [by_name[n]["kind"] for n in ("docker0", "veth1a2b3c4", "tap0", "lo")] == ["bridge", "veth", "tun", ""]
    assert by_name["veth1a2b3c4"]["master"] == "docker0" and by_name["eno1"]["master"] == "br0"
    assert by_name["docker0"]["master"] is None


def test_parse_refuses_what_is_not_ip_json():
    with pytest.raises(ValueError):
        N.parse_links("Option \"-j\" is unknown, try \"ip -help\".")
    with pytest.raises(ValueError):
        N.parse_links('{"ifname": "eth0"}')
    assert N.parse_links("") == []


# --- guest_bridges -------------------------------------------------------------------------------

def test_guest_bridges_leave_out_the_host_uplink_bridge():
    bridges = N.guest_bridges(links(), physical("eno1"))
    assert bridges == [
        {"name": "br-0123456789ab", "networks": {"ipv4": ["198.18.201.0/24"], "ipv6": []}, "runtime": "docker"},
        {"name": "docker0", "networks": {"ipv4": ["198.18.200.0/24"], "ipv6": ["fd00:d0c::/64"]}, "runtime": "docker"},
    ]


def test_a_bridge_with_only_virtual_ports_is_a_guest_network():
    # The same br0 when eno1 is no hardware: a guest network, of a runtime the name does not tell.
    names = [bridge["name"] for bridge in N.guest_bridges(links(), physical())]
    assert names == ["br-0123456789ab", "br0", "docker0"]
    br0 = [bridge for bridge in N.guest_bridges(links(), physical()) if bridge["name"] == "br0"][0]
    assert br0 == {"name": "br0", "networks": {"ipv4": ["198.18.202.0/24"], "ipv6": ["fd00:1a2::/64"]},
                   "runtime": "unknown"}


def link(name, kind="", master=None, lower=None, addresses=()):
    return {"name": name, "kind": kind, "master": master, "link": lower, "addresses": list(addresses)}


@pytest.mark.parametrize("ports", [
    [link("eth0.100", "vlan", "br0", "eth0"), link("eth0")],                               # VLAN on a NIC
    [link("bond0", "bond", "br0"), link("eth0", master="bond0"), link("eth1", master="bond0")],  # bond of NICs
    [link("eth0", master="br0")],
])
def test_a_bridge_reaching_the_lan_through_a_vlan_or_bond_is_not_a_guest_network(ports):
    found = N.guest_bridges([link("br0", "bridge", addresses=["198.18.10.2/24"])] + ports, physical("eth0"))
    assert found == []


def test_several_networks_of_a_family_are_all_kept():
    found = N.guest_bridges([link("virbr0", "bridge", addresses=["198.18.1.1/24", "198.18.2.1/24", "198.18.1.7/24"])],
                            physical())
    assert found == [{"name": "virbr0", "networks": {"ipv4": ["198.18.1.0/24", "198.18.2.0/24"], "ipv6": []},
                      "runtime": "libvirt"}]


@pytest.mark.parametrize("name,runtime", [
    ("docker0", "docker"), ("br-0123456789ab", "docker"), ("br-lan", "unknown"), ("br-0123456789abc", "unknown"),
    ("podman0", "podman"), ("cni-podman0", "podman"), ("cni0", "kubernetes"), ("flannel.1", "kubernetes"),
    ("cali1234", "kubernetes"), ("virbr0", "libvirt"), ("lxdbr0", "lxd"), ("br0", "unknown"),
])
def test_runtime_guessed_from_the_bridge_name(name, runtime):
    assert N.guess_runtime(name) == runtime


# --- iface_matches and coverage ------------------------------------------------------------------

@pytest.mark.parametrize("pattern,name,matches", [
    ("docker0", "docker0", True), ("docker0", "docker01", False), ("docker", "docker0", False),
    ("br-+", "br-0123456789ab", True), ("br-+", "br0", False), ("podman+", "podman", True),
    ("virbr+", "virbr0", True), ("+", "anything", True), ("cni0+", "cni", False),
])
def test_iptables_interface_wildcards(pattern, name, matches):
    assert N.iface_matches(pattern, name) is matches


def bridges():
    return N.guest_bridges(links(), physical("eno1"))


def test_an_ipv4_cidr_leaves_the_ipv6_network_of_a_dual_stack_bridge_uncovered():
    covered, uncovered = N.coverage(["198.18.200.0/24", "198.18.201.0/24"], bridges())
    assert covered == [{"name": "br-0123456789ab", "runtime": "docker", "by": ["198.18.201.0/24"]}]
    assert len(uncovered) == 1
    entry = uncovered[0]
    assert (entry["name"], entry["runtime"], entry["families"], entry["networks"]) == (
        "docker0", "docker", ["ipv6"], ["fd00:d0c::/64"])
    assert "docker0" in entry["reason"] and "fd00:d0c::/64" in entry["reason"]


def test_cidrs_of_both_families_cover_a_dual_stack_bridge():
    covered, uncovered = N.coverage(["198.18.0.0/15", "fd00::/8"], bridges())
    assert uncovered == []
    assert covered == [{"name": "br-0123456789ab", "runtime": "docker", "by": ["198.18.0.0/15"]},
                       {"name": "docker0", "runtime": "docker", "by": ["198.18.0.0/15", "fd00::/8"]}]


def test_a_cidr_smaller_than_the_network_does_not_cover_it():
    _covered, uncovered = N.coverage(["198.18.200.0/25", "fd00:d0c::/64", "br-0123456789ab"], bridges())
    assert [(e["name"], e["families"], e["networks"]) for e in uncovered] == [
        ("docker0", ["ipv4"], ["198.18.200.0/24"])]


def test_interface_elements_cover_every_family():
    covered, uncovered = N.coverage(["docker0", "br-+"], bridges())
    assert uncovered == []
    assert covered == [{"name": "br-0123456789ab", "runtime": "docker", "by": ["br-+"]},
                       {"name": "docker0", "runtime": "docker", "by": ["docker0"]}]
    # A pattern without "+" is exact: docker matches no docker0.
    _covered, uncovered = N.coverage(["docker", "br-+"], bridges())
    assert [e["name"] for e in uncovered] == ["docker0"] and uncovered[0]["families"] == ["ipv4", "ipv6"]


def test_nothing_in_scope_leaves_every_guest_bridge_uncovered_in_name_order():
    covered, uncovered = N.coverage([], list(reversed(bridges())))
    assert covered == [] and [e["name"] for e in uncovered] == ["br-0123456789ab", "docker0"]
    assert uncovered[1]["networks"] == ["198.18.200.0/24", "fd00:d0c::/64"]


def test_every_network_of_a_family_must_be_inside_some_cidr():
    bridge = N.guest_bridges([link("virbr0", "bridge", addresses=["198.18.1.1/24", "198.18.2.1/24"])], physical())
    _covered, uncovered = N.coverage(["198.18.1.0/24"], bridge)
    assert uncovered[0]["networks"] == ["198.18.2.0/24"]
    covered, uncovered = N.coverage(["198.18.1.0/24", "198.18.2.0/24"], bridge)
    assert uncovered == [] and covered[0]["by"] == ["198.18.1.0/24", "198.18.2.0/24"]


def test_a_bridge_without_addresses_is_not_routed_and_counts_as_covered():
    bridge = N.guest_bridges([link("virbr9", "bridge")], physical())
    assert N.coverage([], bridge) == ([{"name": "virbr9", "runtime": "libvirt", "by": []}], [])


# --- detect_runtimes -----------------------------------------------------------------------------

def detect(paths=(), units=(), files=None):
    host = fake_host(exists=lambda path: path in paths, read_text=(files or {}).get)
    return dict((runtime["name"], runtime) for runtime in
                N.detect_runtimes(host, dict((unit, "active") for unit in units)))


def test_no_runtime_on_a_clean_host():
    assert detect() == {}


@pytest.mark.parametrize("unit,runtime", [
    ("docker.service", "docker"), ("containerd.service", "containerd"), ("podman.socket", "podman"),
    ("podman.service", "podman"), ("libvirtd.service", "libvirt"), ("virtqemud.service", "libvirt"),
    ("lxd.service", "lxd"), ("snap.lxd.daemon.service", "lxd"),
])
def test_runtime_found_by_its_active_unit(unit, runtime):
    found = detect(units=[unit])
    assert list(found) == [runtime]
    assert found[runtime]["active"] is True and found[runtime]["evidence"] == ["unit %s active" % unit]
    assert found[runtime]["sockets"] == []


@pytest.mark.parametrize("path,runtime", [
    ("/usr/bin/docker", "docker"), ("/usr/bin/dockerd", "docker"), ("/usr/bin/podman", "podman"),
    ("/usr/bin/containerd", "containerd"), ("/usr/sbin/libvirtd", "libvirt"), ("/usr/bin/lxd", "lxd"),
    ("/snap/bin/lxd", "lxd"),
])
def test_an_installed_binary_is_a_runtime_that_is_not_running(path, runtime):
    found = detect(paths=[path])
    assert list(found) == [runtime]
    assert found[runtime]["active"] is False and found[runtime]["evidence"] == ["binary " + path]


@pytest.mark.parametrize("path,runtime", [
    ("/run/docker.sock", "docker"), ("/var/run/docker.sock", "docker"), ("/run/podman/podman.sock", "podman"),
    ("/run/containerd/containerd.sock", "containerd"), ("/run/libvirt/libvirt-sock", "libvirt"),
    ("/var/snap/lxd/common/lxd/unix.socket", "lxd"), ("/var/lib/lxd/unix.socket", "lxd"),
])
def test_an_api_socket_means_a_running_runtime_even_without_systemd(path, runtime):
    found = detect(paths=[path])
    assert list(found) == [runtime]
    assert found[runtime]["active"] is True and found[runtime]["sockets"] == [path]
    assert found[runtime]["evidence"] == ["socket " + path]


def test_all_evidence_of_a_runtime_is_listed_in_order():
    found = detect(paths=["/usr/bin/docker", "/run/docker.sock", "/usr/bin/containerd"],
                   units=["docker.service"])
    assert list(found) == ["docker", "containerd"]
    assert found["docker"]["evidence"] == ["unit docker.service active", "binary /usr/bin/docker",
                                           "socket /run/docker.sock"]
    assert found["containerd"]["active"] is False


@pytest.mark.parametrize("text,backend", [
    (None, "iptables"), ("", "iptables"), ('{"log-driver": "journald"}', "iptables"),
    ('{"firewall-backend": "iptables"}', "iptables"), ('{\n  "firewall-backend": "nftables"\n}\n', "nftables"),
])
def test_docker_firewall_backend_read_from_daemon_json(text, backend):
    docker = detect(paths=["/usr/bin/dockerd"], files={"/etc/docker/daemon.json": text})["docker"]
    assert docker["firewall_backend"] == backend and "config_error" not in docker


@pytest.mark.parametrize("text", ['{"firewall-backend": "nftables",}', "[1, 2]"])
def test_a_malformed_daemon_json_is_reported_not_raised(text):
    docker = detect(paths=["/usr/bin/dockerd"], files={"/etc/docker/daemon.json": text})["docker"]
    assert docker["firewall_backend"] == "iptables"
    assert "/etc/docker/daemon.json" in docker["config_error"]


def test_only_docker_reads_daemon_json():
    podman = detect(paths=["/usr/bin/podman"], files={"/etc/docker/daemon.json": "not json"})["podman"]
    assert "firewall_backend" not in podman and "config_error" not in podman


# --- runtime_access ------------------------------------------------------------------------------

SOCKETS = {
    "/run/docker.sock": (0, 998, 0o140660),                      # root:docker srw-rw----
    "/run/podman/podman.sock": (0, 0, 0o140600),                 # root only
    "/run/containerd/containerd.sock": (0, 0, 0o140666),         # anyone
    "/run/libvirt/libvirt-sock": (1000, 0, 0o140600),            # owned by the agent
}
GROUPS = {"agent": [(1000, "agent")], "dev": [(1001, "dev"), (998, "docker")], "root": [(0, "root")]}


def access(users, sockets=None, groups=None):
    host = fake_host(stat=(sockets or SOCKETS).get, groups=lambda name: (groups or GROUPS).get(name, []))
    return N.runtime_access(host, users)


def test_socket_access_through_a_group():
    found = access([("dev", 1001)])
    assert {"user": "dev", "uid": 1001, "socket": "/run/docker.sock", "runtime": "docker",
            "via": "group docker"} in found
    assert "/run/docker.sock" not in [entry["socket"] for entry in access([("agent", 1000)])]


def test_socket_access_as_owner_and_as_others():
    found = access([("agent", 1000)])
    assert [(e["socket"], e["runtime"], e["via"]) for e in found] == [
        ("/run/containerd/containerd.sock", "containerd", "others"),
        ("/run/libvirt/libvirt-sock", "libvirt", "owner")]


def test_no_access_when_no_class_may_write():
    sockets = {"/run/docker.sock": (0, 998, 0o140640),         # the docker group may only read
               "/run/containerd/containerd.sock": (0, 0, 0o140664),  # others may only read
               "/run/libvirt/libvirt-sock": (1000, 1000, 0o140460)}  # owner may not write, its group may
    # The kernel applies the owner's bits to the owner even when the group's would allow.
    groups = {"dev": [(1001, "dev"), (998, "docker")], "agent": [(1000, "agent")]}
    assert access([("dev", 1001), ("agent", 1000)], sockets, groups) == []
    assert access([("nobody", 65534)], {"/run/podman/podman.sock": (0, 0, 0o140600)}) == []


def test_root_reaches_every_socket_and_absent_sockets_are_skipped():
    found = access([("root", 0)], {"/run/docker.sock": (0, 998, 0o140660)})
    assert found == [{"user": "root", "uid": 0, "socket": "/run/docker.sock", "runtime": "docker", "via": "root"}]


def test_users_are_answered_in_order():
    found = access([("dev", 1001), ("agent", 1000)])
    assert [e["user"] for e in found] == ["dev", "dev", "agent", "agent"]


# --- read_networks / read_host -------------------------------------------------------------------

def test_ip_missing_or_failing_gives_no_bridges_and_a_warning():
    def missing(argv):
        raise OSError("ip not found")
    assert N.read_networks(fake_host(missing))[0] == []
    assert "ip not found" in N.read_networks(fake_host(missing))[1][0]
    bridges, warnings = N.read_networks(fake_host(lambda argv: (255, "", 'Option "-j" is unknown')))
    assert bridges == [] and "rc=255" in warnings[0] and "-j" in warnings[0]
    bridges, warnings = N.read_networks(fake_host(lambda argv: (0, "[{oops", "")))
    assert bridges == [] and "no JSON" in warnings[0]


def test_read_host_asks_ip_once_with_json_and_details():
    calls = []

    def run(argv):
        calls.append(argv)
        return 0, fixture_text(), ""
    host = fake_host(run, is_physical=physical("eno1"), exists=lambda path: path == "/usr/bin/dockerd")
    found = N.read_host(host, [("agent", 1000)], {})
    assert calls == [["ip", "-j", "-d", "addr", "show"]]
    assert [b["name"] for b in found["bridges"]] == ["br-0123456789ab", "docker0"]
    assert [r["name"] for r in found["runtimes"]] == ["docker"]
    assert found["runtime_access"] == [] and found["warnings"] == []


def test_read_host_without_networks_runs_nothing_but_still_answers_access():
    def run(argv):
        raise AssertionError("ip must not run")
    host = fake_host(run, exists=lambda path: True, stat={"/run/docker.sock": (0, 0, 0o140666)}.get)
    found = N.read_host(host, [("agent", 1000)], {"docker.service": "active"}, networks=False)
    assert found == {"warnings": [], "runtime_access": [
        {"user": "agent", "uid": 1000, "socket": "/run/docker.sock", "runtime": "docker", "via": "others"}]}


def test_one_socket_reached_by_two_paths_is_named_once():
    # /var/run is a link to /run: the same socket, reported once.
    stat = {"/run/docker.sock": (0, 0, 0o140666), "/var/run/docker.sock": (0, 0, 0o140666)}.get
    exists = set(["/run/docker.sock", "/var/run/docker.sock"]).__contains__
    host = fake_host(lambda argv: (0, "[]", ""), exists=exists, stat=stat,
                     realpath=lambda path: path.replace("/var/run", "/run"))
    found = N.read_host(host, [("agent", 1000)], {})
    assert [e["socket"] for e in found["runtime_access"]] == ["/run/docker.sock"]
    assert found["runtimes"][0]["sockets"] == ["/run/docker.sock"]


def test_a_malformed_daemon_json_becomes_a_warning():
    host = fake_host(lambda argv: (0, "[]", ""), exists=lambda path: path == "/usr/bin/docker",
                     read_text={"/etc/docker/daemon.json": "{"}.get)
    found = N.read_host(host, [], {})
    assert len(found["warnings"]) == 1 and "daemon.json" in found["warnings"][0]


# --- the readers of the real host ----------------------------------------------------------------

def test_host_readers_on_this_machine(tmp_path):
    host = HostIO(run=None, which=None, warn=None)
    assert N.runtime_users(host, ["root", "4242", "agentguard-no-such-user"]) == [("root", 0), ("4242", 4242)]
    assert (0, "root") in host.groups("root") and (0, "root") in host.groups("0")
    assert host.groups("agentguard-no-such-user") == []
    path = tmp_path / "daemon.json"
    path.write_text("{}")
    path.chmod(0o640)
    uid, gid, mode = host.stat(str(path))
    assert (uid, gid, mode & 0o777) == (os.getuid(), os.getgid(), 0o640)
    assert host.stat(str(tmp_path / "absent")) is None
    assert host.read_text(str(path)) == "{}" and host.read_text(str(tmp_path / "absent")) is None
    assert host.is_physical("lo") is False


# --- the module ----------------------------------------------------------------------------------

def run_module(monkeypatch, capsys, args, answers, systemd=True):
    """Run egress_host_state's main() in this process with its commands answered from `answers`."""
    from ansible.module_utils import basic
    from ansible_collections.agentguard.hardening.plugins.modules import egress_host_state as M

    calls = []

    def run_command(self, argv, **kwargs):
        calls.append(argv)
        answer = answers.get(os.path.basename(argv[0]), (0, "", ""))
        return answer(argv) if callable(answer) else answer
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    # Once another test has imported controller code, ansible-core 2.19+ sends module warnings to the
    # controller's display instead of the result: run as on a target.
    from ansible.module_utils import _internal
    monkeypatch.setattr(_internal, "is_controller", False, raising=False)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, *a, **k: "/fake/bin/" + name)
    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    isdir = os.path.isdir
    monkeypatch.setattr(M.os.path, "isdir", lambda path: systemd if path == "/run/systemd/system" else isdir(path))
    monkeypatch.setattr(HostIO, "is_physical", staticmethod(lambda name: name == "eno1"))
    with pytest.raises(SystemExit):
        M.main()
    return json.loads(capsys.readouterr().out), calls


def systemctl_show(argv):
    blocks = []
    for unit in argv[4:]:
        state = "active" if unit in ("docker.service", "netfilter-persistent.service") else "inactive"
        blocks.append("Id=%s\nLoadState=loaded\nActiveState=%s\nUnitFileState=enabled\n" % (unit, state))
    return 0, "\n".join(blocks), ""


def test_module_asks_the_runtime_units_in_the_one_systemctl_call(monkeypatch, capsys):
    asked = {"networks": True, "query": {"active": ["netfilter-persistent.service"]}}
    result, calls = run_module(monkeypatch, capsys, asked,
                               {"systemctl": systemctl_show, "ip": (0, fixture_text(), "")})
    shows = [argv for argv in calls if argv[0].endswith("systemctl")]
    assert len(shows) == 1 and shows[0][4:] == ["netfilter-persistent.service"] + N.RUNTIME_UNITS
    # The runtimes' units answer `runtimes`, not `active`, which stays what was asked.
    assert result["active"] == {"netfilter-persistent.service": "active"}
    docker = [r for r in result["runtimes"] if r["name"] == "docker"][0]
    assert docker["active"] is True and "unit docker.service active" in docker["evidence"]
    assert [b["name"] for b in result["bridges"]] == ["br-0123456789ab", "docker0"]
    assert result["runtime_access"] == [] and not result.get("warnings")


def test_module_without_networks_asks_nothing_more(monkeypatch, capsys):
    result, calls = run_module(monkeypatch, capsys, {"query": {"active": ["netfilter-persistent.service"]}},
                               {"systemctl": systemctl_show})
    assert [argv[4:] for argv in calls if argv[0].endswith("systemctl")] == [["netfilter-persistent.service"]]
    assert not [argv for argv in calls if argv[0].endswith("/ip")]
    assert "bridges" not in result and "runtimes" not in result and result["runtime_access"] == []


def test_module_warns_when_ip_fails(monkeypatch, capsys):
    result, _calls = run_module(monkeypatch, capsys, {"networks": True, "query": {"runtime_users": ["root"]}},
                                {"ip": (1, "", "Cannot open netlink socket: Permission denied")}, systemd=False)
    assert result["bridges"] == [] and result["active"] == {}
    # ansible-core 2.19+ returns each warning as a summary dict, older versions as its text.
    assert any("Permission denied" in json.dumps(warning) for warning in result["warnings"])
    # root connects to whatever runtime socket this machine has.
    assert all(entry["via"] == "root" for entry in result["runtime_access"])


def test_module_runs_for_real_on_this_machine():
    # The real ip and /sys of the test machine: whatever it has, the module answers without failing.
    code = ("import sys; from ansible_collections.agentguard.hardening.plugins.modules import egress_host_state as M; "
            "M.main()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    args = json.dumps({"ANSIBLE_MODULE_ARGS": {"networks": True, "query": {"runtime_users": ["root"]}}})
    out = subprocess.run([sys.executable, "-c", code, args], stdout=subprocess.PIPE, universal_newlines=True,
                         check=False, env=env).stdout
    result = json.loads(out)
    assert not result.get("failed"), result
    assert isinstance(result["bridges"], list) and isinstance(result["runtimes"], list)


def test_docker_firewall_backend_from_daemon_json():
    files = {"/etc/docker/daemon.json": '{"firewall-backend": "nftables", "ipv6": true}'}
    assert N.docker_firewall_backend(fake_host(read_text=files.get)) == "nftables"
    assert N.docker_firewall_backend(fake_host(read_text={}.get)) == "iptables"
    assert N.docker_firewall_backend(fake_host(read_text={"/etc/docker/daemon.json": "{not json"}.get)) == "iptables"
