# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Validate and normalise the egress_rules options into a Policy.

Private to agentguard.hardening: no compatibility promise outside the collection.
The options' types, defaults and choices are ARGUMENT_SPEC's (below), checked by core's validator
(_options.check_options); what is here checks their meaning. Every error names the option path and the
offending value, and all errors are reported at once, before anything on the host is read or changed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import ipaddress
import re
from collections import namedtuple

from ansible_collections.agentguard.hardening.plugins.module_utils._state import remember

# The options of egress_rules, each stated once: its DOCUMENTATION, the role's defaults and meta/argument_specs.yml are
# tested equal to it (tests/unit/test_option_sources.py); AnsibleModule, or _options.check_options on the controller,
# validates against it before build_policy.
ARGUMENT_SPEC = dict(
    allow=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True),
        # A string (name, address or CIDR) or a list of addresses and CIDRs: checked in _destination.
        host=dict(type="raw", required=True),
        ports=dict(type="list", elements="raw", default=[443]),
        protocol=dict(type="str", choices=["tcp", "udp"], default="tcp"),
        subdomains=dict(type="bool", default=False),
        users=dict(type="list", elements="str"),
        tls=dict(type="bool"),
    )),
    dhcp=dict(type="bool", default=True),
    dns_servers=dict(type="list", elements="str", default=[]),
    log_prefix=dict(type="str", default="[EGRESS-DENIED] "),
    log_limit=dict(type="str", default="10/minute"),
    log_burst=dict(type="int", default=20),
    deny_action=dict(type="str", choices=["drop", "reject"], default="drop"),
    mode=dict(type="str", choices=["enforce", "audit"], default="enforce"),
    scope=dict(type="str", choices=["host", "users", "none"], default="host"),
    scope_networks=dict(type="list", elements="str", default=[]),
    users=dict(type="list", elements="str", default=[]),
    families=dict(type="list", elements="str", choices=["ipv4", "ipv6"], default=["ipv4", "ipv6"]),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    dns_mode=dict(type="str", choices=["pinned", "filtering"], default="pinned"),
    dns_resolver_user=dict(type="str"),
    dns_set_timeout=dict(type="int", default=300),
    resolvers=dict(type="list", elements="str", default=[]),
    resolve_timeout=dict(type="float", default=3.0),
    resolve_retries=dict(type="int", default=2),
    tls_gate=dict(type="str", choices=["off", "audit", "enforce"], default="off"),
    tls_gate_user=dict(type="str"),
    tls_gate_port=dict(type="int", default=10443),
    learn=dict(type="bool", default=False),
    learn_users=dict(type="list", elements="str", default=[]),
    learn_maxelem=dict(type="int", default=65536),
    learn_timeout=dict(type="int", default=604800),
    state_dir=dict(type="path"),
)

FAMILIES = tuple(ARGUMENT_SPEC["families"]["choices"])

# Labels become rule comments and ipset names ("ag4-<label>", and "agt4-<label>"
# while contents are swapped): ipset names are limited to 31 characters.
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,25}$")
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
PORT_RANGE_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
LIMIT_RE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
LIMIT_UNITS = {
    "s": "sec", "sec": "sec", "second": "sec",
    "m": "min", "min": "min", "minute": "min",
    "h": "hour", "hour": "hour",
    "d": "day", "day": "day",
}
UNIT_SECONDS = {"sec": 1, "min": 60, "hour": 3600, "day": 86400}
# xt_limit scale: faster than 10000 packets per second is refused by the kernel.
MAX_LIMIT_PER_SECOND = 10000
MAX_BURST = 10000
# xt_LOG keeps 29 characters of prefix.
MAX_LOG_PREFIX = 29
USERNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
# An interface as iptables matches it: at most 15 characters (IFNAMSIZ - 1), a trailing "+" is a
# prefix wildcard. Linux refuses "/", ":" and white space in names; iptables reads "!" as negation.
IFACE_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,14}[A-Za-z0-9_.@+-]$")

