"""The role egress's filters: its input checks, its question to the host, the platform table, every
decision (egress_phases), the persisted files, the filtering resolver's setup and the failure messages.
Each is fed registered results as the role registers them."""
import hashlib
import os

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.agentguard.hardening.plugins.filter import egress_boot_files, egress_phases

F = dict(egress_phases.FilterModule().filters(), **egress_boot_files.FilterModule().filters())
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
with open(os.path.join(ROOT, "roles", "egress", "vars", "main.yml")) as _handle:
    ROLE_VARS = yaml.safe_load(_handle)
PLATFORMS = ROLE_VARS["__egress_platforms"]
MARKER = ROLE_VARS["__egress_marker"]
DROPIN = ROLE_VARS["__egress_dropin_name"]
DNS_UNIT = "agentguard-dns.service"
DNS_FILES = ["/etc/systemd/system/agentguard-dns.service", "/etc/systemd/system/agentguard-dns-resolv.path",
             "/etc/agentguard/dnsmasq.conf", "/var/lib/agentguard/dns",
             "/etc/systemd/resolved.conf.d/10-agentguard-egress.conf"]


def options(**over):
    params = dict(allow=[dict(name="api", host="api.example.com")], dns_servers=["198.18.0.53"], mode="enforce",
                  scope="host", users=[], families=["ipv4", "ipv6"], state="present", dns_mode="pinned",
                  dns_resolver_user="agentguard-dns", dns_set_timeout=300, resolvers=[])
    params.update(over)
    return params


def facts(family="Debian", major="12", distribution="Debian", system="Linux"):
    return dict(system=system, distribution=distribution, distribution_major_version=major, os_family=family,
                python="/usr/bin/python3")


# ------------------------------------------------------------------------------------- input checks
def test_valid_inputs_have_no_errors():
    assert F["egress_input_errors"](options(), ["agent.service"], 60, ["198.18.0.66:443", "[fd00::66]:53"]) == []
    assert F["egress_input_errors"](options(), [], 0, []) == []


def test_the_modules_errors_name_the_roles_variables():
    errors = F["egress_input_errors"](options(allow=[dict(name="api", host="api.exa mple.com")], users=["agent"]))
    assert any(e.startswith("egress_allow[0].host: 'api.exa mple.com'") for e in errors), errors
    assert any(e.startswith("egress_scope_users") for e in errors), errors


@pytest.mark.parametrize("over,args,message", [
    (dict(dns_mode="filtering", mode="audit", dns_servers=[]), (), "egress_dns_servers is empty: egress_dns_mode=filtering"),
    (dict(dns_set_timeout=15), (), "egress_dns_set_timeout: 15 is out of range (20 to 2147483)"),
    (dict(), (["agent", "ok.service", "x y.service"],),
     "egress_dns_before_units must hold systemd unit names such as agent.service; invalid: agent, x y.service."),
    (dict(), ([], 5), "egress_rollback_timeout is 5: use 0 (no rollback) or at least 20 seconds"),
    (dict(), ([], 60, ["198.18.0.66:443", "[fd00:19::20]:99999"]),
     "egress_canary_forbidden[1]: '[fd00:19::20]:99999': port '99999' is out of range; ports are 1 to 65535"),
    (dict(), ([], 60, "198.18.0.66:443"),
         "egress_canary_forbidden: '198.18.0.66:443' is a string, not a list; write a list: ['198.18.0.66:443']"),
        (dict(), ([], 60, 443), "egress_canary_forbidden: 443 is not a list"),
])
def test_the_roles_own_checks(over, args, message):
    errors = F["egress_input_errors"](options(**over), *args)
    assert any(e.startswith(message) for e in errors), errors


def test_the_set_timeout_has_one_bound_the_modules():
    # One check, the module's (run on the controller by egress_policy_errors): one message per wrong value.
    errors = F["egress_input_errors"](options(dns_set_timeout=19))
    assert [e for e in errors if "dns_set_timeout" in e] == [
        "egress_dns_set_timeout: 19 is out of range (20 to 2147483)"], errors
    assert not any("dns_set_timeout" in e for e in F["egress_input_errors"](options(dns_set_timeout=20)))


def test_every_wrong_input_is_reported_at_once():
    errors = F["egress_input_errors"](options(allow=[dict(name="x", host="0.0.0.0/0")]), ["bad"], 5, ["nope"])
    assert len(errors) == 4, errors


def test_input_errors_want_the_options_dict():
    with pytest.raises(AnsibleFilterError):
        F["egress_input_errors"]([])


# ------------------------------------------------------------------------------------- the platform table
@pytest.mark.parametrize("platform,iptables,persist_dir", [
    (facts("Debian", "11"), "iptables", "/etc/iptables"),
    (facts("Debian", "13"), "iptables", "/etc/iptables"),
    (facts("Debian", "24", "Ubuntu"), "iptables", "/etc/iptables"),
    (facts("RedHat", "9", "Rocky"), "iptables-nft", "/etc/sysconfig"),
    (facts("RedHat", "10", "RedHat"), "iptables-nft", "/etc/sysconfig"),
    (facts("RedHat", "8", "AlmaLinux"), "iptables", "/etc/sysconfig"),
])
def test_each_supported_platform_has_a_complete_row(platform, iptables, persist_dir):
    row = F["egress_platform"](dict(platform=platform), PLATFORMS)
    assert row["iptables_package"] == iptables and row["persist_dir"] == persist_dir
    assert set(row) == {"iptables_package", "packages", "persist_packages", "dns_packages", "tls_gate_packages", "debconf",
                        "persist_files", "persist_dir", "boot_units", "dropin_units"}
    assert row["iptables_package"] in row["packages"]
    assert set(row["persist_files"]) == {"ipv4", "ipv6", "sets"}
    assert all(path.startswith(persist_dir + "/") for path in row["persist_files"].values())
    assert set(row["dropin_units"]) <= set(row["boot_units"])


