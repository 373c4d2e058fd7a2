"""A pod's resolver against the exported Cilium DNS rule: an allowed name resolves, a forbidden one does not.

What is simulated (no cluster runs here):
- the pod's /etc/resolv.conf under dnsPolicy ClusterFirst: ndots:5 and the search list
  <namespace>.svc.cluster.local svc.cluster.local cluster.local;
- the two C libraries' search loops, from their sources: glibc's res_nsearch (resolv/res_query.c: a name
  with fewer than ndots dots goes through the search list first; NXDOMAIN, NODATA and SERVFAIL go on to the
  next domain, any other answer (REFUSED) ends the search; the name as it is is tried last unless it was
  tried first) and musl's name_from_dns_search (src/network/lookup_name.c: NXDOMAIN goes on; SERVFAIL,
  REFUSED and NODATA end the lookup, the name itself is never tried);
- Cilium's DNS proxy: a query rules.dns allows (matchName/matchPattern, _k8s.cilium_dns_allows, which follows
  pkg/fqdn/matchpattern/matchpattern.go of Cilium 1.17.5: "*" alone matches every name, otherwise each "*"
  is [-a-zA-Z0-9_]*, so never a dot) goes to
  CoreDNS; any other gets the reject code of --tofqdns-dns-reject-response-code (refused, the default, or
  nameError, NXDOMAIN);
- CoreDNS: the names it knows answer, every other name (cluster or not) is NXDOMAIN.
"""
import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _k8s as K
from ansible_collections.agentguard.hardening.tests.unit.plugins.module_utils.k8s_cases import ALLOW

NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
REJECT = {"refused": REFUSED, "nameError": NXDOMAIN}
RECORDS = {
    "api.openclaw.security": ["198.18.0.10"],
    "eu.openexchangerates.org": ["198.18.0.11"],
    "api.openai.com": ["198.18.0.66"],          # exists upstream: only the policy keeps it from resolving
    "kubernetes.default.svc.cluster.local": ["10.96.0.1"],
}
NAMESPACE = "agents"
CLUSTER_FIRST = {"ndots": 5, "search": ["%s.svc.cluster.local" % NAMESPACE, "svc.cluster.local", "cluster.local"]}


class PodDNS(object):
    """CoreDNS behind Cilium's DNS proxy, as a pod sees it; every query is logged with its answer."""

    def __init__(self, selectors, reject="refused"):
        self.selectors = selectors
        self.reject = REJECT[reject]
        self.log = []

    def query(self, qname):
        if not K.cilium_dns_allows(self.selectors, qname):
            answer = (self.reject, [])
        else:
            name = qname.rstrip(".").lower()
            answer = (NOERROR, RECORDS[name]) if name in RECORDS else (NXDOMAIN, [])
        self.log.append((qname, answer[0]))
        return answer


def glibc(name, conf, dns):
    """res_nsearch's order and stop rules; returns the addresses or None."""
    trailing = name.endswith(".")
    base = name.rstrip(".")
    tried_as_is = False
    if base.count(".") >= conf["ndots"] or trailing:
        rcode, answer = dns.query(base + ".")
        if answer:
            return answer
        if trailing:
            return None
        tried_as_is = True
    for domain in conf["search"]:
        rcode, answer = dns.query("%s.%s." % (base, domain))
        if answer:
            return answer
        if rcode in (NXDOMAIN, NOERROR, SERVFAIL):  # HOST_NOT_FOUND, NO_DATA, TRY_AGAIN from SERVFAIL
            continue
        break  # REFUSED: NO_RECOVERY, the search is done
    if not tried_as_is:
        rcode, answer = dns.query(base + ".")
        if answer:
            return answer
    return None