Destination = namedtuple("Destination", ["name", "host", "kind", "ports", "protocol", "subdomains", "users", "tls", "tls_ports",
                                         "networks"])
Destination.__new__.__defaults__ = (False, (), None, (), ())
"""kind is "name", "ipv4" or "ipv6" (one address or CIDR: host is its canonical text), or "networks" (a list of
addresses and CIDRs: host is a short text naming them, for messages).
networks: the literal destinations' ((family, canonical), ...) in the order given, without repeats; () for a name.
users: User tuples; when not empty only their processes may connect (an owner match).
tls: the entry's tls key (None when unset); tls_ports: the TCP ports the TLS gate covers (ints,
sorted; empty when the gate is off or the entry is not gated)."""

User = namedtuple("User", ["name", "uid"])

Network = namedtuple("Network", ["kind", "value"])
"""A container/VM network of scope_networks: kind "iface" (value: the iptables interface pattern)
or "ipv4"/"ipv6" (value: the canonical network)."""

Policy = namedtuple("Policy", [
    "allow", "dns_servers", "log_prefix", "log_limit", "log_burst", "deny_action",
    "mode", "scope", "users", "families", "state", "dns_mode", "resolver_user", "dns_set_timeout", "resolvers",
    "networks", "dhcp", "tls_gate", "tls_gate_user", "tls_gate_port", "tls_listeners", "tls_ungated",
    "learn", "learn_users", "learn_maxelem", "learn_timeout",
])
Policy.__new__.__defaults__ = ("off", None, 10443, (), (), False, (), 65536, 604800)
"""tls_gate: off, audit or enforce; tls_gate_user: the gate's User; tls_listeners: ((upstream port,
listen port), ...) in ascending order; tls_ungated: the plan's warnings about entries the gate
does not cover (dicts, as returned in tls_gate.ungated).
learn: record every distinct would-be-denied destination in ipsets (_learn.py); learn_users: the Users
recorded apart besides the restricted ones; learn_maxelem, learn_timeout: each recorder set's bound
and how long an entry stays from its first packet."""
# The recorder's sets (learn): at least one entry, at most what a 32-bit maxelem holds; entries
# live from one second to ipset's longest timeout.
MAX_LEARN_ELEMENTS = 2 ** 31
# Listeners are unprivileged ports, so the gate needs no capability.
MIN_GATE_PORT = 1024
GATE_PORT = 443
DNS_MODES = tuple(ARGUMENT_SPEC["dns_mode"]["choices"])
# In filtering mode the resolver adds answers to the sets with this lifetime at least. The role's
# resolver hands out answers for half of it (dnsmasq max-ttl), so 20 keeps every answer 10 s usable.
MIN_SET_TIMEOUT = 20
MAX_SET_TIMEOUT = 2147483
# Seconds per DNS answer and extra attempts: a run must stay well inside the role's apply timeout.
MIN_RESOLVE_TIMEOUT = 0.1
MAX_RESOLVE_TIMEOUT = 30
MAX_RESOLVE_RETRIES = 10


# A URL, or a name or IPv4 address (or an IPv6 address in brackets) with a port, where a host is expected.
URL_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?:[^@/]*@)?(?P<host>\[[^\]]*\]|[^/:?#]*)(?::(?P<port>[0-9]+))?")
URL_PORTS = {"https": "443", "http": "80", "wss": "443", "ws": "80", "ftp": "21"}
HOST_PORT_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]/]+)):(?P<port>[0-9]+)$")


class PolicyError(Exception):
    """Raised with every validation problem found; str() lists them one per line."""

    def __init__(self, errors):
        self.errors = list(errors)
        super(PolicyError, self).__init__("\n".join(self.errors))


def _repr(value):
    return repr(value)