def test_el8_takes_what_it_does_not_say_from_el9():
    el8 = F["egress_platform"](dict(platform=facts("RedHat", "8")), PLATFORMS)
    el9 = F["egress_platform"](dict(platform=facts("RedHat", "9")), PLATFORMS)
    assert el8["packages"] == ["iptables", "ipset"] and "python3-dns" in el9["packages"]
    assert dict(el8, packages=None, iptables_package=None) == dict(el9, packages=None, iptables_package=None)


@pytest.mark.parametrize("platform", [facts("Suse", "15", "SLES"), facts("", ""), {}])
def test_an_unknown_platform_has_no_row(platform):
    assert F["egress_platform"](dict(platform=platform), PLATFORMS) == {}
    assert F["egress_platform"]({}, PLATFORMS) == {}


def test_a_row_extending_a_missing_row_is_an_error():
    with pytest.raises(AnsibleFilterError):
        F["egress_platform"](dict(platform=facts("RedHat", "8")), {"RedHat-8": {"extends": "Gone"}})


def test_the_host_is_asked_about_every_platform_at_once():
    query = F["egress_host_query"](PLATFORMS, DROPIN, DNS_FILES, [DNS_UNIT, "systemd-resolved.service"], ["agent"])
    assert {"iptables", "iptables-nft", "netfilter-persistent", "iptables-services", "dnsmasq-base", "dnsmasq",
            "python3-dnspython", "python3-dns"} <= set(query["packages"])
    assert query["packages"] == sorted(set(query["packages"]))
    assert query["enabled"] == ["ip6tables.service", "ipset.service", "iptables.service", "netfilter-persistent.service"]
    assert query["active"] == [DNS_UNIT, "systemd-resolved.service"]
    assert query["paths"][:len(DNS_FILES)] == DNS_FILES
    assert {"/etc/iptables/rules.v4", "/etc/sysconfig/ipset",
            "/etc/systemd/system/ipset.service.d/" + DROPIN} <= set(query["paths"])
    assert len(query["paths"]) == len(set(query["paths"]))
    assert query["users"] == query["runtime_users"] == ["agent"]


def test_the_question_is_the_modules_query_option():
    """The role passes the filter's answer whole as egress_host_state's query: the same keys as the option's
    suboptions (AnsibleModule refuses a key it does not know; a list the filter stopped giving would be empty)."""
    from ansible_collections.agentguard.hardening.plugins.modules.egress_host_state import ARGUMENT_SPEC

    query = F["egress_host_query"](PLATFORMS, DROPIN, DNS_FILES, [DNS_UNIT], ["agent"], [], TLS, {})
    assert set(query) == set(ARGUMENT_SPEC["query"]["options"])


def test_host_errors_name_the_platform_and_the_missing_users():
    debian = F["egress_platform"](dict(platform=facts()), PLATFORMS)
    assert F["egress_host_errors"](dict(platform=facts(), missing_users=[]), debian, "h") == []
    errors = F["egress_host_errors"](dict(platform=facts("Suse", "15", "SLES"), missing_users=["agent", "bot"]), {}, "h")
    assert errors == [
        "The role egress supports Debian, Ubuntu and Enterprise Linux only; this host is SLES 15 (Suse, Linux).",
        "egress_scope_users: agent, bot do(es) not exist on h (create them first, or give numeric uids).",
    ]
    assert len(F["egress_host_errors"](dict(platform=facts(system="FreeBSD")), debian)) == 1


# ------------------------------------------------------------------------------------- persisted files
RESULT = dict(rules=dict(ipv4="*filter\n-A X\nCOMMIT\n", ipv6="  \n"), sets="create ag4-api hash:net\n")
HEADER = ("# Managed by agentguard.hardening (role egress); do not edit: every run rewrites this file.\n"
          "# It holds only what the module agentguard.hardening.egress_rules manages.\n")


def test_boot_files_are_byte_for_byte_the_modules_result_under_the_header():
    debian = F["egress_platform"](dict(platform=facts()), PLATFORMS)
    assert F["egress_boot_files"](RESULT, debian, MARKER, DROPIN) == [
        dict(path="/etc/iptables/ipsets", mode="0600", kind="sets", content=HEADER
             + "# Loaded at boot with ipset restore, before the rules that use these sets.\ncreate ag4-api hash:net\n"),
        # No file for a family without rules (a kernel without IPv6).
        dict(path="/etc/iptables/rules.v4", mode="0600", kind="rules", content=HEADER
             + "# Loaded at boot with plain iptables-restore; the live rules are applied by the module.\n"
               "*filter\n-A X\nCOMMIT\n"),
    ]
    empty_sets = F["egress_boot_files"](dict(RESULT, sets=""), debian, MARKER, DROPIN)[0]["content"]
    assert empty_sets.endswith("before the rules that use these sets.\n")


def test_boot_files_on_el_order_the_units_before_the_network():
    el9 = F["egress_platform"](dict(platform=facts("RedHat", "9")), PLATFORMS)
    files = F["egress_boot_files"](RESULT, el9, MARKER, DROPIN)
    assert [f["path"] for f in files] == [
        "/etc/sysconfig/ipset", "/etc/sysconfig/iptables", "/etc/systemd/system/iptables.service.d/" + DROPIN,
        "/etc/systemd/system/ip6tables.service.d/" + DROPIN, "/etc/systemd/system/ipset.service.d/" + DROPIN]
    dropins = [f for f in files if f["kind"] == "dropin"]
    assert all(f["mode"] == "0644" for f in dropins)
    assert dropins[0]["content"] == ("# Managed by agentguard.hardening (role egress); do not edit.\n"
                                     "# Load the egress rules before any network interface comes up.\n"
                                     "[Unit]\nWants=network-pre.target\nBefore=network-pre.target\n")
    assert dropins[2]["content"].endswith("Before=iptables.service ip6tables.service\n")


def test_no_rules_no_files():
    debian = F["egress_platform"](dict(platform=facts()), PLATFORMS)
    assert F["egress_boot_files"]({"skipped": True}, debian, MARKER, DROPIN) == []
    assert F["egress_boot_files"](RESULT, {}, MARKER, DROPIN) == []


