"""The TLS gate's nginx configuration (checked by a real `nginx -t` when nginx and its stream module
are installed), its log parser and the join with the `[EGRESS-TLS]` kernel lines. How the
configuration behaves with real connections is proven in tests/netns/test_tls_gate.py."""
import os
import shutil
import subprocess

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.agentguard.hardening.plugins.filter.egress_tls_gate import FilterModule, egress_tls_gate_config
from ansible_collections.agentguard.hardening.plugins.module_utils import _tlsgate as G

GATE = {
    "mode": "enforce", "user": "tlsgate", "uid": 990,
    "listeners": [{"port": 443, "listen": 10443}, {"port": 8443, "listen": 10444}],
    "names": [{"name": "api.test", "subdomains": False, "ports": [443, 8443],
               "addresses": ["198.18.0.10", "fd00:a9e:1::10"]},
              {"name": "cdn.test", "subdomains": True, "ports": [443], "addresses": ["198.18.4.1"]},
              {"name": "gone.test", "subdomains": False, "ports": [443], "addresses": []}],
    "ungated": [],
}
PATHS = ("/run/gate/access.log", "/run/gate/nginx.pid", "/run/gate/error.log")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def render(gate=None, dns_mode="pinned", resolvers=("198.18.0.53", "fd00:a9e:1::53"), **over):
    gate = dict(gate or GATE, **over)
    return G.render_nginx(gate, dns_mode, list(resolvers), *PATHS)


def test_pinned_enforce_connects_only_to_the_resolved_addresses():
    text = render()
    assert "load_module /usr/lib/nginx/modules/ngx_stream_module.so;" in text
    assert "    upstream tls_gate_0_443 {\n        server 198.18.0.10:443;\n        server [fd00:a9e:1::10]:443;\n    }" in text
    assert "    upstream tls_gate_0_8443 {\n        server 198.18.0.10:8443;" in text
    assert "        api.test tls_gate_0_443;\n        .cdn.test tls_gate_1_443;\n    }" in text
    assert "        api.test tls_gate_0_8443;\n    }" in text
    # A name without addresses is not in the map (refused), and has no empty upstream block.
    assert "gone.test" not in text and "tls_gate_2" not in text
    # One listener pair per listener, both families, the IPv6 one v6-only.
    for port in (10443, 10444):
        assert "listen 0.0.0.0:%d;\n        listen [::]:%d ipv6only=on;" % (port, port) in text
    assert "resolver 198.18.0.53 [fd00:a9e:1::53] ipv6=on valid=10s;" in text
    # Enforce: nothing but the allowlisted target; no audit pass-through.
    assert "$ssl_preread_server_name:$tls_gate_port" not in text and "would-refuse-sni" not in text
    assert "access_log /run/gate/access.log tls_gate;" in text and "pid /run/gate/nginx.pid;" in text
    assert "error_log /run/gate/error.log notice;" in text


def test_filtering_mode_asks_the_filtering_resolver_for_the_sni():
    text = render(dns_mode="filtering", resolvers=["127.0.0.1"])
    assert "resolver 127.0.0.1 ipv6=on valid=10s;" in text and "    upstream " not in text
    assert "        api.test $ssl_preread_server_name:443;\n        .cdn.test $ssl_preread_server_name:443;" in text
    assert "gone.test $ssl_preread_server_name:443;" in text  # the resolver decides, not this run
    with pytest.raises(ValueError, match="resolvers"):
        render(dns_mode="filtering", resolvers=[])


def test_audit_passes_unlisted_names_but_never_a_missing_sni_or_ip_literal():
    text = render(mode="audit")
    assert '"~^name\\|$" $ssl_preread_server_name:$tls_gate_port;' in text
    assert '"~^[^|]+\\|name\\|\\|" would-refuse-sni;' in text
    # The pass-through is only for the "name" kind: none (no SNI, not TLS), ip and bad stay "".
    assert '"" none;' in text and '"~^[0-9.]+$" ip;' in text and '"~:" ip;' in text and "default bad;" in text


def test_pinned_without_resolvers_has_no_resolver_line():
    assert "resolver " not in render(resolvers=[])