def as_list(value, where, errors):
    """value when it is a list ([] for None). A string is the usual slip for a list of one (YAML reads
    `dns_servers: 1.1.1.1` as a string): one error that names the field and the list to write, and the
    string's items (split at commas and spaces) to check further, so no error is made per character."""
    if value is None:
        return []
    if isinstance(value, str):
        items = [item for item in re.split(r"[\s,]+", value) if item]
        errors.append("%s: %r is a string, not a list; write a list: %r" % (where, value, items))
        return items
    return value


def failed_under(failed, where):
    """Whether a value at where or inside it (where.key, where[index]) was refused."""
    return any(path == where or path.startswith((where + ".", where + "[")) for path in failed)


def with_defaults(params, spec=None):
    """params with ARGUMENT_SPEC's default for each option that is absent or None, in allow's entries too
    (what AnsibleModule gives the module; build_policy needs every option)."""
    spec = ARGUMENT_SPEC if spec is None else spec
    full = dict(params)
    for name, option in spec.items():
        if full.get(name) is None:
            full[name] = copy.deepcopy(option.get("default"))
        elif option.get("options") and isinstance(full[name], list):
            full[name] = [with_defaults(e, option["options"]) if isinstance(e, dict) else e for e in full[name]]
    return full


def parse_port(value, where):
    """Return a canonical port spec ("443" or "8000:8010") or raise ValueError."""
    if isinstance(value, bool):
        raise ValueError("%s: %s is not a port; use a number from 1 to 65535 or a range like \"8000-8010\"" % (where, _repr(value)))
    if isinstance(value, int):
        low = high = value
    elif isinstance(value, str):
        text = value.strip()
        match = PORT_RANGE_RE.match(text)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
        elif text.isdigit():
            low = high = int(text)
        else:
            raise ValueError("%s: %s is not a port; use a number from 1 to 65535 or a range like \"8000-8010\"" % (where, _repr(value)))
    else:
        raise ValueError("%s: %s is not a port; use a number from 1 to 65535 or a range like \"8000-8010\"" % (where, _repr(value)))
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise ValueError("%s: %s is out of range; ports are 1 to 65535" % (where, _repr(value)))
    if low > high:
        raise ValueError("%s: %s is a reversed range; write the lower port first" % (where, _repr(value)))
    return str(low) if low == high else "%d:%d" % (low, high)


def is_hostname(text):
    """True for a syntactically valid DNS host name (not an address)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if not all(HOST_LABEL_RE.match(label) for label in labels):
        return False
    # An all-numeric last label is an address attempt, not a name.
    return not labels[-1].isdigit()


def parse_host(value, where):
    """Return (kind, canonical) for a destination host, or raise ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("%s: %s is not a host; give a DNS name, an IPv4/IPv6 address or a CIDR" % (where, _repr(value)))
    text = value.strip()
    url = URL_RE.match(text)
    if url:
        host, port = url.group("host").strip("[]"), url.group("port") or URL_PORTS.get(url.group("scheme").lower())
        raise ValueError("%s: %s is a URL; write the host alone (host: %s)%s" % (
            where, _repr(value), host, " and its port in ports (ports: [%s])" % port if port else ""))
    with_port = HOST_PORT_RE.match(text)
    if with_port:
        raise ValueError("%s: %s has a port; write the host alone (host: %s) and the port in ports (ports: [%s])"
                         % (where, _repr(value), with_port.group("host") or with_port.group("v6"), with_port.group("port")))
    looks_numeric = re.match(r"^[0-9./]+$", text) is not None
    if ":" in text or looks_numeric:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            if "has host bits set" in str(exc):
                fixed = ipaddress.ip_network(text, strict=False)
                raise ValueError("%s: %s has host bits set; did you mean %s?" % (where, _repr(value), fixed))
            raise ValueError("%s: %s is not a valid IP address or CIDR" % (where, _repr(value)))
        if net.prefixlen == 0:
            raise ValueError("%s: %s allows every address, which defeats the allowlist" % (where, _repr(value)))
        return ("ipv%d" % net.version, remember(text, net))
    if "/" in text or not is_hostname(text):
        raise ValueError("%s: %s is not a valid DNS name, IP address or CIDR" % (where, _repr(value)))
    return ("name", text.rstrip(".").lower())