# ------------------------------------------------------------------------------------- decisions
DEBIAN = F["egress_platform"](dict(platform=facts()), PLATFORMS)
ALL_DEBIAN = DEBIAN["packages"] + DEBIAN["persist_packages"] + DEBIAN["dns_packages"]


def run(**over):
    asked = dict(state="present", mode="enforce", dns_mode="pinned", persist=True, canary=True, canary_every_run=False,
                 check_mode=False, dns=dict(user="agentguard-dns", unit=DNS_UNIT, files=DNS_FILES))
    asked.update(over)
    return asked


def persisted(files, **over):
    stat = dict(type="file", uid=0, gid=0)
    return dict((f["path"], dict(stat, mode=f["mode"], sha256=hashlib.sha256(f["content"].encode()).hexdigest()))
                for f in files) if not over else over


def host(packages=None, paths=None, active=None, enabled=None, systemd=True):
    return dict(platform=facts(), systemd=systemd, packages=ALL_DEBIAN if packages is None else packages,
                paths=paths or {}, active=active or {DNS_UNIT: "inactive", "systemd-resolved.service": "inactive"},
                enabled={"netfilter-persistent.service": "enabled"} if enabled is None else enabled)


BOOT = F["egress_boot_files"](RESULT, DEBIAN, MARKER, DROPIN)
UNCHANGED = dict(changed=False, rules=RESULT["rules"])
CHANGED = dict(changed=True, rules=RESULT["rules"])


def phases(asked=None, state=None, boot=None, plan=None, lookup=None):
    return F["egress_phases"](asked or run(), state or host(paths=persisted(BOOT)), DEBIAN, BOOT if boot is None else boot,
                              UNCHANGED if plan is None else plan, lookup or {})


def test_an_unchanged_host_is_done_after_the_plan():
    decided = phases()
    assert decided["nothing_to_do"] and decided["plan_rules"]
    assert not any(decided[k] for k in ("prepare_host", "install_packages", "run_resolver", "apply_rules",
                                        "run_canary", "persist_rules", "remove_role_files", "remove_resolver"))
    assert decided["missing_packages"] == [] and decided["resolvers"] == [] and decided["plan_blocked"] == ""
    assert decided["host_errors"] == []


@pytest.mark.parametrize("why, asked, state, errors", [
    ("a package", run(), host(packages=["iptables"]), []),
    ("the gate's user", run(tls=dict(mode="enforce", user="gate", unit="g.service", conf="/etc/g/n.conf")),
     dict(host(packages=ALL_DEBIAN + ["nginx-light", "libnginx-mod-stream"]), missing_users=["gate"]), []),
    ("a host that cannot be hardened", run(hostname="h1", scope_users=["bot"]),
     dict(host(), missing_users=["bot"]), ["egress_scope_users: bot do(es) not exist on h1 (create them first, or "
                                           "give numeric uids)."]),
    ("an unsupported platform", run(), dict(host(), platform=facts("Suse", "15", "SLES")), None),
])
def test_the_phases_before_the_plan_run_when_one_is_needed(why, asked, state, errors):
    state = state or host(paths=persisted(BOOT))
    decided = F["egress_phases"](asked, state, F["egress_platform"](state, PLATFORMS), BOOT, {}, {}, [], {})
    assert decided["prepare_host"], why
    # The refusal's reasons travel with the flag (tasks/prepare_host.yml fails with them).
    if errors is None:
        assert len(decided["host_errors"]) == 1 and "supports Debian" in decided["host_errors"][0]
    else:
        assert decided["host_errors"] == errors


def test_no_refusal_before_the_host_is_read():
    assert F["egress_phases"](run(scope_users=["bot"]), {}, {}, [], {}, {}, [], {})["host_errors"] == []


def test_missing_packages_are_installed_first():
    decided = phases(state=host(packages=["iptables"], paths=persisted(BOOT)))
    # Installed before the plan: after it, nothing else may be left to do.
    assert decided["install_packages"] and decided["plan_rules"] and decided["nothing_to_do"]
    assert decided["missing_packages"] == ["ipset", "python3-dnspython", "netfilter-persistent", "iptables-persistent",
                                           "ipset-persistent"]
    assert decided["debconf"] == DEBIAN["debconf"]


def test_no_persistence_packages_without_egress_persist():
    decided = phases(run(persist=False), host(packages=["iptables"]))
    assert decided["missing_packages"] == ["ipset", "python3-dnspython"]
    assert decided["debconf"] == [] and not decided["persist_rules"] and decided["nothing_to_do"]
    # A host that has the rest installs nothing at all.
    decided = phases(run(persist=False), host(packages=DEBIAN["packages"]))
    assert not decided["install_packages"] and decided["missing_packages"] == []


def test_check_mode_cannot_plan_before_the_packages():
    decided = phases(run(check_mode=True), host(packages=["iptables"]))
    assert decided["install_packages"] and not decided["plan_rules"] and not decided["nothing_to_do"]
    assert decided["plan_blocked"] == ("Check mode: ipset, python3-dnspython, netfilter-persistent, iptables-persistent, "
                                       "ipset-persistent would be installed or created first, so the rules cannot be "
                                       "planned on this host yet.")
    # A real run installs them first, then plans.
    assert phases(run(), host(packages=["iptables"]))["plan_rules"]


def test_filtering_runs_the_resolver_and_the_module_resolves_through_it():
    decided = phases(run(dns_mode="filtering"), host(packages=ALL_DEBIAN))
    assert decided["run_resolver"] and decided["resolvers"] == ["127.0.0.1"] and not decided["remove_resolver"]
    assert "dnsmasq-base" not in decided["missing_packages"]
    assert phases(run(dns_mode="filtering"), host(packages=DEBIAN["packages"]))["missing_packages"][-1] == "dnsmasq-base"
    # Check mode starts nothing: through it only when it already runs.
    assert phases(run(dns_mode="filtering", check_mode=True))["resolvers"] == []
    assert phases(run(dns_mode="filtering", check_mode=True), host(active={DNS_UNIT: "active"}))["resolvers"] == [
        "127.0.0.1"]
    # Without systemd there is no resolver unit to run.
    assert phases(run(dns_mode="filtering"), host(systemd=False))["resolvers"] == []


