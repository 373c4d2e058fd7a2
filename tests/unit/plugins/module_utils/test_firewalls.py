"""Other firewall managers and what each does to the egress rules (issue 24, item 2): _firewalls.

tests/unit/fixtures/nftables-debian12.conf is /etc/nftables.conf of Debian 12's nftables 1.0.6 package, without its
first line (the `#!/usr/sbin/nft -f` shebang, which ansible-test's shebang check refuses outside modules).
The Exec properties below are systemd 252's `systemctl show -p ExecStart,ExecReload,ExecStop nftables.service`
layout for Debian's unit (ExecStart/ExecReload `nft -f /etc/nftables.conf`, ExecStop `nft flush ruleset`), as a
Debian 12 lab host (localhost/agentguard-lab:bookworm, systemd 252, nftables installed and enabled) printed it.
"""
import os

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _firewalls as FW

from .conftest import fake_host

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
with open(os.path.join(FIXTURES, "nftables-debian12.conf")) as _handle:
    DEBIAN_CONF = _handle.read()


def exec_value(argv):
    return ("{ path=%s ; argv[]=%s ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; "
            "status=0/0 }" % (argv.split()[0], argv))


DEBIAN_SHOW = {"ExecStart": exec_value("/usr/sbin/nft -f /etc/nftables.conf"),
               "ExecReload": exec_value("/usr/sbin/nft -f /etc/nftables.conf"),
               "ExecStop": exec_value("/usr/sbin/nft flush ruleset")}
ENABLED = {"active": "active", "enabled": "enabled"}


def reader(files):
    return files.get


def globber(files):
    import fnmatch
    return lambda pattern: sorted(path for path in files if fnmatch.fnmatch(path, pattern))


def detect(files, units, backend="nf_tables", packages=("nftables",), show=None):
    return FW.detect_firewalls(list(packages), units, reader(files), globber(files), lambda: show or DEBIAN_SHOW, backend)


def test_debians_default_configuration_flushes_on_every_action():
    found = FW.nftables_flushes(DEBIAN_SHOW, reader({"/etc/nftables.conf": DEBIAN_CONF}), globber({}))
    assert found == {"start": "/etc/nftables.conf: flush ruleset", "reload": "/etc/nftables.conf: flush ruleset",
                     "stop": "nft flush ruleset", "files": ["/etc/nftables.conf"]}


def test_a_configuration_without_flush_still_flushes_on_stop_and_restart():
    conf = "# flush ruleset (a comment)\ntable inet mine {\n  chain input { type filter hook input priority 0; }\n}\n"
    [entry] = detect({"/etc/nftables.conf": conf}, {"nftables.service": ENABLED})
    assert entry["flushes"] == {"start": "", "reload": "", "stop": "nft flush ruleset"}
    assert entry["alters_rules"] and entry["opens_egress"]
    assert "its restart, stop run nft flush ruleset" in entry["effect"], entry["effect"]


@pytest.mark.parametrize("statement, found", [
    ("flush ruleset", "flush ruleset"), ("flush  ruleset ip6", "flush ruleset ip6"),
    ("flush ruleset inet", ""), ("flush ruleset bridge", ""),
    ("delete table ip filter", "delete table ip filter"), ("flush table ip6 mangle", "flush table ip6 mangle"),
    ("delete table inet filter", ""), ('add rule inet t c ip saddr 1.2.3.4 comment "# flush ruleset"', ""),
])
def test_which_statements_remove_the_iptables_nft_tables(statement, found):
    result, files = FW.nft_script_flush(statement + "\n", "/etc/x.nft", reader({}), globber({}))
    assert result == ("/etc/x.nft: " + found if found else "")


def test_includes_are_followed_relative_absolute_and_globbed_once_each():
    files = {"/etc/nftables.conf": 'include "nft.d/*.nft"\ninclude "/srv/rules.nft"\ninclude "./opt/loop.nft"\n',
             "/etc/nft.d/10-a.nft": "table ip t {}\n", "/etc/nft.d/20-b.nft": 'include "/etc/nftables.conf"\n',
             "/srv/rules.nft": "table ip6 u {}\n", "/opt/loop.nft": "# delete table ip filter\nflush ruleset\n"}
    result, read = FW.nft_script_flush(files["/etc/nftables.conf"], "/etc/nftables.conf", reader(files), globber(files),
                                       ["/etc/nftables.conf"])
    assert result == "/opt/loop.nft: flush ruleset"
    assert read == ["/etc/nftables.conf", "/etc/nft.d/10-a.nft", "/etc/nft.d/20-b.nft", "/srv/rules.nft", "/opt/loop.nft"]


def test_enterprise_linux_reload_script_given_as_arguments():
    show = dict(DEBIAN_SHOW, ExecReload=exec_value("/sbin/nft flush ruleset; include \"/etc/sysconfig/nftables.conf\";"))
    found = FW.nftables_flushes(show, reader({"/etc/nftables.conf": ""}), globber({}))
    assert found["reload"] == "nft flush ruleset; include \"/etc/sysconfig/nftables.conf\";" and found["start"] == ""


def test_debian_default_enabled_on_nf_tables_opens_egress_at_every_action():
    [entry] = detect({"/etc/nftables.conf": DEBIAN_CONF}, {"nftables.service": ENABLED})
    assert entry["alters_rules"] and entry["opens_egress"] and entry["config_files"] == ["/etc/nftables.conf"]
    assert entry["effect"] == (
        "nftables.service is enabled and active; its start (at every boot: it is enabled), restart, reload, stop run "
        "/etc/nftables.conf: flush ruleset; nft flush ruleset, which deletes the tables iptables keeps the allowlist in: "
        "after it, egress is open")