def parse_host_list(values, where):
    """Return (((family, canonical), ...), errors) of a list of addresses and CIDRs (a destination's host):
    each element once, in the order given; errors names every bad element."""
    if not values:
        return (), ["%s: [] is empty; give a DNS name, an address or CIDR, or a list of addresses and CIDRs" % where]
    seen, networks, errors = set(), [], []
    for index, value in enumerate(values):
        spot = "%s[%d]" % (where, index)
        try:
            kind, canonical = parse_host(value, spot)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if kind == "name":
            errors.append("%s: %s is a DNS name; a list holds addresses and CIDRs only (give the name an entry "
                          "of its own)" % (spot, _repr(value)))
        elif canonical not in seen:
            seen.add(canonical)
            networks.append((kind, canonical))
    return tuple(networks), errors


def networks_text(networks):
    """A destination's list of networks, short enough for a message."""
    texts = [canonical for family, canonical in networks]
    if len(texts) <= 3:
        return ", ".join(texts)
    return "%s, %s and %d more" % (texts[0], texts[1], len(texts) - 2)


def literal_networks(dest, families):
    """{family: [canonical, ...]} of a literal destination (one address, CIDR or a list), for the given families."""
    return dict((family, [c for f, c in dest.networks if f == family]) for family in families)


def parse_address(value, where):
    """Return the canonical text of a single IP address (no prefix), or raise ValueError."""
    if not isinstance(value, str):
        raise ValueError("%s: %s is not an IP address" % (where, _repr(value)))
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("%s: %s is not an IP address" % (where, _repr(value)))


def parse_network(value, where):
    """Return a Network for an element of scope_networks (interface name or CIDR), or raise ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("%s: %s is not a network; give an interface name (docker0, br-+) or a CIDR" % (where, _repr(value)))
    text = value.strip()
    if "/" in text or ":" in text or re.match(r"^[0-9.]+$", text):
        kind, canonical = parse_host(text, where)
        return Network(kind, canonical)
    if text in ("+", ".", "..") or not IFACE_RE.match(text) or "+" in text[:-1]:
        raise ValueError("%s: %s is not an interface name (at most 15 letters, digits, '_', '.', '@', '-', "
                         "and an optional trailing '+' wildcard) nor a CIDR" % (where, _repr(value)))
    return Network("iface", text)


def parse_log_limit(value, where="log_limit"):
    """Return iptables' canonical form of a rate ("10/min"), or raise ValueError."""
    text = value if isinstance(value, str) else ""
    match = LIMIT_RE.match(text.lower())
    unit = LIMIT_UNITS.get(match.group(2)) if match else None
    if not match or unit is None:
        raise ValueError("%s: %s is not a rate; write it like \"10/minute\" (units: second, minute, hour, day)" % (where, _repr(value)))
    count = int(match.group(1))
    if count < 1:
        raise ValueError("%s: %s must allow at least one line per period" % (where, _repr(value)))
    if count / float(UNIT_SECONDS[unit]) > MAX_LIMIT_PER_SECOND:
        raise ValueError("%s: %s is faster than the kernel's maximum of %d/second" % (where, _repr(value), MAX_LIMIT_PER_SECOND))
    return iptables_rate(count, UNIT_SECONDS[unit])


# xt_limit stores a rate as a period in 1/10000 s and iptables-save prints it back in the unit
# that divides it best ("60/minute" is saved as "1/sec"): render it that way, or a rule written
# in another unit would never compare equal to the live one.
XT_LIMIT_SCALE = 10000
PRINT_UNITS = (("day", 86400), ("hour", 3600), ("min", 60), ("sec", 1))