def test_check_mode_cannot_plan_before_the_resolvers_user_exists():
    missing = dict(ansible_facts=dict(getent_passwd={"agentguard-dns": None}))
    decided = phases(run(dns_mode="filtering", check_mode=True), lookup=missing)
    assert not decided["plan_rules"] and "the user agentguard-dns would be installed or created first" in decided["plan_blocked"]
    there = dict(ansible_facts=dict(getent_passwd={"agentguard-dns": ["x", "999", "999", "", "/", "/bin/false"]}))
    assert phases(run(dns_mode="filtering", check_mode=True), lookup=there)["plan_rules"]
    assert phases(run(dns_mode="filtering"), lookup=missing)["plan_rules"]


def test_leaving_filtering_mode_removes_the_resolver_and_resolves_through_it_until_then():
    left = dict(persisted(BOOT), **{DNS_FILES[0]: dict(type="file"), DNS_FILES[3]: dict(type="other")})
    decided = phases(state=host(paths=left, active={DNS_UNIT: "active"}))
    assert decided["remove_resolver"] and not decided["run_resolver"] and not decided["nothing_to_do"]
    assert decided["dns_leftovers"] == [DNS_FILES[0], DNS_FILES[3]]
    assert decided["resolvers"] == ["127.0.0.1"]
    assert not phases(run(dns_mode="filtering"), host(paths=left))["remove_resolver"]


def test_a_changed_plan_is_applied_then_checked_by_the_canary_and_persisted():
    decided = phases(plan=CHANGED, state=host())
    assert decided["apply_rules"] and decided["run_canary"] and decided["persist_rules"] and not decided["nothing_to_do"]
    assert not phases(run(canary=False), plan=CHANGED)["run_canary"]
    assert not phases(run(mode="audit"), plan=CHANGED)["run_canary"]
    assert not phases(plan=dict(CHANGED, skipped=True))["apply_rules"]


def test_check_mode_with_a_changed_plan_applies_nothing():
    decided = phases(run(check_mode=True), plan=CHANGED)
    assert not decided["apply_rules"] and not decided["run_canary"] and decided["nothing_to_do"]


def test_the_canary_on_every_run():
    decided = phases(run(canary_every_run=True))
    assert decided["run_canary"] and not decided["apply_rules"] and not decided["nothing_to_do"]


@pytest.mark.parametrize("change", ["content", "mode", "owner", "gone", "disabled"])
def test_persist_when_a_file_or_unit_differs(change):
    paths = persisted(BOOT)
    first = BOOT[1]["path"]
    enabled = None
    if change == "content":
        paths[first] = dict(paths[first], sha256="0" * 64)
    elif change == "mode":
        paths[first] = dict(paths[first], mode="0644")
    elif change == "owner":
        paths[first] = dict(paths[first], uid=1000)
    elif change == "gone":
        del paths[first]
    else:
        enabled = {"netfilter-persistent.service": "disabled"}
    decided = phases(state=host(paths=paths, enabled=enabled))
    assert decided["persist_rules"] and not decided["nothing_to_do"]
    assert not phases(run(persist=False), host(paths=paths, enabled=enabled))["persist_rules"]


def test_without_systemd_the_boot_units_are_not_asked():
    assert phases(state=host(paths=persisted(BOOT), enabled={}, systemd=False))["nothing_to_do"]
    assert not phases(state=host(paths=persisted(BOOT), enabled={}))["nothing_to_do"]


def test_a_plan_without_rules_persists_nothing():
    assert not phases(boot=[], state=host())["persist_rules"]


def test_absent_removes_and_is_never_done():
    decided = phases(run(state="absent"), plan=dict(changed=False))
    assert decided["remove_role_files"] and decided["remove_persisted_rules"] and not decided["nothing_to_do"] and decided["plan_rules"]
    assert not decided["install_packages"] and not decided["persist_rules"] and not decided["run_canary"]
    assert not phases(run(state="absent", persist=False))["remove_persisted_rules"]
    # Nothing to remove from a host without iptables: no plan (check mode or not).
    assert not phases(run(state="absent"), host(packages=[]))["plan_rules"]
    assert phases(run(state="absent"), host(packages=[]))["plan_blocked"] == ""


# ------------------------------------------------------------------------------------- filtering resolver
def test_dns_names_are_the_names_only_with_their_sets():
    allow = [dict(name="api", host="API.Example.com."), dict(name="v4", host="198.18.0.10"),
             dict(name="v6", host="fd00::10"), dict(name="net", host="198.18.0.0/24"),
             dict(name="wild", host="cdn.example.net", subdomains=True), dict(name="bad", host="exa mple")]
    assert F["egress_dns_names"](allow, ["ipv4", "ipv6"]) == [
        dict(label="api", host="api.example.com", subdomains=False, sets=["ag4-api", "ag6-api"]),
        dict(label="wild", host="cdn.example.net", subdomains=True, sets=["ag4-wild", "ag6-wild"]),
    ]
    assert F["egress_dns_names"](allow[:1], ["ipv6"])[0]["sets"] == ["ag6-api"]
    assert F["egress_dns_names"](allow) == F["egress_dns_names"](allow, ["ipv4", "ipv6"])  # no families: both


def test_dns_conflicts_are_wildcard_and_loopback_listeners():
    lines = [
        "udp   UNCONN 0      0          127.0.0.53%lo:53        0.0.0.0:*",
        "udp   UNCONN 0      0            127.0.0.1:53        0.0.0.0:*",
        "tcp   LISTEN 0      32             0.0.0.0:53        0.0.0.0:*",
        "tcp   LISTEN 0      32                [::]:53           [::]:*",
        "tcp   LISTEN 0      32               [::1]:53           [::]:*",
        "udp   UNCONN 0      0          198.19.0.1:53        0.0.0.0:*",
        "tcp   LISTEN 0      32                   *:53              *:*",
    ]
    assert F["egress_dns_conflicts"](lines) == [
        "udp UNCONN 0 0 127.0.0.1:53 0.0.0.0:*", "tcp LISTEN 0 32 0.0.0.0:53 0.0.0.0:*",
        "tcp LISTEN 0 32 [::]:53 [::]:*", "tcp LISTEN 0 32 [::1]:53 [::]:*", "tcp LISTEN 0 32 *:53 *:*"]
    assert F["egress_dns_conflicts"]([]) == []


