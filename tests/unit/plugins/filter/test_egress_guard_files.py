"""The guard's files (egress_guard_files) and the role's decisions about it (egress_phases: guard, remove_guard,
guard_skipped, and the fast path's done), fed registered results as the role registers them."""
import os

import yaml

from ansible_collections.agentguard.hardening.plugins.module_utils._desired import GUARD_FILES

from .test_egress_phases import DEBIAN, F, MARKER, PLATFORMS, ROLE_VARS, ROOT, host, persisted, run

from ansible_collections.agentguard.hardening.plugins.filter.egress_boot_files import GUARD
from ansible_collections.agentguard.hardening.plugins.module_utils import _desired as D
from ansible_collections.agentguard.hardening.plugins.module_utils import _guard as G

UNIT = GUARD["unit"]


def test_the_guards_places_are_the_roles_and_the_guards():
    assert GUARD["state_dir"] == ROLE_VARS["__egress_state_dir"] == D.STATE_DIR
    assert GUARD["guard_dir"] == G.GUARD_DIR


def files(**over):
    args = dict(platform=DEBIAN, metrics=True, metrics_dir="/var/lib/prometheus/node-exporter", before_units=["agent.service"])
    args.update(over)
    return F["egress_guard_files"]({}, MARKER, **args)


def asked(on=True, **over):
    return run(guard=dict(wanted=on), **over)


def guarded_host(wanted, systemd=True, **over):
    """A host with the persisted files, the guard's files as wanted, and its unit running."""
    state = host(paths=persisted(wanted), systemd=systemd)
    state["active"][UNIT] = over.get("active", "active")
    state["enabled"][UNIT] = over.get("enabled", "enabled")
    return state


def decide(asked_, state, wanted):
    from .test_egress_phases import BOOT, UNCHANGED
    state["paths"].update(persisted(BOOT))
    return F["egress_phases"](asked_, state, DEBIAN, BOOT, UNCHANGED, {}, None, None, wanted)


def test_the_guards_code_is_the_collections_module_utils_byte_for_byte():
    wanted = files()
    code = [f for f in wanted if f["kind"] == "code"]
    assert [os.path.basename(f["path"]) for f in code] == list(GUARD_FILES)
    for f in code:
        assert f["path"].startswith("/usr/lib/agentguard/guard/ansible_collections/agentguard/hardening/plugins/module_utils/")
        with open(os.path.join(ROOT, "plugins", "module_utils", os.path.basename(f["path"]))) as handle:
            assert f["content"] == handle.read()
        assert f["mode"] == "0644"
    entry = [f for f in wanted if f["kind"] == "entry"]
    # Run by the unit as `/usr/bin/python3 -I ENTRY`: no shebang, not executable.
    assert entry[0]["path"] == "/usr/lib/agentguard/agentguard-guard" and entry[0]["mode"] == "0644"
    assert "sys.path.insert(0, os.environ.get(\"AGENTGUARD_GUARD_LIB\", \"/usr/lib/agentguard/guard\"))" in entry[0]["content"]


def test_the_unit_orders_the_guard_and_hardens_it():
    unit = [f for f in files() if f["kind"] == "unit"][0]
    assert unit["path"] == "/etc/systemd/system/agentguard-guard.service"
    text = unit["content"]
    assert text.startswith("# %s" % MARKER)
    lines = text.splitlines()
    after = [x for x in lines if x.startswith("After=")][0].split("=", 1)[1].split()
    assert {"netfilter-persistent.service", "nftables.service", "firewalld.service", "ufw.service"} <= set(after)
    assert "agent.service" in [x for x in lines if x.startswith("Before=")][0]
    assert "Type=notify" in text and "IPAddressDeny=any" in text and "ProtectSystem=strict" in text
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW" in text
    assert "PrivateNetwork" not in text  # it would hide the host's netfilter
    assert "--metrics-dir /var/lib/prometheus/node-exporter" in text
    assert "ReadWritePaths=/var/lib/agentguard/egress /run -/var/lib/prometheus/node-exporter" in text
    no_metrics = [f for f in files(metrics=False) if f["kind"] == "unit"][0]["content"]
    assert "--metrics-dir" not in no_metrics and "node-exporter" not in no_metrics


