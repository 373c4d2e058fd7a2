# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Resolve allowed destinations through the trusted resolvers only (dnspython).

Private to agentguard.hardening. The system resolver is never used: the names
that open the firewall must come from the resolvers the firewall trusts.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import sys
import time

# dnspython imports, when they are installed, the HTTP, HTTP/2 and QUIC libraries it needs only for
# DNS over HTTPS or QUIC: on a Debian host with python3-dnspython's recommended packages that is
# 0.3 to 0.5 s per run, most of a plan's time, for transports this module never uses (it sends plain
# DNS to the trusted resolvers). dnspython >= 2.4 decides by package metadata and can be told not to
# (dns._features.force); before 2.4 it tries the imports and copes with ImportError, so those
# libraries are hidden while it loads, and only then.
UNUSED_FEATURES = ("doh", "doq", "trio")
UNUSED_TRANSPORTS = ("httpx", "httpcore", "h2", "requests", "requests_toolbelt", "aioquic", "trio", "curio")
_DNSPYTHON = []


def load_dnspython():
    """dnspython's top package, imported on first use without its DoH/DoQ transports; raises ImportError.

    Imported only when a name must be resolved: a policy of literal addresses never loads it.
    """
    if _DNSPYTHON:
        return _DNSPYTHON[0]
    import dns
    try:
        from dns import _features as features
    except ImportError:  # dnspython < 2.4
        features = None
    hidden = []
    if features is not None and hasattr(features, "force"):
        for feature in UNUSED_FEATURES:
            features.force(feature, False)
    else:
        hidden = [name for name in UNUSED_TRANSPORTS if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # importing it raises ImportError, which old dnspython expects
    try:
        import dns.exception
        import dns.name
        import dns.rdatatype
        import dns.resolver
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    _DNSPYTHON.append(dns)
    return dns


RDTYPES = (("ipv4", "A"), ("ipv6", "AAAA"))


class ResolveError(Exception):
    pass


def sort_addresses(addresses):
    """Canonical, deduplicated, numerically sorted address strings of one family."""
    parsed = set(ipaddress.ip_address(a) for a in addresses)
    return [str(a) for a in sorted(parsed)]


def _resolver(servers, timeout, port):
    dns = load_dnspython()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = list(servers)
    resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout * max(1, len(servers))
    resolver.cache = None
    return resolver


def _query(resolver, name, rdtype, retries, sleep):
    """Return the address strings for one rdtype; [] when the name has none of that type.

    Retries only what can be transient (timeouts, SERVFAIL/refusals); NXDOMAIN is an answer.
    """
    dns = load_dnspython()
    qname = dns.name.from_text(name)  # absolute: no search domains
    last = None
    for attempt in range(retries + 1):
        try:
            answer = resolver.resolve(qname, rdtype, raise_on_no_answer=False)
            if answer.rrset is None:
                return []
            return [rr.address for rr in answer.rrset]
        except dns.resolver.NXDOMAIN:
            raise ResolveError("answer NXDOMAIN (the name does not exist)")
        except dns.resolver.YXDOMAIN:
            raise ResolveError("answer YXDOMAIN")
        except dns.resolver.NoNameservers as exc:
            last = "no resolver gave a usable answer (%s)" % _short(exc)
        except dns.exception.Timeout:
            last = "timed out after %.1fs" % resolver.lifetime
        except dns.exception.DNSException as exc:
            last = _short(exc)
        if attempt < retries:
            sleep(0.2 * (attempt + 1))
    raise ResolveError("%s after %d attempt(s)" % (last, retries + 1))


def _short(exc):
    text = str(exc).strip() or exc.__class__.__name__
    return text if len(text) < 300 else text[:297] + "..."


def resolve_destinations(destinations, servers, families, timeout=3.0, retries=2, port=53, sleep=time.sleep):
    """Resolve every destination; return {label: {"ipv4": [...], "ipv6": [...]}}.

    Literal addresses and CIDRs pass through unchanged. Raises ResolveError naming
    the name, the resolvers asked and their answer when a name cannot be resolved
    to at least one address of a managed family.
    """
    result = {}
    names = [d for d in destinations if d.kind == "name"]
    if names:
        try:
            load_dnspython()
        except ImportError as exc:
            raise ResolveError("resolving %s needs the Python library dnspython on the target (Debian: python3-dnspython): %s"
                               % (names[0].host, exc))
    resolver = _resolver(servers, timeout, port) if names else None
    for dest in destinations:
        entry = {"ipv4": [], "ipv6": []}
        if dest.kind != "name":
            for family, network in dest.networks:
                if family in families:
                    entry[family].append(network)
            result[dest.name] = entry
            continue
        for family, rdtype in RDTYPES:
            if family not in families:
                continue
            try:
                entry[family] = sort_addresses(_query(resolver, dest.host, rdtype, retries, sleep))
            except ResolveError as exc:
                raise ResolveError("allow %s: cannot resolve %s (%s) through %s: %s"
                                   % (dest.name, dest.host, rdtype, ", ".join(servers), exc))
        if not entry["ipv4"] and not entry["ipv6"]:
            raise ResolveError("allow %s: %s has no %s record at %s (answer: NOERROR, no data)"
                               % (dest.name, dest.host, " or ".join(r for f, r in RDTYPES if f in families),
                                  ", ".join(servers)))
        result[dest.name] = entry
    return result