def test_resolved_is_in_charge_when_it_runs_and_owns_resolv_conf():
    running = dict(active={"systemd-resolved.service": "active"})
    stub = dict(stat=dict(exists=True, islnk=True, lnk_source="/run/systemd/resolve/stub-resolv.conf"))
    assert F["egress_resolved_in_charge"](running, stub)
    assert not F["egress_resolved_in_charge"](dict(active={"systemd-resolved.service": "inactive"}), stub)
    assert not F["egress_resolved_in_charge"](running, dict(stat=dict(exists=True, islnk=False)))
    assert not F["egress_resolved_in_charge"]({}, {})


# ------------------------------------------------------------------------------------- failure messages
@pytest.mark.parametrize("restore,ending", [
    (dict(skipped=True), "No snapshot was taken and nothing was applied."),
    (dict(rc=0, changed=True), "The snapshot taken before the apply was restored."),
    (dict(rc=1, stderr="no snapshot.v4\n"), "Restoring the snapshot FAILED (no snapshot.v4): inspect the host."),
])
def test_a_failed_apply_says_why_and_what_became_of_the_rules(restore, ending):
    message = F["egress_failure_message"](dict(stderr=" iptables-restore: line 3 failed\n", msg="non-zero"), restore,
                                          "apply", "Apply the egress policy")
    assert message == 'The egress apply failed at "Apply the egress policy": iptables-restore: line 3 failed. ' + ending
    assert F["egress_failure_message"](dict(msg="timed out"), restore).startswith('The egress apply failed at "?": timed out.')


@pytest.mark.parametrize("restore,ending", [
    (dict(skipped=True), "This run did not change the rules, so nothing was rolled back."),
    (dict(rc=0), "The rules were rolled back to the snapshot taken before this run's apply and were not persisted."),
    (dict(rc=2, msg="unreachable"), "Restoring the snapshot taken before this run's apply FAILED (unreachable)"),
])
def test_a_failed_canary_says_why_and_what_became_of_the_rules(restore, ending):
    message = F["egress_failure_message"](dict(msg="Egress canary failed on h: x."), restore, "canary", "Check")
    assert message.startswith("Egress canary failed on h: x. " + ending)


def test_entry_users_are_asked_for_and_missing_ones_named_by_entry():
    allow = [dict(name="api", host="198.18.0.10"),
             dict(name="time", host="198.18.0.123", ports=[123], protocol="udp", users=["_chrony", "0"]),
             dict(name="mirror", host="198.18.0.80", users=["_apt", "agent"])]
    query = F["egress_host_query"]({}, "x.conf", [], [], ["agent"], allow)
    assert query["users"] == ["agent", "_chrony", "_apt"] and query["runtime_users"] == ["agent"]
    host = dict(platform=facts(), missing_users=["_chrony", "agent"])
    errors = F["egress_host_errors"](host, {"packages": []}, "h", allow, ["agent"])
    assert errors == [
        "egress_scope_users: agent do(es) not exist on h (create them first, or give numeric uids).",
        "egress_allow[1].users: user '_chrony' does not exist on h (install its service first, or give its uid).",
        "egress_allow[2].users: user 'agent' does not exist on h (install its service first, or give its uid).",
    ]
    assert F["egress_host_errors"](dict(platform=facts(), missing_users=["_chrony"]), {"packages": []}, "h", allow, []) == [
        "egress_allow[1].users: user '_chrony' does not exist on h (install its service first, or give its uid)."]


# ------------------------------------------------------------------------------------- the TLS gate
TLS = dict(ROLE_VARS["__egress_tls"], mode="enforce", user="agentguard-tlsgate")
TLS_UNIT_PATH = "/etc/systemd/system/agentguard-tlsgate.service"
GATE = dict(mode="enforce", user="agentguard-tlsgate", uid=998, listeners=[dict(port=443, listen=10443)],
            names=[dict(name="api.example.com", subdomains=False, ports=[443], addresses=["198.18.0.10", "fd00::10"])],
            ungated=[])
GATE_RESULT = dict(RESULT, tls_gate=GATE)


def gate_files(result=None, mode="enforce", dns_mode="pinned", before=None):
    return F["egress_tls_gate_files"](GATE_RESULT if result is None else result, mode, "agentguard-tlsgate", dns_mode, ["198.18.0.53"], TLS, MARKER,
                                      before or [], DEBIAN)


def test_tls_gate_inputs_name_the_variable():
    assert F["egress_input_errors"](options(tls_gate="enforce", tls_gate_user="agentguard-tlsgate"), [], 60, [], 20,
                                    ["agent.service"]) == []
    errors = F["egress_input_errors"](options(tls_gate="enforce", tls_gate_user="Bad User"), [], 60, [], 20, ["x y"])
    assert ("egress_tls_gate_user is 'Bad User': the role creates this system user, so give a name of lowercase "
            "letters, digits, '_' and '-' (at most 32, not starting with a digit or '-').") in errors, errors
    assert ("egress_tls_gate_before_units must hold systemd unit names such as agent.service; invalid: x y."
            in errors), errors
    # Off, the user is not the role's to create: no check.
    assert F["egress_input_errors"](options(tls_gate="off", tls_gate_user="Bad User")) == []


def test_the_module_refuses_an_unknown_gate_mode_by_the_roles_name():
    errors = F["egress_input_errors"](options(tls_gate="block", tls_gate_user="agentguard-tlsgate"))
    assert any(e.startswith("egress_tls_gate: 'block'") for e in errors), errors


