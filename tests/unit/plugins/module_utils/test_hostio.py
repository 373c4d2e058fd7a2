"""_hostio: the one host object every planner and reader asks, and the modules' runner (module_host)."""
import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import HostIO, module_host


class FakeModule(object):
    def __init__(self, binaries=("ip",), error=None):
        self.binaries, self.error = binaries, error
        self.calls, self.warnings = [], []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return "/usr/sbin/" + name if name in self.binaries else None

    def run_command(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        if self.error:
            raise self.error
        return 2, "partial\n", "oops"

    def warn(self, text):
        self.warnings.append(text)


def test_module_host_looks_bare_names_up_and_runs_with_lc_all_c():
    module = FakeModule()
    host = module_host(module)
    assert host.run(["ip", "-j", "addr"], "data") == (2, "partial\n", "oops")
    assert host.run(["/usr/bin/iptables-save"]) == (2, "partial\n", "oops")
    assert [argv for argv, kwargs in module.calls] == [["/usr/sbin/ip", "-j", "addr"], ["/usr/bin/iptables-save"]]
    assert module.calls[0][1] == dict(data="data", binary_data=True, environ_update={"LC_ALL": "C"},
                                      handle_exceptions=False)
    host.warn("said")
    assert module.warnings == ["said"] and host.which("ip") == "/usr/sbin/ip" and host.which("nft") is None
    # Whatever the exit code, output is stdout.
    assert host.output(["ip"]) == "partial\n"


def test_a_missing_command_raises_and_one_that_cannot_run_fails_without_failing_the_module():
    host = module_host(FakeModule(binaries=()))
    with pytest.raises(OSError, match="ip not found"):
        host.run(["ip", "route"])
    assert host.output(["ip", "route"]) == ""
    broken = module_host(FakeModule(error=OSError(32, "Broken pipe")))
    rc, out, err = broken.run(["/usr/sbin/iptables-restore"], "*filter\n")
    assert rc == 1 and out == "" and "could not run or feed /usr/sbin/iptables-restore" in err


def test_readers_are_replaced_by_keyword_and_only_known_ones():
    host = HostIO(run=None, which=None, warn=None, exists=lambda path: path == "/x", comms=lambda: {"chronyd"})
    assert host.exists("/x") and not host.exists("/") and host.comms() == {"chronyd"}
    assert HostIO(run=None, which=None, warn=None).exists("/")
    with pytest.raises(TypeError, match="no reader exist"):
        HostIO(run=None, which=None, warn=None, exist=lambda path: True)
    # egress_host_state's fast path keeps the plan's warnings to itself.
    module, said = FakeModule(), []
    module_host(module, warn=said.append).warn("kept")
    assert said == ["kept"] and module.warnings == []