def iptables_rate(count, seconds):
    """The rate as libxt_limit prints it, for `count` per `seconds`."""
    period = XT_LIMIT_SCALE * seconds // count
    chosen = 0
    for index in range(1, len(PRINT_UNITS)):
        mult = XT_LIMIT_SCALE * PRINT_UNITS[index][1]
        if period > mult or mult // period < mult % period:
            break
        chosen = index
    name, unit_seconds = PRINT_UNITS[chosen]
    return "%d/%s" % (XT_LIMIT_SCALE * unit_seconds // period, name)


def parse_log_prefix(value, where="log_prefix"):
    if not isinstance(value, str) or not value:
        raise ValueError("%s: %s must be a non-empty string" % (where, _repr(value)))
    if len(value) > MAX_LOG_PREFIX:
        raise ValueError("%s: %s is %d characters; the kernel keeps at most %d" % (where, _repr(value), len(value), MAX_LOG_PREFIX))
    if any(ch in value for ch in "\"\\'") or not all(32 <= ord(ch) < 127 for ch in value):
        raise ValueError("%s: %s may contain printable ASCII only, without quotes or backslashes" % (where, _repr(value)))
    return value


def _int_in(value, low, high, where):
    """value (an int, as the spec converts it) when in range; core takes a boolean for an int, this does not."""
    if isinstance(value, bool):
        raise ValueError("%s: %s is not a whole number" % (where, _repr(value)))
    if not low <= value <= high:
        raise ValueError("%s: %s is out of range (%d to %d)" % (where, _repr(value), low, high))
    return value


def _float_in(value, low, high, where):
    if not low <= value <= high:
        raise ValueError("%s: %s is out of range (%s to %s)" % (where, _repr(value), low, high))
    return value


def parse_users(values, lookup_name, where="users"):
    """Resolve user names or uids to User tuples, sorted by uid.

    lookup_name(name) returns the uid of an existing user or raises KeyError.
    Numeric uids are taken as they are: a uid need not have a passwd entry.
    """
    users = {}
    errors = []
    for index, value in enumerate(values or []):
        spot = "%s[%d]" % (where, index)
        if isinstance(value, bool):
            errors.append("%s: %s is not a user name or uid" % (spot, _repr(value)))
            continue
        text = str(value).strip()
        if text.isdigit():
            uid = int(text)
            if uid > 4294967294:
                errors.append("%s: %s is not a valid uid" % (spot, _repr(value)))
                continue
            users.setdefault(uid, User(text, uid))
        elif USERNAME_RE.match(text):
            try:
                uid = lookup_name(text)
            except KeyError:
                errors.append("%s: user %s does not exist on this host" % (spot, _repr(value)))
                continue
            users[uid] = User(text, uid)
        else:
            errors.append("%s: %s is not a user name or uid" % (spot, _repr(value)))
    return [users[uid] for uid in sorted(users)], errors


def _destination_users(entry, where, lookup_user, errors):
    """The users of an allow entry: () when the key is absent (every restricted process may connect)."""
    if entry["users"] is None:
        return ()
    if not entry["users"]:
        errors.append("%s.users: [] must be a non-empty list of user names or uids (leave the key out to allow "
                      "every restricted process)" % where)
        return None
    users, user_errors = parse_users(entry["users"], lookup_user, where=where + ".users")
    errors.extend(user_errors)
    return None if user_errors else tuple(users)


def _destination(entry, index, errors, lookup_user, failed):
    """The Destination of an allow entry validated against the spec (failed: the paths it refused), or None."""
    where = "allow[%d]" % index
    if entry is None:  # not a mapping: refused by the spec
        return None
    name = entry["name"]
    ok = not failed_under(failed, where)
    if name is not None and not LABEL_RE.match(name):
        errors.append("%s.name: %s is not a valid label (1-26 characters: letters, digits, '_', '.', '-', starting with a letter or digit)"
                      % (where, _repr(name)))
        ok = False
    networks = ()
    if isinstance(entry["host"], (list, tuple)):
        networks, list_errors = parse_host_list(entry["host"], where + ".host")
        kind, host = "networks", networks_text(networks)
        errors.extend(list_errors)
        ok = ok and not list_errors
    elif entry["host"] is not None:
        try:
            kind, host = parse_host(entry["host"], where + ".host")
            if kind != "name":
                networks = ((kind, host),)
        except ValueError as exc:
            errors.append(str(exc))
            ok = False
    ports = entry["ports"]
    if not ports and where + ".ports" not in failed:
        errors.append("%s.ports: [] must be a non-empty list of ports or ranges" % where)
        return None
    specs = []
    for pindex, port in enumerate(ports):
        try:
            spec = parse_port(port, "%s.ports[%d]" % (where, pindex))
        except ValueError as exc:
            errors.append(str(exc))
            ok = False
            continue
        if spec not in specs:
            specs.append(spec)
    if not ok:
        return None
    users = _destination_users(entry, where, lookup_user, errors)
    if users is None:
        return None
    if entry["subdomains"] and kind != "name":
        errors.append("%s.subdomains: true only applies to a DNS name, not %s"
                      % (where, _repr(host if kind == "networks" else entry["host"])))
        return None
    return Destination(name, host, kind, tuple(specs), entry["protocol"], entry["subdomains"], users, entry["tls"],
                       networks=networks)


def _gated_ports(dest, where, errors):
    """The TCP ports of an entry the gate covers, by its tls key: unset, port 443 if it has it;
    true, every port (an error for udp or a range); false, none."""
    if dest.tls is False or dest.protocol != "tcp" and dest.tls is None:
        return ()
    if dest.protocol != "tcp":
        return ()  # refused in _tls_gate
    if dest.tls is None:
        return (GATE_PORT,) if str(GATE_PORT) in dest.ports else ()
    ranges = [p for p in dest.ports if ":" in p]
    if ranges:
        errors.append("%s.ports: %s is a range, which tls: true cannot gate (one listener per port); list the ports"
                      % (where, _repr(ranges[0].replace(":", "-"))))
        return ()
    return tuple(sorted(int(p) for p in dest.ports))


def _tls_gate(params, allow, labels, state, scope, users, resolver_user, lookup_user, errors):
    """Validate the TLS gate options; return (mode, user, port, allow with tls_ports, listeners, ungated)."""
    mode, port = params["tls_gate"], params["tls_gate_port"]
    try:
        port = _int_in(port, MIN_GATE_PORT, 65535, "tls_gate_port")
    except ValueError as exc:
        errors.append(str(exc))
        port = None
    for dest in allow:
        if dest.tls is True and dest.protocol != "tcp":
            errors.append("allow[%d].tls: true needs protocol tcp (the entry's protocol is %s); TLS over UDP (QUIC) "
                          "cannot be gated" % (labels[dest.name], _repr(dest.protocol)))
        if dest.tls is True and mode != "off" and dest.kind != "name":
            errors.append("allow[%d].host: %s %s; an address has no server name to check; set tls: false"
                          % (labels[dest.name], _repr(dest.host),
                             "holds addresses and networks" if dest.kind == "networks" else "is an address"))
    if mode == "off" or state != "present":
        return mode, None, port, allow, (), ()
    user = None
    if not params["tls_gate_user"]:
        errors.append("tls_gate_user: %s is empty; tls_gate=%s needs the user the gate runs as (its connections are "
                      "not redirected)" % (_repr(params["tls_gate_user"]), mode))
    else:
        gate_users, user_errors = parse_users([params["tls_gate_user"]], lookup_user, where="tls_gate_user")
        errors.extend(e.replace("tls_gate_user[0]", "tls_gate_user") for e in user_errors)
        user = gate_users[0] if gate_users else None
    if user is not None:
        # Its connections skip the gate: a user that anything else runs as would skip it too.
        if user.uid == 0:
            errors.append("tls_gate_user: %s is uid 0; every root process would bypass the gate, give it a user of "
                          "its own" % _repr(params["tls_gate_user"]))
        if resolver_user is not None and resolver_user.uid == user.uid:
            errors.append("tls_gate_user: %s is also dns_resolver_user; give the gate a user of its own"
                          % _repr(params["tls_gate_user"]))
        if scope == "users" and any(u.uid == user.uid for u in users):
            errors.append("tls_gate_user: %s is one of users; a restricted user's connections must go through the "
                          "gate, not around it" % _repr(params["tls_gate_user"]))
    gated = []
    ungated = []
    for dest in allow:
        where = "allow[%d]" % labels[dest.name]
        ports = _gated_ports(dest, where, errors)
        if ports and dest.users:
            if dest.tls:
                errors.append("%s.tls: true cannot combine with users %s (the gate's own user would need the way "
                              "out); set tls: false" % (where, _repr([u.name for u in dest.users])))
            else:
                ungated.append({"entry": "egress_" + where, "host": dest.host, "ports": list(ports),
                                "reason": "only for users %s: the gate does not cover an entry with users"
                                % ", ".join(u.name for u in dest.users)})
            ports = ()
        if ports and dest.kind != "name":
            # tls unset (true was refused above): nothing to check, and the plan says so.
            ungated.append({"entry": "egress_" + where, "host": dest.host, "ports": list(ports),
                            "reason": "an address has no server name to check: TLS to it is not gated"})
            ports = ()
        gated.append(dest._replace(tls_ports=ports))
    upstream = sorted(set(p for dest in gated for p in dest.tls_ports))
    if not upstream and not errors:
        errors.append("tls_gate: %s but no allow entry is gated (a DNS name with port 443, or tls: true)" % _repr(mode))
    if port is not None and upstream and port + len(upstream) - 1 > 65535:
        errors.append("tls_gate_port: %s leaves no room for %d listeners (one per gated port) below 65536"
                      % (_repr(port), len(upstream)))
    listeners = tuple((p, (port or 0) + i) for i, p in enumerate(upstream))
    return mode, user, port, tuple(gated), listeners, tuple(ungated)


def build_policy(params, lookup_user, failed=()):
    """The Policy of module parameters validated against ARGUMENT_SPEC (by AnsibleModule on the host,
    _options.validated_policy elsewhere); their meaning only. Raises PolicyError listing every problem.

    An absent option has its default. failed: the paths of values the spec refused (_options.check_options),
    which are not checked again."""
    params, errors = with_defaults(params), []

    def option(name):
        """The validated value, None when the spec refused it."""
        return None if name in failed else params[name]

    def check(func, value, *args):
        if value is None:
            return None
        try:
            return func(value, *args)
        except ValueError as exc:
            errors.append(str(exc))
            return None

    state, mode, scope, deny_action = option("state"), option("mode"), option("scope"), option("deny_action")
    log_prefix = check(parse_log_prefix, option("log_prefix"))
    log_limit = check(parse_log_limit, option("log_limit"))
    log_burst = check(_int_in, option("log_burst"), 1, MAX_BURST, "log_burst")

    if not params["families"]:
        errors.append("families: [] must be a non-empty list of %s" % ", ".join(FAMILIES))
    families = tuple(f for f in FAMILIES if f in params["families"])

    dns_servers = []
    for index, server in enumerate(params["dns_servers"]):
        address = check(parse_address, server, "dns_servers[%d]" % index)
        if address is not None and address not in dns_servers:
            dns_servers.append(address)

    allow = []
    labels = {}
    for index, entry in enumerate(params["allow"]):
        dest = _destination(entry, index, errors, lookup_user, failed)
        if dest is None:
            continue
        if dest.name in labels:
            errors.append("allow[%d].name: %s is already used by allow[%d]; labels must be unique"
                          % (index, _repr(dest.name), labels[dest.name]))
            continue
        labels[dest.name] = index
        allow.append(dest)

    users, user_errors = parse_users(params["users"], lookup_user)
    errors.extend(user_errors)

    networks = []
    for index, value in enumerate(params["scope_networks"]):
        network = check(parse_network, value, "scope_networks[%d]" % index)
        if network is not None and network not in networks:
            networks.append(network)

    if state == "present":
        if mode == "enforce" and not dns_servers and not errors and not failed:
            errors.append("dns_servers: [] is empty; enforce mode needs at least one trusted resolver "
                          "(it is the only DNS destination the host may use)")
        names = [d for d in allow if d.kind == "name"]
        if names and not dns_servers and mode == "audit":
            errors.append("dns_servers: [] is empty but allow[%d].host %s is a name that must be resolved"
                          % (labels[names[0].name], _repr(names[0].host)))
        if scope == "users" and not users and not user_errors:
            errors.append("users: %s is empty; scope=users needs the users whose egress is restricted" % _repr(params["users"]))
        if scope == "none" and not params["scope_networks"]:
            errors.append("scope_networks: [] is empty; scope=none restricts no local process and needs the "
                          "container networks to restrict")
    if scope in ("host", "none") and params["users"]:
        errors.append("users: %s is only used with scope=users (scope is %s, which restricts %s)"
                      % (_repr(params["users"]), _repr(scope), "every user" if scope == "host" else "no local process"))

    dns_mode = option("dns_mode")
    dns_set_timeout = check(_int_in, option("dns_set_timeout"), MIN_SET_TIMEOUT, MAX_SET_TIMEOUT, "dns_set_timeout")
    if dns_mode == "pinned" and state == "present":
        wide = [d.name for d in allow if d.subdomains]
        if wide:
            errors.append("allow: %s set subdomains: true, which only dns_mode=filtering can honour "
                          "(dns_mode is 'pinned')" % ", ".join(_repr(n) for n in wide))
    resolver_user = None
    if dns_mode == "filtering" and state == "present":
        # No default: the distribution's dnsmasq user may run another dnsmasq (libvirt's, a DHCP
        # server) that forwards for anyone, and the rules let this user's DNS out.
        if not params["dns_resolver_user"]:
            errors.append("dns_resolver_user: %s is empty; dns_mode=filtering needs the user the local filtering "
                          "resolver runs as (only its DNS may leave the host)" % _repr(params["dns_resolver_user"]))
        else:
            resolver_users, resolver_errors = parse_users([params["dns_resolver_user"]], lookup_user,
                                                          where="dns_resolver_user")
            errors.extend(e.replace("dns_resolver_user[0]", "dns_resolver_user") for e in resolver_errors)
            resolver_user = resolver_users[0] if resolver_users else None
    resolvers = []
    for index, server in enumerate(params["resolvers"]):
        address = check(parse_address, server, "resolvers[%d]" % index)
        if address is not None and address not in resolvers:
            resolvers.append(address)
    if not resolvers:
        resolvers = list(dns_servers)

    tls_gate, gate_user, gate_port, allow, listeners, ungated = _tls_gate(
        params, allow, labels, state, scope, users, resolver_user, lookup_user, errors)

    # How the module asks the resolvers: validated like every other option.
    check(_float_in, option("resolve_timeout"), MIN_RESOLVE_TIMEOUT, MAX_RESOLVE_TIMEOUT, "resolve_timeout")
    check(_int_in, option("resolve_retries"), 0, MAX_RESOLVE_RETRIES, "resolve_retries")

    learn_users, learn_user_errors = parse_users(params["learn_users"], lookup_user, where="learn_users")
    errors.extend(learn_user_errors)
    learn_maxelem = check(_int_in, option("learn_maxelem"), 1, MAX_LEARN_ELEMENTS, "learn_maxelem")
    learn_timeout = check(_int_in, option("learn_timeout"), 1, MAX_SET_TIMEOUT, "learn_timeout")

    if errors:
        raise PolicyError(errors)
    return Policy(tuple(allow), tuple(dns_servers), log_prefix, log_limit, log_burst, deny_action,
                  mode, scope, tuple(users), families, state, dns_mode, resolver_user, dns_set_timeout, tuple(resolvers),
                  tuple(networks), params["dhcp"], tls_gate, gate_user, gate_port, listeners, ungated,
                  params["learn"], tuple(learn_users), learn_maxelem, learn_timeout)