def test_the_host_is_asked_about_the_gate():
    query = F["egress_host_query"](PLATFORMS, DROPIN, DNS_FILES, [DNS_UNIT], ["agent"], [], TLS)
    assert {"nginx-light", "libnginx-mod-stream", "nginx-mod-stream"} <= set(query["packages"])
    assert query["active"] == [DNS_UNIT, "agentguard-tlsgate.service", "nginx.service"]
    assert {"agentguard-tlsgate.service", "nginx.service"} <= set(query["enabled"])
    assert {TLS_UNIT_PATH, "/etc/agentguard/tls-gate/nginx.conf", "/etc/agentguard/tls-gate"} <= set(query["paths"])
    assert query["users"] == ["agent", "agentguard-tlsgate"] and query["runtime_users"] == ["agent"]


def test_every_file_the_fast_path_compares_is_one_the_host_is_asked_about():
    """The fast path compares each file the role would write with the hash egress_host_state returned for it: a path
    the host is not asked about has no hash, so the phase that writes it ran on every run (the gate's drop-ins of
    egress_tls_gate_before_units did: the gate and the canary on every run of such a host)."""
    tls = dict(TLS, before_units=["agent.service", "other.service"])
    query = F["egress_host_query"](PLATFORMS, DROPIN, DNS_FILES, [DNS_UNIT], ["agent"], [], tls,
                                   dict(wanted=True, before_units=["agent.service"]))
    el9 = F["egress_platform"](dict(platform=facts("RedHat", "9")), PLATFORMS)
    wanted = (F["egress_boot_files"](RESULT, DEBIAN, MARKER, DROPIN) + F["egress_boot_files"](RESULT, el9, MARKER, DROPIN)
              + gate_files(before=tls["before_units"])
              + F["egress_guard_files"](dict(before_units=["agent.service"]), MARKER, DEBIAN, True, "/m", ["agent.service"]))
    assert [f["path"] for f in wanted if f["path"] not in query["paths"]] == []
    # A gate host with drop-ins, converged, ends after the plan.
    files = gate_files(before=tls["before_units"])
    decided = tls_phases(current_gate(files), plan=dict(GATE_RESULT, changed=False), files=files)
    assert decided["nothing_to_do"] and not decided["set_up_tls_gate"]


def test_the_gate_user_is_the_roles_to_create_and_the_gate_needs_systemd():
    state = dict(platform=facts(), systemd=False, missing_users=["agentguard-tlsgate"])
    errors = F["egress_host_errors"](state, DEBIAN, "h1", [], [], TLS)
    assert errors == ["egress_tls_gate is enforce, but systemd is not PID 1 on h1: the gate runs as a systemd unit. "
                      "Set egress_tls_gate: off on this host."]
    assert F["egress_host_errors"](dict(state, systemd=True), DEBIAN, "h1", [], [], TLS) == []
    assert F["egress_host_errors"](state, DEBIAN, "h1", [], [], dict(TLS, mode="off")) == []


def test_gate_files_are_the_config_unit_and_dropins():
    files = gate_files(before=["agent.service"])
    assert [(f["path"], f["kind"], f["mode"]) for f in files] == [
        ("/etc/agentguard/tls-gate/nginx.conf", "config", "0644"), (TLS_UNIT_PATH, "unit", "0644"),
        ("/etc/systemd/system/agent.service.d/10-agentguard-tlsgate.conf", "dropin", "0644")]
    config, unit, dropin = (f["content"] for f in files)
    assert config.startswith("# %s (role egress)" % MARKER)
    assert "pid /var/lib/agentguard-tlsgate/nginx.pid;" in config
    assert "access_log /var/log/agentguard-tlsgate/access.log tls_gate;" in config
    assert "server 198.18.0.10:443;" in config and "server [fd00::10]:443;" in config
    # Pinned mode: the trusted resolvers, only for names audit mode passes.
    assert "resolver 198.18.0.53 " in config
    assert "Wants=agentguard-tlsgate.service\nAfter=agentguard-tlsgate.service\n" in dropin


@pytest.mark.parametrize("directive", [
    "User=agentguard-tlsgate", "Group=agentguard-tlsgate", "CapabilityBoundingSet=\n", "AmbientCapabilities=\n",
    "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "PrivateDevices=yes", "ProtectHome=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources", "LogsDirectory=agentguard-tlsgate", "StateDirectory=agentguard-tlsgate",
    "MemoryDenyWriteExecute=yes", "RestrictNamespaces=yes", "WantedBy=multi-user.target",
    "ExecStartPre=/usr/sbin/nginx -t -q -c /etc/agentguard/tls-gate/nginx.conf\n",
    "ExecStart=/usr/sbin/nginx -c /etc/agentguard/tls-gate/nginx.conf -g 'daemon off;'\n",
    "After=network.target netfilter-persistent.service\n",
])
def test_the_gate_unit_is_hardened(directive):
    unit = gate_files()[1]["content"]
    assert directive in unit, unit
    assert "ReadWritePaths" not in unit and "User=root" not in unit


def test_in_filtering_mode_the_gate_asks_the_filtering_resolver_after_it_starts():
    config, unit = (f["content"] for f in gate_files(dns_mode="filtering"))
    assert "resolver 127.0.0.1 " in config and "upstream tls_gate_" not in config
    assert "After=network.target netfilter-persistent.service agentguard-dns.service\n" in unit
    assert "Wants=agentguard-dns.service\n" in unit


def test_no_gate_files_when_off_or_without_a_plan():
    assert gate_files(mode="off") == []
    assert gate_files(result=RESULT) == []
    assert gate_files(result=dict(RESULT, tls_gate=dict(GATE, mode="off", listeners=[]))) == []


def tls_run(**over):
    return run(tls=dict(TLS, **over))


def current_gate(files, **over):
    """A host whose gate files are as wanted, its unit enabled and active."""
    paths = persisted(BOOT)
    paths.update(persisted(files))
    return host(paths=paths, packages=ALL_DEBIAN + DEBIAN["tls_gate_packages"],
                active={"agentguard-tlsgate.service": "active"},
                enabled={"netfilter-persistent.service": "enabled", "agentguard-tlsgate.service": "enabled",
                         "nginx.service": "masked"}, **over)


