"""Resolution against a real DNS server (dnsmasq) that the test starts on loopback."""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P
from ansible_collections.agentguard.hardening.plugins.module_utils import _resolve as R

HOSTS = """198.18.0.10 api.test
198.18.0.9 api.test
198.18.0.10 api.test
fd00:a9e:1::10 api.test
198.18.0.11 v4only.test
fd00:a9e:1::12 v6only.test
"""


def _free_port(kind):
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _dnsmasq():
    path = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("dnsmasq is required for the resolver tests (scripts/bootstrap.sh installs dnsmasq-base)")
        pytest.skip("dnsmasq not installed (scripts/bootstrap.sh installs dnsmasq-base)")
    return path


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory):
    hosts = tmp_path_factory.mktemp("dns") / "hosts"
    hosts.write_text(HOSTS)
    port = _free_port(socket.SOCK_DGRAM)
    import pwd
    user = pwd.getpwuid(os.getuid()).pw_name
    proc = subprocess.Popen([
        _dnsmasq(), "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", "--user=%s" % user,
        "--no-resolv", "--no-hosts", "--addn-hosts=%s" % hosts, "--listen-address=127.0.0.1",
        "--bind-interfaces", "--port=%d" % port, "--local=/test/", "--cname=alias.test,api.test",
        "--txt-record=nodata.test,nothing-here", "--log-facility=-",
    ], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            R.resolve_destinations([P.Destination("probe", "api.test", "name", ("443",), "tcp")],
                                   ["127.0.0.1"], ("ipv4",), timeout=0.5, retries=0, port=port)
            break
        except R.ResolveError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("dnsmasq did not start: %s" % proc.stderr.read())
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def dest(host, name="d"):
    kind, canonical = P.parse_host(host, "h")
    return P.Destination(name, canonical, kind, ("443",), "tcp", networks=() if kind == "name" else ((kind, canonical),))


def test_a_and_aaaa_sorted_and_deduplicated(dns_server):
    result = R.resolve_destinations([dest("api.test", "api")], ["127.0.0.1"], ("ipv4", "ipv6"), port=dns_server)
    assert result == {"api": {"ipv4": ["198.18.0.9", "198.18.0.10"], "ipv6": ["fd00:a9e:1::10"]}}


def test_same_answer_same_result(dns_server):
    runs = [R.resolve_destinations([dest("api.test")], ["127.0.0.1"], ("ipv4", "ipv6"), port=dns_server) for dummy in range(3)]
    assert runs[0] == runs[1] == runs[2]


def test_cname_is_followed(dns_server):
    result = R.resolve_destinations([dest("alias.test")], ["127.0.0.1"], ("ipv4",), port=dns_server)
    assert result["d"]["ipv4"] == ["198.18.0.9", "198.18.0.10"]


def test_family_filter_skips_queries(dns_server):
    result = R.resolve_destinations([dest("api.test")], ["127.0.0.1"], ("ipv6",), port=dns_server)
    assert result["d"] == {"ipv4": [], "ipv6": ["fd00:a9e:1::10"]}


def test_one_family_missing_is_fine(dns_server):
    result = R.resolve_destinations([dest("v4only.test"), dest("v6only.test", "e")], ["127.0.0.1"],
                                    ("ipv4", "ipv6"), port=dns_server)
    assert result["d"] == {"ipv4": ["198.18.0.11"], "ipv6": []}
    assert result["e"] == {"ipv4": [], "ipv6": ["fd00:a9e:1::12"]}


def test_nxdomain_names_name_resolver_and_answer(dns_server):
    with pytest.raises(R.ResolveError) as info:
        R.resolve_destinations([dest("missing.test", "api")], ["127.0.0.1"], ("ipv4",), port=dns_server)
    text = str(info.value)
    assert "allow api: cannot resolve missing.test (A) through 127.0.0.1" in text and "NXDOMAIN" in text


def test_no_data_fails(dns_server):
    with pytest.raises(R.ResolveError) as info:
        R.resolve_destinations([dest("nodata.test")], ["127.0.0.1"], ("ipv4", "ipv6"), port=dns_server)
    assert "nodata.test has no A or AAAA record at 127.0.0.1 (answer: NOERROR, no data)" in str(info.value)


def test_literals_pass_through_without_dns():
    result = R.resolve_destinations([dest("198.18.0.0/24"), dest("fd00::1", "six")], [], ("ipv4", "ipv6"))
    assert result == {"d": {"ipv4": ["198.18.0.0/24"], "ipv6": []}, "six": {"ipv4": [], "ipv6": ["fd00::1/128"]}}


def test_silent_resolver_times_out_with_bounded_retries():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        port = silent.getsockname()[1]
        sleeps = []
        start = time.monotonic()
        with pytest.raises(R.ResolveError) as info:
            R.resolve_destinations([dest("api.test")], ["127.0.0.1"], ("ipv4",), timeout=0.3, retries=2,
                                   port=port, sleep=sleeps.append)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert "timed out" in str(info.value) and "after 3 attempt(s)" in str(info.value)
    assert "through 127.0.0.1" in str(info.value)
    assert len(sleeps) == 2 and elapsed < 3.0


def test_refusing_resolver_fails_fast():
    port = _free_port(socket.SOCK_DGRAM)  # nothing listens: ICMP port unreachable
    with pytest.raises(R.ResolveError, match="cannot resolve api.test"):
        R.resolve_destinations([dest("api.test")], ["127.0.0.1"], ("ipv4",), timeout=0.5, retries=0, port=port)


def test_sort_addresses_numeric():
    assert R.sort_addresses(["10.0.0.10", "10.0.0.9", "10.0.0.10"]) == ["10.0.0.9", "10.0.0.10"]


# The transports dnspython loads for DNS over HTTPS/QUIC when they are installed. Stand-ins that record
# their import are installed (with package metadata, which dnspython >= 2.4 checks) in a fresh interpreter.
def _fake_transports(root, marker):
    try:
        from dns import _features
        names = [req.split(">=")[0] for feature in ("doh", "doq") for req in _features._requirements.get(feature, [])]
    except ImportError:
        names = []
    names = sorted(set(names + ["httpx", "httpcore", "h2", "requests", "requests_toolbelt", "aioquic"]))
    body = "with open(%r, 'a') as handle:\n    handle.write(__name__ + '\\n')\n" % str(marker)
    for name in names:
        package = root / name
        (package / "_backends").mkdir(parents=True)
        for init in (package / "__init__.py", package / "_backends" / "__init__.py", package / "_backends" / "sync.py"):
            init.write_text(body)
        info = root / ("%s-99.0.0.dist-info" % name)
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 99.0.0\n" % name)
    return names


def _python(code, root):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root)] + [p for p in sys.path if p]))
    return subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, env=env, check=False)