@pytest.mark.parametrize("gate,dns_mode,message", [
    (dict(GATE, mode="off"), "pinned", "tls_gate.mode: 'off'"),
    (dict(GATE, listeners=[]), "pinned", "tls_gate.listeners: [] is empty"),
    (dict(GATE, listeners=[{"port": 443, "listen": True}]), "pinned", "tls_gate.listeners[0].listen: True"),
    (dict(GATE, names=[{"name": "api.test; evil"}]), "pinned", "tls_gate.names[0]"),
    (GATE, "both", "dns_mode: 'both'"),
    ("enforce", "pinned", "tls_gate: 'enforce'"),
])
def test_bad_gate_input_is_refused(gate, dns_mode, message):
    with pytest.raises(ValueError) as info:
        G.render_nginx(gate, dns_mode, ["127.0.0.1"], *PATHS)
    assert str(info.value).startswith(message)


@pytest.mark.skipif(NGINX is None or not os.path.exists(G.STREAM_MODULE),
                    reason="nginx with its stream module is not installed (Debian: nginx-light libnginx-mod-stream)")
@pytest.mark.parametrize("mode", ["enforce", "audit"])
@pytest.mark.parametrize("dns_mode", ["pinned", "filtering"])
def test_nginx_accepts_the_configuration(tmp_path, mode, dns_mode):
    paths = [str(tmp_path / name) for name in ("access.log", "nginx.pid", "error.log")]
    conf = tmp_path / "nginx.conf"
    conf.write_text(G.render_nginx(dict(GATE, mode=mode), dns_mode, ["127.0.0.1", "::1"], *paths))
    run = subprocess.run([NGINX, "-t", "-q", "-c", str(conf), "-e", paths[2]], capture_output=True, text=True,
                         timeout=30, check=False)
    assert run.returncode == 0, run.stderr


LOG = [
    'time=2026-11-30T03:00:01+00:00 client=198.18.48.2:49982 listen=10443 sni="cotenant.agtg.test" reason=not-allowed '
    'status=500 upstream="-" bytes=517/0',
    'Nov 30 03:00:02 host agentguard_tls_gate: time=2026-11-30T03:00:02+00:00 client=fd00:48:1::2:56872 listen=10443 '
    'sni="api.agtg.test" reason=allowed status=200 upstream="[fd00:48:2::10]:443" bytes=900/4000',
    'time=2026-11-30T03:00:03+00:00 client=198.18.49.1:55996 listen=10444 sni="" reason=not-tls status=500 '
    'upstream="-" bytes=5/0',
    'time=2026-11-30T03:00:04+00:00 client=198.18.49.1:55998 listen=10443 sni="api.agtg.test" reason= status=502 '
    'upstream="198.18.49.10:443, [fd00:48:2::10]:443" bytes=517/0',
    'time=2026-11-30T03:00:05+00:00 client=198.18.49.1:56000 listen=10443 sni="a b\\x22 reason=allowed" '
    'reason=not-allowed status=500 upstream="-" bytes=517/0',
    "2026/11/30 03:00:01 [error] 12#12: *1 no host in upstream \"\"",
    "time=garbage client=nohost listen=1",
    # audit in filtering DNS mode: the filtering resolver has no answer for a name not on the list
    'time=2026-11-30T03:00:06+00:00 client=198.18.49.1:56002 listen=10443 sni="cotenant.agtg.test" '
    'reason=would-refuse-sni status=500 upstream="-" bytes=517/0',
    'time=2026-11-30T03:00:07+00:00 client=198.18.49.1:56004 listen=10443 sni="cotenant.agtg.test" '
    'reason=would-refuse-sni status=200 upstream="198.18.49.10:443" bytes=900/4000',
]


def test_parse_gate_log():
    records = G.parse_gate_log(LOG)
    assert len(records) == 7
    assert records[0] == {"time": "2026-11-30T03:00:01+00:00", "client": "198.18.48.2", "client_port": 49982,
                          "sni": "cotenant.agtg.test", "reason": "not-allowed", "listen": 10443, "status": 500,
                          "upstream": "", "bytes_received": 517, "bytes_sent": 0, "refused": True}
    assert records[1]["client"] == "fd00:48:1::2" and records[1]["client_port"] == 56872
    assert records[1]["reason"] == "allowed" and records[1]["upstream"] == "[fd00:48:2::10]:443"
    assert records[2]["sni"] == "" and records[2]["reason"] == "not-tls"
    # An empty reason (an older configuration's failure line) reads as not-resolved.
    assert records[3]["reason"] == "not-resolved" and records[3]["status"] == 502
    # nginx escapes the quote: a server name cannot forge the reason field.
    assert records[4]["reason"] == "not-allowed" and records[4]["sni"] == "a b\\x22 reason=allowed"
    assert [r["refused"] for r in records] == [True, False, True, True, True, True, False]