def tls_phases(state, plan=None, asked=None, tls_user=None, files=None):
    return F["egress_phases"](asked or tls_run(), state, DEBIAN, BOOT, GATE_RESULT if plan is None else plan, {},
                              gate_files() if files is None else files, tls_user or {})


def test_a_converged_gate_is_done_after_the_plan():
    decided = tls_phases(current_gate(gate_files()), plan=dict(GATE_RESULT, changed=False))
    assert decided["nothing_to_do"] and decided["tls_gate_on"]
    assert not any(decided[k] for k in ("create_tls_gate_user", "mask_nginx", "set_up_tls_gate", "remove_tls_gate",
                                        "install_packages"))


def test_turning_the_gate_on_installs_nginx_after_masking_its_service_and_creates_the_user():
    state = host(paths=persisted(BOOT), enabled={"netfilter-persistent.service": "enabled", "nginx.service": "not-found"})
    state["missing_users"] = ["agentguard-tlsgate"]
    decided = tls_phases(state, plan=dict(GATE_RESULT, changed=True), files=[])
    assert decided["install_packages"] and decided["missing_packages"] == ["nginx-light", "libnginx-mod-stream"]
    assert decided["mask_nginx"] and decided["create_tls_gate_user"] and decided["apply_rules"] and decided["run_canary"]
    # The gate's files come from the module's result: none before the plan, so nothing to set up yet.
    assert not decided["set_up_tls_gate"]


def test_the_gate_is_set_up_after_every_apply_even_with_its_files_current():
    """tasks/tls_gate.yml runs after the apply (its phase, from the applied result): it writes what changed (nothing
    here), makes sure the gate runs and listens, and a failure there restores the apply's snapshot."""
    decided = tls_phases(current_gate(gate_files()), plan=dict(GATE_RESULT, changed=True))
    assert decided["apply_rules"] and decided["set_up_tls_gate"]
    # Not in check mode (no apply), nor for a plan that could not run.
    assert not tls_phases(current_gate(gate_files()), asked=run(check_mode=True, tls=TLS),
                          plan=dict(GATE_RESULT, changed=True))["set_up_tls_gate"]
    assert not tls_phases(current_gate(gate_files()), plan=dict(GATE_RESULT, changed=True, skipped=True))["set_up_tls_gate"]


def test_a_web_server_already_installed_is_not_masked():
    state = current_gate(gate_files())
    state["enabled"]["nginx.service"] = "enabled"
    assert not tls_phases(state)["mask_nginx"]


def test_check_mode_cannot_plan_before_the_gate_user_exists():
    state = host(paths=persisted(BOOT))
    state["missing_users"] = ["agentguard-tlsgate"]
    decided = tls_phases(state, asked=run(check_mode=True, tls=TLS), tls_user=dict(changed=True), plan={}, files=[])
    assert not decided["plan_rules"]
    assert decided["plan_blocked"] == ("Check mode: nginx-light, libnginx-mod-stream, the user agentguard-tlsgate would "
                                       "be installed or created first, so the rules cannot be planned on this host yet.")
    # Not in check mode, the user was created before the plan.
    decided = tls_phases(dict(state, packages=ALL_DEBIAN + DEBIAN["tls_gate_packages"]), tls_user=dict(changed=True))
    assert decided["plan_rules"] and decided["plan_blocked"] == ""


@pytest.mark.parametrize("change", ["content", "inactive", "disabled", "mode"])
def test_the_gate_alone_is_set_up_when_its_files_or_unit_differ(change):
    files = gate_files()
    state = current_gate(files)
    if change == "content":
        state["paths"]["/etc/agentguard/tls-gate/nginx.conf"]["sha256"] = "0" * 64
    elif change == "mode":
        state["paths"][TLS_UNIT_PATH]["mode"] = "0666"
    elif change == "inactive":
        state["active"]["agentguard-tlsgate.service"] = "failed"
    else:
        state["enabled"]["agentguard-tlsgate.service"] = "disabled"
    decided = tls_phases(state, plan=dict(GATE_RESULT, changed=False))
    assert decided["set_up_tls_gate"] and decided["run_canary"] and not decided["apply_rules"] and not decided["nothing_to_do"]


def test_the_gate_is_removed_when_off_or_absent_and_it_left_something():
    files = gate_files()
    state = current_gate(files)
    for asked in (tls_run(mode="off"), run(state="absent", tls=TLS)):
        decided = F["egress_phases"](asked, state, DEBIAN, BOOT, dict(RESULT, changed=True), {}, [], {})
        assert decided["remove_tls_gate"] and not decided["tls_gate_on"] and not decided["nothing_to_do"]
        assert decided["tls_leftovers"] == [TLS_UNIT_PATH, "/etc/agentguard/tls-gate/nginx.conf"]
    # Nothing left: nothing to remove.
    decided = F["egress_phases"](tls_run(mode="off"), host(paths=persisted(BOOT)), DEBIAN, BOOT, UNCHANGED, {}, [], {})
    assert not decided["remove_tls_gate"] and decided["nothing_to_do"]


def test_removal_is_not_refused_for_the_gate_or_the_users_of_entries():
    """egress_state=absent takes the rules away on a host without systemd too (the gate is being removed), and
    its entries' users are not asked for (egress_host_query), so not refused."""
    allow = [dict(name="chrony", host="198.18.0.12", ports=[123], proto="udp", users=["_chrony"])]
    tls = dict(mode="enforce", user="gate", unit="g.service", conf="/etc/g/n.conf")
    present = F["egress_phases"](run(allow=allow, tls=tls, scope_users=[]), dict(host(systemd=False), missing_users=["_chrony"]),
                                 DEBIAN, [], {}, {}, [], {})
    assert len(present["host_errors"]) == 2
    absent = F["egress_phases"](run(state="absent", allow=allow, tls=tls, scope_users=[]), host(systemd=False),
                                DEBIAN, [], {}, {}, [], {})
    assert absent["host_errors"] == []


