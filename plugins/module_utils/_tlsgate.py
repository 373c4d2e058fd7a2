# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The TLS gate: its nginx configuration, and reading its log.

Private to agentguard.hardening. The ruleset (_render) redirects restricted NEW TCP connections to
gated destinations to local listeners; nginx (stream, ssl_preread) reads the ClientHello there and
connects only when the server name is allowlisted, and then only to the name's own addresses (the
module's resolution in pinned DNS mode, the filtering resolver's answer in filtering mode): never
to the address the client chose. docs/tls-gate.md has the engine choice and its measurements.

render_nginx turns the module's `tls_gate` return value into nginx.conf; parse_gate_log reads the
access log (one key=value line per connection); join_tls_log adds the uid or container address and
the original destination from the `[EGRESS-TLS]` kernel line written just before the redirect.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

from ansible_collections.agentguard.hardening.plugins.module_utils._policy import DNS_MODES

TLS_LOG_PREFIX = "[EGRESS-TLS] "
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
REFUSALS = ("no-sni", "ip-literal", "not-allowed", "not-tls", "not-resolved")
# The shortest lifetime the filtering resolver gives a set entry (_policy.MIN_SET_TIMEOUT): nginx keeps
# an answer no longer, so it never connects to an address whose set entry has expired.
RESOLVER_VALID = "10s"

# One line per connection. Every value but sni and upstream is nginx's own; those two are quoted
# (nginx escapes '"', '\' and non-printable bytes as \xNN, so a server name cannot forge a field).
LOG_FORMAT = ("time=$time_iso8601 client=$remote_addr:$remote_port listen=$server_port "
              "sni=\"$ssl_preread_server_name\" reason=$tls_gate_reason status=$status "
              "upstream=\"$upstream_addr\" bytes=$bytes_received/$bytes_sent")
LOG_LINE_RE = re.compile(
    r'time=(?P<time>\S+) client=(?P<client>\S+) listen=(?P<listen>\d+) sni="(?P<sni>[^"]*)" '
    r'reason=(?P<reason>\S*) status=(?P<status>\d+) upstream="(?P<upstream>[^"]*)"'
    r'(?: bytes=(?P<received>\d+)/(?P<sent>\d+))?')
KERNEL_FIELD_RE = re.compile(r"\b(SRC|DST|SPT|DPT|UID|IN|OUT)=(\S*)")


def _upstream_name(index, port):
    # Names of our own upstream blocks; an SNI can only reach one through our map.
    return "tls_gate_%d_%d" % (index, port)


def _nginx_address(address):
    return "[%s]" % address if ipaddress.ip_address(address).version == 6 else address


def _map_key(name, subdomains):
    # hostnames map: ".name" is the name and every name below it; the map lowercases the SNI and
    # ignores a trailing dot.
    return ("." if subdomains else "") + name