def musl(name, conf, dns):
    """name_from_dns_search's order and stop rules; returns the addresses or None."""
    trailing = name.endswith(".")
    base = name.rstrip(".")
    search = [] if name.count(".") >= conf["ndots"] or trailing else conf["search"]
    for domain in search:
        rcode, answer = dns.query("%s.%s." % (base, domain))
        if answer:
            return answer
        if rcode == NXDOMAIN:
            continue
        return None  # EAI_AGAIN (SERVFAIL), EAI_FAIL (REFUSED), EAI_NODATA: the lookup ends
    rcode, answer = dns.query(base + ".")
    return answer or None


LIBCS = {"glibc": glibc, "musl": musl}


def exported_selectors(dns="cluster"):
    variables = {"egress_allow": [ALLOW[0], dict(ALLOW[1], subdomains=True)],
                 "egress_dns_servers": ["198.18.0.53"], "egress_dns_mode": "filtering"}
    manifest = K.export_policies(variables, NAMESPACE, backends=["cilium"], dns=dns)[0]["manifest"]
    rule = manifest["spec"]["egress"][0]
    assert rule["toEndpoints"] if dns == "cluster" else rule["toCIDRSet"]
    return rule["toPorts"][0]["rules"]["dns"]


@pytest.mark.parametrize("reject", sorted(REJECT))
@pytest.mark.parametrize("libc", sorted(LIBCS))
def test_an_allowed_name_resolves_through_the_search_list(libc, reject):
    for name, address in (("api.openclaw.security", "198.18.0.10"), ("eu.openexchangerates.org", "198.18.0.11"),
                          ("api.openclaw.security.", "198.18.0.10")):
        dns = PodDNS(exported_selectors(), reject)
        assert LIBCS[libc](name, CLUSTER_FIRST, dns) == [address], (name, dns.log)
        # The search-list expansions were asked and answered NXDOMAIN by CoreDNS, not refused by the proxy.
        assert all(rcode in (NOERROR, NXDOMAIN) for qname, rcode in dns.log)
        assert all(K.cilium_dns_allows(dns.selectors, qname) for qname, rcode in dns.log), dns.log


@pytest.mark.parametrize("reject", sorted(REJECT))
@pytest.mark.parametrize("libc", sorted(LIBCS))
def test_a_forbidden_name_does_not_resolve(libc, reject):
    for name in ("api.openai.com", "api.openai.com.", "a.b.openexchangerates.org", "openclaw.security",
                 "kubernetes.default"):
        dns = PodDNS(exported_selectors(), reject)
        assert LIBCS[libc](name, CLUSTER_FIRST, dns) is None, (name, dns.log)
        # No query about it reached CoreDNS: each was answered by the proxy's reject code.
        assert dns.log and all(rcode == REJECT[reject] for qname, rcode in dns.log), dns.log


@pytest.mark.parametrize("libc", sorted(LIBCS))
def test_without_the_expansions_musl_fails_an_allowed_name(libc):
    # The problem the expansions solve, shown by the same simulation: exact names only, REFUSED by default.
    exact = exported_selectors(dns="servers")
    assert not any("cluster.local" in str(s) for s in exact)
    dns = PodDNS(exact, "refused")
    result = LIBCS[libc]("api.openclaw.security", CLUSTER_FIRST, dns)
    if libc == "musl":
        assert result is None and dns.log == [("api.openclaw.security.agents.svc.cluster.local.", REFUSED)]
    else:  # glibc ends the search at REFUSED but still tries the name itself
        assert result == ["198.18.0.10"] and [r for q, r in dns.log] == [REFUSED, NOERROR]
    # nameError (NXDOMAIN) as the reject code, or ndots:1, or a final dot: musl resolves too.
    assert LIBCS[libc]("api.openclaw.security", CLUSTER_FIRST, PodDNS(exact, "nameError")) == ["198.18.0.10"]
    assert LIBCS[libc]("api.openclaw.security", dict(CLUSTER_FIRST, ndots=1), PodDNS(exact)) == ["198.18.0.10"]
    assert LIBCS[libc]("api.openclaw.security.", CLUSTER_FIRST, PodDNS(exact)) == ["198.18.0.10"]