def test_decide_is_the_phases_of_the_pieces_it_computes_once():
    """The role's one call: the platform row, the boot files and the gate's files from the results as they are."""
    tls = dict(TLS, before_units=["agent.service"])
    asked = run(tls=tls, dns=dict(run()["dns"], servers=["198.18.0.53"]), marker=MARKER, dropin=DROPIN)
    state = host(packages=ALL_DEBIAN + DEBIAN["tls_gate_packages"])
    decided = F["egress_decide"](asked, state, PLATFORMS, GATE_RESULT, UNCHANGED, {}, {})
    boot = F["egress_boot_files"](GATE_RESULT, DEBIAN, MARKER, DROPIN)
    files = F["egress_tls_gate_files"](GATE_RESULT, "enforce", tls["user"], "pinned", ["198.18.0.53"], tls, MARKER,
                                       ["agent.service"], DEBIAN)
    assert decided["platform"] == DEBIAN and decided["boot_files"] == boot and decided["tls_files"] == files
    assert files and boot
    expected = F["egress_phases"](asked, state, DEBIAN, boot, UNCHANGED, {}, files, {})
    assert dict((k, v) for k, v in decided.items() if k not in ("platform", "boot_files", "tls_files", "guard_files")) == expected
    # Before the host is read and before the plan: no platform, nothing to persist or to write for the gate.
    early = F["egress_decide"](asked, {}, PLATFORMS)
    assert early["platform"] == {} and early["boot_files"] == [] and early["tls_files"] == []


def test_never_done_before_a_plan_is_known_or_on_a_host_to_refuse():
    """The fast path ends the role after egress_host_state only on its plan: a fresh host (no plan yet: no
    iptables, no dnspython) goes on to install and plan, and a host to refuse goes on to its refusal."""
    assert not phases(plan={})["nothing_to_do"] and phases()["nothing_to_do"]
    refused = phases(run(scope_users=["bot"]), dict(host(paths=persisted(BOOT)), missing_users=["bot"]))
    assert refused["host_errors"] and refused["prepare_host"] and not refused["nothing_to_do"]


def test_the_gate_unit_runs_on_nginx_1_18():
    """nginx before 1.19.5 (Debian 11: 1.18) has no -e and exits with 'invalid option: "e"'; Debian 12 and 13 build
    stderr in as the early error log, so -e stderr changed nothing there (Molecule scenario platforms)."""
    unit = gate_files()[1]["content"]
    commands = [line for line in unit.splitlines() if line.startswith(("ExecStartPre=", "ExecStart="))]
    assert len(commands) == 2 and not [line for line in commands if " -e " in line], commands


# ------------------------------------------------------------------------------------- the canary and egress_scope none
NONE = dict(scope="none", scope_networks=["docker0"])


def test_forbidden_probes_from_the_host_are_refused_with_scope_none():
    """issue 24 item 6: the canary probes from the host, which scope none leaves open by design."""
    errors = F["egress_input_errors"](options(**NONE), [], 60, ["198.18.0.66:443"])
    assert [e for e in errors if "egress_scope" in e] == [
        "egress_canary_forbidden: ['198.18.0.66:443'] is probed from the host itself, but egress_scope is 'none', which "
        "restricts no local process: those destinations are open from the host by design, and the canary would fail "
        "this policy and roll it back. The canary cannot prove the forwarded path of egress_scope_networks (it does "
        "not run inside a container network): leave egress_canary_forbidden empty with egress_scope none, and check "
        "the containers' denials with egress-report.yml."], errors


@pytest.mark.parametrize("over, forbidden, canary", [
    (NONE, [], True),                                   # nothing to probe: the canary checks the allowed ones only
    (dict(NONE, mode="audit"), ["198.18.0.66:443"], True),   # no canary in audit mode
    (dict(NONE, state="absent"), ["198.18.0.66:443"], True),
    (NONE, ["198.18.0.66:443"], False),                 # egress_canary: false
    (NONE, ["198.18.0.66:443"], "no"),
    (dict(), ["198.18.0.66:443"], True),                # scope host: the host itself is held
    (dict(scope="users", users=["agent"]), ["198.18.0.66:443"], True),  # probed as the restricted user
])
def test_the_canary_scope_decision_when_it_can_prove_it(over, forbidden, canary):
    errors = F["egress_input_errors"](options(**over), [], 60, forbidden, 20, [], canary)
    assert not [e for e in errors if "egress_canary_forbidden:" in e], errors
def test_unknown_egress_variables_are_errors_with_the_closest_name():
    known = ["egress_allow", "egress_dns_servers", "egress_mode"]
    variables = known + ["egress_alow", "egress_dns_server", "egress_colour", "egress_result", "egress_target",
                         "egress_report_since", "egress_export_namespace"]
    errors = F["egress_input_errors"](options(), variables=variables, known=known)
    assert [e.split(";")[0] for e in errors] == [
        "egress_alow is not a variable of the role egress (did you mean egress_allow?)",
        "egress_colour is not a variable of the role egress",
        "egress_dns_server is not a variable of the role egress (did you mean egress_dns_servers?)",
    ]
    # Without the role's variable names (another caller), no such check.
    assert F["egress_input_errors"](options(), variables=variables) == []


def test_the_learn_playbooks_variables_are_no_errors_and_its_misspellings_are():
    """egress_learn.yml's inputs (egress_learn_names in group_vars) and what it registers on the agents
    (egress_learned_host, seen by the role later in the same run: molecule/learn's side_effect) are not the
    role's, and are no error; a misspelled learn option of the role still is."""
    known = ["egress_learn", "egress_learn_users", "egress_learn_maxelem", "egress_learn_timeout"]
    variables = known + ["egress_learn_names", "egress_learned_host", "egress_learn_play_hosts", "egress_learn_dir",
                         "egress_learn_accept", "egress_learn_accept_withheld", "egress_learn_target", "egress_learn_user"]
    errors = F["egress_input_errors"](options(), variables=variables, known=known)
    assert [e.split(";")[0] for e in errors] == [
        "egress_learn_user is not a variable of the role egress (did you mean egress_learn_users?)"]