def test_dnspython_loads_without_its_doh_transports(tmp_path, dns_server):
    marker = tmp_path / "imported"
    root = tmp_path / "site"
    root.mkdir()
    names = _fake_transports(root, marker)
    # Control: plain dnspython does import them (so the check below can fail).
    _python("import dns.query, dns.resolver", root)
    assert marker.exists() and marker.read_text().strip(), "dnspython did not try the stand-in transports"
    marker.unlink()
    code = (
        "import sys\n"
        "from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P, _resolve as R\n"
        "d = P.Destination('api', 'api.test', 'name', ('443',), 'tcp')\n"
        "print(R.resolve_destinations([d], ['127.0.0.1'], ('ipv4',), port=%d))\n"
        "assert not [m for m in R.UNUSED_TRANSPORTS if sys.modules.get(m, 1) is None], 'left hidden'\n"
        "import %s\n"  # still importable by anything else in the process
        "print('later import ok')\n" % (dns_server, names[0]))
    proc = _python(code, root)
    assert proc.returncode == 0, proc.stdout
    assert "'ipv4': ['198.18.0.9', '198.18.0.10']" in proc.stdout and "later import ok" in proc.stdout
    imported = marker.read_text().split() if marker.exists() else []
    assert imported == [names[0]], imported  # only the explicit import after loading


def test_literal_addresses_never_load_dnspython():
    code = (
        "import sys\n"
        "from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P, _resolve as R\n"
        "print(R.resolve_destinations([P.Destination('d', '198.18.0.1/32', 'ipv4', ('443',), 'tcp', networks=(('ipv4', '198.18.0.1/32'),))], [], ('ipv4',)))\n"
        "print('dns' in sys.modules)\n")
    proc = _python(code, "")
    assert proc.returncode == 0 and proc.stdout.split("\n")[1] == "False", proc.stdout