def test_the_legacy_backend_is_not_touched_by_nft():
    [entry] = detect({"/etc/nftables.conf": DEBIAN_CONF}, {"nftables.service": ENABLED}, backend="legacy")
    assert not entry["alters_rules"] and "legacy backend's, which it does not touch" in entry["effect"]
    [unknown] = detect({"/etc/nftables.conf": DEBIAN_CONF}, {"nftables.service": ENABLED}, backend="unknown")
    assert unknown["opens_egress"] and "if it uses the nf_tables backend" in unknown["effect"]


def test_installed_but_disabled_and_inactive_does_nothing():
    units = {"nftables.service": {"active": "inactive", "enabled": "disabled"}}
    [entry] = detect({"/etc/nftables.conf": DEBIAN_CONF}, units)
    assert entry == {"name": "nftables", "unit": "nftables.service", "installed": True, "enabled": "disabled",
                     "active": "inactive", "alters_rules": False, "opens_egress": False,
                     "effect": "nftables.service is disabled and inactive: nothing runs it"}
    assert detect({}, {}, packages=()) == []


@pytest.mark.parametrize("conf, opens, text", [
    ("", True, "FirewallBackend=nftables: it keeps its rules in tables of its own, but its unit conflicts"),
    ("FirewallBackend=iptables\n", True, "FirewallBackend=iptables: its start (at boot too), reload and restart flush"),
])
def test_firewalld(conf, opens, text):
    [entry] = detect({FW.FIREWALLD_CONF: conf}, {"firewalld.service": ENABLED}, packages=("firewalld",))
    assert entry["opens_egress"] is opens and text in entry["effect"], entry["effect"]


@pytest.mark.parametrize("conf, defaults, alters, opens, text", [
    ("ENABLED=no\n", "", False, False, "ufw is not enabled"),
    ("ENABLED=yes\n", 'DEFAULT_OUTPUT_POLICY="ACCEPT"\nMANAGE_BUILTINS=no\n', True, False, "set the OUTPUT policy (ACCEPT"),
    ("ENABLED=yes\n", "MANAGE_BUILTINS=yes\n", True, True, "MANAGE_BUILTINS=yes (/etc/default/ufw): its start"),
])
def test_ufw(conf, defaults, alters, opens, text):
    [entry] = detect({FW.UFW_CONF: conf, FW.UFW_DEFAULTS: defaults}, {"ufw.service": ENABLED}, packages=("ufw",))
    assert (entry["alters_rules"], entry["opens_egress"]) == (alters, opens) and text in entry["effect"], entry


@pytest.mark.parametrize("text, backend", [("iptables v1.8.9 (nf_tables)\n", "nf_tables"),
                                           ("iptables v1.8.9 (legacy)\n", "legacy"), ("", "unknown")])
def test_iptables_backend(text, backend):
    assert FW.iptables_backend(text) == backend


def test_warnings_say_what_the_guard_does_or_that_nothing_restores():
    [entry] = detect({"/etc/nftables.conf": DEBIAN_CONF}, {"nftables.service": ENABLED})
    quiet = detect({"/etc/nftables.conf": DEBIAN_CONF}, {"nftables.service": {"active": "inactive", "enabled": "disabled"}})
    [on] = FW.firewall_warnings([entry] + quiet, guard=True)
    [off] = FW.firewall_warnings([entry], guard=False)
    assert on.startswith("nftables (nftables.service is enabled and active; ") and FW.GUARD_ON in on
    assert "egress is open for that long each time" in on and FW.ADVICE["nftables"] in on
    assert FW.GUARD_OFF in off and "egress stays open until then" in off and FW.GUARD_ON not in off
    assert FW.firewall_warnings(quiet) == [] and FW.firewall_warnings(None) == []


def test_read_firewalls_asks_the_host_once_and_only_what_it_needs():
    asked = []
    show = "\n".join("%s=%s" % item for item in DEBIAN_SHOW.items()) + "\n"

    def run(argv):
        asked.append(argv)
        if argv[0] == "iptables":
            return "iptables v1.8.9 (nf_tables)\n"
        return show if argv[:2] == ["systemctl", "show"] else ""
    files = {"/etc/nftables.conf": DEBIAN_CONF}
    host = fake_host(lambda argv: (0, run(argv), ""), read_text=reader(files), glob=globber(files))
    found = FW.read_firewalls(host, ["nftables", "ufw"], {"nftables.service": "active", "ufw.service": "inactive"},
                              {"nftables.service": "enabled", "ufw.service": "enabled"})
    assert found["iptables_backend"] == "nf_tables"
    assert [(e["name"], e["alters_rules"]) for e in found["firewalls"]] == [("nftables", True), ("ufw", False)]
    assert asked == [["iptables", "-V"], ["systemctl", "show", "--property=ExecStart,ExecReload,ExecStop", "--",
                                          "nftables.service"]]
    # nftables.service neither enabled nor active: no systemctl show; without systemd no unit is known.
    asked[:] = []
    quiet = FW.read_firewalls(host, ["nftables"], {}, {})
    assert asked == [["iptables", "-V"]]
    assert quiet["firewalls"][0]["enabled"] == "unknown" and not quiet["firewalls"][0]["alters_rules"]