def _check_gate(gate, dns_mode):
    if not isinstance(gate, dict):
        raise ValueError("tls_gate: %r is not the tls_gate result of egress_rules" % (gate,))
    if gate.get("mode") not in ("audit", "enforce"):
        raise ValueError("tls_gate.mode: %r is not audit or enforce; nothing to render" % (gate.get("mode"),))
    if dns_mode not in DNS_MODES:
        raise ValueError("dns_mode: %r is not one of %s" % (dns_mode, ", ".join(DNS_MODES)))
    listeners = gate.get("listeners") or []
    if not listeners:
        raise ValueError("tls_gate.listeners: %r is empty; no destination is gated" % (listeners,))
    for index, listener in enumerate(listeners):
        for key in ("port", "listen"):
            value = listener.get(key) if isinstance(listener, dict) else None
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
                raise ValueError("tls_gate.listeners[%d].%s: %r is not a port" % (index, key, value))
    for index, entry in enumerate(gate.get("names") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not re.match(r"^[a-z0-9_.-]+$", entry["name"]):
            raise ValueError("tls_gate.names[%d]: %r is not a name entry" % (index, entry))
        for address in entry.get("addresses") or []:
            ipaddress.ip_address(address)


def render_nginx(gate, dns_mode, resolvers, log_path, pid_path, error_log_path):
    """The complete nginx.conf of the gate for the module's `tls_gate` result.

    Enforce: a connection passes only with an allowlisted SNI on a gated port, to the name's
    addresses (pinned: upstream blocks from the module's resolution; filtering: the filtering
    resolver's answer). Audit: a name that is not on the list passes too, to what the resolver gives
    for it, logged as would-refuse-sni (the filtering resolver gives nothing for such a name: in
    filtering mode it is refused even so, logged would-refuse-sni with a status other than 200,
    and parse_gate_log marks it refused). A connection without SNI, with an IP literal, or that is not
    TLS is refused in both modes: nginx cannot know where it was going.
    """
    _check_gate(gate, dns_mode)
    audit = gate["mode"] == "audit"
    listeners = sorted(gate["listeners"], key=lambda item: item["listen"])
    names = gate.get("names") or []
    servers = [_nginx_address(str(r)) for r in resolvers or []]
    if dns_mode == "filtering" and not servers:
        raise ValueError("resolvers: [] is empty; in filtering mode the gate asks the filtering resolver")
    out = [
        "# agentguard TLS gate (nginx stream, ssl_preread). Written by agentguard.hardening: do not edit.",
        "load_module %s;" % STREAM_MODULE,
        "worker_processes auto;",
        "pid %s;" % pid_path,
        "error_log %s notice;" % error_log_path,
        "events { worker_connections 4096; }",
        "",
        "stream {",
    ]
    if servers:
        what = ("The filtering resolver: it answers allowlisted names only." if dns_mode == "filtering"
                else "The trusted resolvers, for names that audit mode passes.")
        out += ["    # " + what,
                "    resolver %s ipv6=on valid=%s;" % (" ".join(servers), RESOLVER_VALID),
                "    resolver_timeout 2s;"]
    out += [
        "    preread_buffer_size 16k;",
        "    preread_timeout 5s;",
        "    proxy_connect_timeout 5s;",
        "    proxy_timeout 1h;",
        "",
    ]
    if dns_mode == "pinned":
        out.append("    # The module's own resolution: a name connects only to these addresses.")
        for index, entry in enumerate(names):
            addresses = entry.get("addresses") or []
            for port in entry.get("ports") or []:
                if not addresses:
                    continue
                out.append("    upstream %s {" % _upstream_name(index, port))
                out.extend("        server %s:%d;" % (_nginx_address(a), port) for a in addresses)
                out.append("    }")
        out.append("")
    out += [
        "    # What the SNI is: none (also when the bytes are not a ClientHello), an IP literal, or a name.",
        "    map $ssl_preread_server_name $tls_gate_sni {",
        "        \"\" none;",
        "        \"~^[0-9.]+$\" ip;",
        "        \"~:\" ip;",
        "        \"~^[A-Za-z0-9_.-]+$\" name;",
        "        default bad;",
        "    }",
    ]
    for listener in listeners:
        port = listener["port"]
        out += ["    # The allowlisted names on port %d." % port,
                "    map $ssl_preread_server_name $tls_gate_target_%d {" % listener["listen"],
                "        hostnames;",
                "        default \"\";"]
        for index, entry in enumerate(names):
            if port not in (entry.get("ports") or []):
                continue
            if dns_mode == "pinned":
                if not entry.get("addresses"):
                    continue  # nothing to connect to: refused (the module found no address)
                target = _upstream_name(index, port)
            else:
                target = "$ssl_preread_server_name:%d" % port
            out.append("        %s %s;" % (_map_key(entry["name"], entry.get("subdomains")), target))
        out.append("    }")
    out += ["    # The listener says which upstream port the connection was for."]
    out += ["    map $server_port $tls_gate_target {"]
    out += ["        %d $tls_gate_target_%d;" % (item["listen"], item["listen"]) for item in listeners]
    out += ["        default \"\";", "    }",
            "    map $server_port $tls_gate_port {"]
    out += ["        %d %d;" % (item["listen"], item["port"]) for item in listeners]
    out += ["        default 0;", "    }",
            "    # Where the connection goes: an empty value refuses it before any DNS query or upstream socket.",
            "    map \"$tls_gate_sni|$tls_gate_target\" $tls_gate_upstream {",
            "        \"~^name\\|.\" $tls_gate_target;"]
    if audit:
        out.append("        \"~^name\\|$\" $ssl_preread_server_name:$tls_gate_port;")
    out += ["        default \"\";", "    }",
            "    map \"$ssl_preread_protocol|$tls_gate_sni|$tls_gate_target|$status\" $tls_gate_reason {",
            "        \"~^\\|\" not-tls;",
            "        \"~^[^|]+\\|none\\|\" no-sni;",
            "        \"~^[^|]+\\|ip\\|\" ip-literal;",
            "        \"~^[^|]+\\|name\\|[^|]+\\|200$\" allowed;",
            "        \"~^[^|]+\\|name\\|[^|]+\\|\" not-resolved;"]
    if audit:
        out.append("        \"~^[^|]+\\|name\\|\\|\" would-refuse-sni;")
    out += ["        default not-allowed;", "    }",
            "    log_format tls_gate '%s';" % LOG_FORMAT,
            "    access_log %s tls_gate;" % log_path,
            "",
            "    server {"]
    for listener in listeners:
        out.append("        listen 0.0.0.0:%d;" % listener["listen"])
        out.append("        listen [::]:%d ipv6only=on;" % listener["listen"])
    out += ["        ssl_preread on;",
            "        proxy_pass $tls_gate_upstream;",
            "    }",
            "}",
            ""]
    return "\n".join(out)


def _split_client(text):
    address, _sep, port = text.rpartition(":")
    if not address or not port.isdigit():
        raise ValueError("client=%s is not address:port" % text)
    return str(ipaddress.ip_address(address.strip("[]"))), int(port)


def parse_gate_log(lines):
    """Records of the gate's access log lines ({time, client, client_port, sni, reason, listen,
    status, upstream, bytes_received, bytes_sent, refused}); lines of any other shape (a syslog or
    journal prefix is skipped) are ignored. refused: the connection did not pass (a refusal reason,
    or would-refuse-sni that could not be passed: nginx's status for a passed stream is 200)."""
    records = []
    for line in lines:
        match = LOG_LINE_RE.search(line)
        if not match:
            continue
        try:
            client, client_port = _split_client(match.group("client"))
        except ValueError:
            continue
        upstream = match.group("upstream")
        reason = match.group("reason") or "not-resolved"
        status = int(match.group("status"))
        records.append({
            "time": match.group("time"),
            "client": client,
            "client_port": client_port,
            "sni": match.group("sni"),
            "reason": reason,
            "listen": int(match.group("listen")),
            "status": status,
            "refused": reason in REFUSALS or status != 200,
            "upstream": "" if upstream == "-" else upstream,
            "bytes_received": int(match.group("received")) if match.group("received") else None,
            "bytes_sent": int(match.group("sent")) if match.group("sent") else None,
        })
    return records


def parse_tls_kernel_log(lines, prefix=TLS_LOG_PREFIX):
    """The `[EGRESS-TLS]` kernel LOG lines as records with the keys of _denials' records that
    join_tls_log uses (src, spt, dst, dpt, uid, source, network)."""
    records = []
    for line in lines:
        index = line.find(prefix)
        if index < 0:
            continue
        fields = dict(KERNEL_FIELD_RE.findall(line[index + len(prefix):]))
        try:
            src = str(ipaddress.ip_address(fields["SRC"]))
            dst = str(ipaddress.ip_address(fields["DST"]))
            spt, dpt = int(fields["SPT"]), int(fields["DPT"])
        except (KeyError, ValueError):
            continue
        network = fields.get("IN") or None
        uid = fields.get("UID")
        records.append({"src": src, "spt": spt, "dst": dst, "dpt": dpt, "network": network,
                        "source": src if network else None,
                        "uid": int(uid) if uid and uid.isdigit() and not network else None})
    return records


def join_tls_log(records, log_records, refusals_only=True):
    """The gate's records (parse_gate_log) with, from the `[EGRESS-TLS]` kernel record of the same
    client address and port, the uid (local process) or the container address and network
    (forwarded) and the original destination (dst, dpt). A record without a kernel line keeps
    None there (the LOG rule is rate-limited). refusals_only: only refusals and would-refuse-sni.

    The last kernel record for an address and port wins: the redirect is logged when the
    connection starts, and a client port is reused only after that connection is gone."""
    kernel = {}
    for record in log_records:
        try:
            key = (str(ipaddress.ip_address(record["src"])), int(record["spt"]))
        except (KeyError, TypeError, ValueError):
            continue
        kernel[key] = record
    joined = []
    for record in records:
        if refusals_only and record.get("reason") == "allowed":
            continue
        match = kernel.get((record["client"], record["client_port"]))
        item = dict(record)
        item["uid"] = match.get("uid") if match else None
        item["source"] = match.get("source") if match else None
        item["network"] = match.get("network") if match else None
        item["dst"] = match.get("dst") if match else None
        item["dpt"] = match.get("dpt") if match else None
        item["logged"] = match is not None
        joined.append(item)
    return joined


def gate_result(policy, resolved):
    """The module's `tls_gate` return value (also in check mode): what the role renders the gate
    from. names merges the gated entries of one name; addresses are the module's resolution in
    pinned mode, [] in filtering mode (the gate asks the filtering resolver)."""
    if policy.tls_gate == "off" or policy.state != "present":
        return {"mode": "off", "user": None, "uid": None, "listeners": [], "names": [], "ungated": []}
    names = {}
    for dest in policy.allow:
        if not dest.tls_ports:
            continue
        entry = names.setdefault(dest.host, {"name": dest.host, "subdomains": False, "ports": set(), "addresses": set()})
        # One map key per name: ".name" already covers the name itself.
        entry["subdomains"] = entry["subdomains"] or dest.subdomains
        entry["ports"].update(dest.tls_ports)
        if policy.dns_mode == "pinned":
            for family in policy.families:
                entry["addresses"].update(str(ipaddress.ip_network(a, strict=False).network_address)
                                          for a in resolved.get(dest.name, {}).get(family, []))
    result_names = []
    for name in sorted(names):
        entry = names[name]
        result_names.append({"name": name, "subdomains": entry["subdomains"], "ports": sorted(entry["ports"]),
                             "addresses": sorted(entry["addresses"], key=lambda a: (ipaddress.ip_address(a).version,
                                                                                    ipaddress.ip_address(a)))})
    user = policy.tls_gate_user
    return {
        "mode": policy.tls_gate,
        "user": user.name if user else None,
        "uid": user.uid if user else None,
        "listeners": [{"port": port, "listen": listen} for port, listen in policy.tls_listeners],
        "names": result_names,
        "ungated": [dict(item) for item in policy.tls_ungated],
    }