KERNEL = [
    "[ 812.1] [EGRESS-TLS] IN= OUT=eth0 SRC=198.18.49.1 DST=198.18.49.10 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=1 DF "
    "PROTO=TCP SPT=55996 DPT=443 WINDOW=64240 RES=0x00 SYN URGP=0 UID=1000 GID=1000",
    "[ 812.2] [EGRESS-TLS] IN=br0 OUT= MAC=aa SRC=198.18.48.2 DST=198.18.49.10 LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=2 DF "
    "PROTO=TCP SPT=49982 DPT=443 WINDOW=64240 RES=0x00 SYN URGP=0",
    "[ 812.3] [EGRESS-DENIED] IN= OUT=eth0 SRC=198.18.49.1 DST=198.18.49.66 PROTO=TCP SPT=1 DPT=443 UID=1000",
    "[ 812.4] [EGRESS-TLS] IN= OUT=eth0 SRC=198.18.49.1 DST=bogus PROTO=TCP SPT=2 DPT=443 UID=1000",
]


def test_parse_kernel_lines_keeps_ours_only():
    records = G.parse_tls_kernel_log(KERNEL)
    assert records == [
        {"src": "198.18.49.1", "spt": 55996, "dst": "198.18.49.10", "dpt": 443, "network": None, "source": None, "uid": 1000},
        {"src": "198.18.48.2", "spt": 49982, "dst": "198.18.49.10", "dpt": 443, "network": "br0",
         "source": "198.18.48.2", "uid": None},
    ]


def test_join_adds_uid_or_container_and_the_original_destination():
    joined = G.join_tls_log(G.parse_gate_log(LOG), G.parse_tls_kernel_log(KERNEL))
    assert [(j["client"], j["client_port"]) for j in joined] == [
        ("198.18.48.2", 49982), ("198.18.49.1", 55996), ("198.18.49.1", 55998), ("198.18.49.1", 56000),
        ("198.18.49.1", 56002), ("198.18.49.1", 56004)]
    forwarded, local = joined[0], joined[1]
    assert forwarded["source"] == "198.18.48.2" and forwarded["network"] == "br0" and forwarded["uid"] is None
    assert forwarded["dst"] == "198.18.49.10" and forwarded["dpt"] == 443 and forwarded["logged"]
    assert local["uid"] == 1000 and local["dst"] == "198.18.49.10" and local["reason"] == "not-tls"
    # No kernel line (rate limit): kept, with nothing joined.
    assert joined[2]["logged"] is False and joined[2]["uid"] is None and joined[2]["dst"] is None
    everything = G.join_tls_log(G.parse_gate_log(LOG), G.parse_tls_kernel_log(KERNEL), refusals_only=False)
    assert len(everything) == 7 and everything[1]["reason"] == "allowed"


def test_the_last_kernel_line_for_a_reused_port_wins():
    kernel = [{"src": "198.18.49.1", "spt": 55996, "dst": "198.18.49.66", "dpt": 443, "uid": 1},
              {"src": "198.18.49.1", "spt": 55996, "dst": "198.18.49.10", "dpt": 443, "uid": 2},
              {"src": None, "spt": 1}]
    joined = G.join_tls_log(G.parse_gate_log(LOG[2:3]), kernel)
    assert joined[0]["uid"] == 2 and joined[0]["dst"] == "198.18.49.10"


def test_filter_plugin_renders_from_the_module_result():
    assert FilterModule().filters() == {"egress_tls_gate_config": egress_tls_gate_config}
    text = egress_tls_gate_config({"changed": False, "tls_gate": GATE}, "pinned", ["198.18.0.53"], *PATHS)
    assert text == render(resolvers=["198.18.0.53"])
    with pytest.raises(AnsibleFilterError, match="expects the result of egress_rules"):
        egress_tls_gate_config({"changed": False}, "pinned", [], *PATHS)
    with pytest.raises(AnsibleFilterError, match="tls_gate.mode"):
        egress_tls_gate_config({"tls_gate": dict(GATE, mode="off")}, "pinned", [], *PATHS)