def test_the_host_is_asked_about_the_guards_files_and_unit():
    query = F["egress_host_query"](PLATFORMS, "x.conf", [], [], [], [], {}, {})
    for f in files():
        if f["kind"] != "unit":
            assert f["path"] in query["paths"], f["path"]
    assert "/etc/systemd/system/agentguard-guard.service" in query["paths"]
    assert UNIT in query["active"] and UNIT in query["enabled"]


def test_a_host_with_the_guard_running_is_done():
    wanted = files()
    decided = decide(asked(), guarded_host(wanted), wanted)
    assert decided["nothing_to_do"] and not decided["install_guard"] and not decided["remove_guard"]
    assert decided["guard_skipped"] == ""


def test_a_missing_or_different_file_or_a_stopped_unit_installs_the_guard():
    wanted = files()
    for change in ("missing", "content", "stopped", "disabled"):
        state = guarded_host(wanted)
        path = wanted[0]["path"]
        if change == "missing":
            del state["paths"][path]
        elif change == "content":
            state["paths"][path] = dict(state["paths"][path], sha256="0" * 64)
        elif change == "stopped":
            state["active"][UNIT] = "inactive"
        else:
            state["enabled"][UNIT] = "disabled"
        decided = decide(asked(), state, wanted)
        assert decided["install_guard"] and not decided["nothing_to_do"], change


def test_guard_off_or_absent_removes_what_it_left():
    wanted = files()
    for asked_ in (asked(on=False), asked(state="absent")):
        decided = decide(asked_, guarded_host(wanted), [])
        assert decided["remove_guard"] and not decided["install_guard"] and not decided["nothing_to_do"]
        assert "/etc/systemd/system/agentguard-guard.service" in decided["guard_leftovers"]
        assert decided["guard_remove"][-2:] == ["/var/lib/agentguard/guard", "/var/lib/agentguard/egress/desired.json"]
    # Nothing left: nothing to do.
    decided = decide(asked(on=False), host(), [])
    assert not decided["remove_guard"] and decided["nothing_to_do"]


def test_without_systemd_the_guard_is_skipped_and_said():
    decided = decide(asked(), host(systemd=False), [])
    # The guard phase runs only to say so (tasks/guard.yml), every run.
    assert decided["install_guard"] and not decided["remove_guard"] and not decided["nothing_to_do"]
    assert "systemd is not PID 1" in decided["guard_skipped"]
    assert decide(asked(on=False), host(systemd=False), [])["nothing_to_do"]


def test_decide_computes_the_guards_files_only_where_it_runs():
    base = dict(asked(), marker=MARKER, dropin="d.conf", tls={}, guard=dict(wanted=True, metrics=False))
    state = dict(host(), platform=DEBIAN.get("platform") or host()["platform"])
    decided = F["egress_decide"](base, state, PLATFORMS, {}, {})
    assert [f["kind"] for f in decided["guard_files"]][-1] == "unit"
    assert F["egress_decide"](dict(base, state="absent"), state, PLATFORMS, {}, {})["guard_files"] == []
    assert F["egress_decide"](base, dict(state, systemd=False), PLATFORMS, {}, {})["guard_files"] == []


def test_role_defaults_and_specs_agree():
    with open(os.path.join(ROOT, "roles", "egress", "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    with open(os.path.join(ROOT, "roles", "egress", "meta", "argument_specs.yml")) as handle:
        specs = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    for name in ("egress_guard", "egress_metrics", "egress_metrics_dir"):
        assert defaults[name] == specs[name]["default"], name
