# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network probes run INSIDE a lab container (test host or ag-sibling), stdlib only, Python >= 3.9.

The verify tests send this file's source with `python3 -c SOURCE JSON` (nothing is written to the
host) and read one JSON document back. Each probe is one attempt, bounded by its own timeout, and
reports the source port (or ICMP echo id) it used, so that the kernel LOG line of exactly this
attempt can be found in dmesg:

    {"probes": [{"id": "v4-forbidden-443", "kind": "tcp", "family": 4, "host": "198.18.0.66",
                 "port": 443, "timeout": 0.9}, ...]}

kinds: tcp (connect), udp (one datagram, wait for a reply), dns-udp / dns-tcp (one query for
`qname` of type `qtype`, by default A or AAAA by family; wait for the answer), icmp (one echo
request), resolve (getaddrinfo through the host's resolver), flood (`count` TCP connects at once,
then wait `timeout`).
Each result: {"id", "ok" (the service answered), "outcome", "sport", "daddr", "detail", "elapsed"}.
"""
import concurrent.futures
import errno
import json
import os
import random
import select
import socket
import struct
import sys
import time

FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def _addr(probe, kind):
    info = socket.getaddrinfo(probe["host"], probe.get("port", 0), FAMILIES[probe["family"]], kind)
    return info[0][4]


def _wait(sock, events, timeout):
    poller = select.poll()
    poller.register(sock, events)
    return poller.poll(max(0.0, timeout) * 1000)


def _errname(code):
    return errno.errorcode.get(code, str(code))


def probe_tcp(probe, res):
    addr = _addr(probe, socket.SOCK_STREAM)
    res["daddr"] = addr[0]
    sock = socket.socket(FAMILIES[probe["family"]], socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        code = sock.connect_ex(addr)
        res["sport"] = sock.getsockname()[1]
        if code not in (0, errno.EINPROGRESS):
            res["outcome"] = _errname(code)
            return
        if code == errno.EINPROGRESS and not _wait(sock, select.POLLOUT, probe["timeout"]):
            res["outcome"] = "timeout"
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        res["outcome"] = "connected" if code == 0 else _errname(code)
        res["ok"] = code == 0
    finally:
        sock.close()


def _dns_query(qname, qtype):
    qid = random.randint(0, 0xFFFF)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in qname.rstrip(".").split("."))
    return qid, struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", qtype, 1)


def _qtype(probe):
    """The query type: probe["qtype"] (A, AAAA, TXT, ...), else A for IPv4 and AAAA for IPv6."""
    types = {"A": 1, "NS": 2, "CNAME": 5, "MX": 15, "TXT": 16, "AAAA": 28, "ANY": 255}
    return types[probe["qtype"]] if probe.get("qtype") else (28 if probe["family"] == 6 else 1)


def _dns_answer(qid, data):
    if len(data) < 12:
        return None
    rid, flags, _qd, ancount = struct.unpack(">HHHH", data[:8])
    if rid != qid or not flags & 0x8000:
        return None
    return "rcode=%d answers=%d" % (flags & 0xF, ancount)


def probe_datagram(probe, res):
    """udp and dns-udp: one datagram out, wait for one back."""
    addr = _addr(probe, socket.SOCK_DGRAM)
    res["daddr"] = addr[0]
    qid = None
    payload = b"agentguard verify " + probe["id"].encode()
    if probe["kind"] == "dns-udp":
        qid, payload = _dns_query(probe.get("qname", "api.openclaw.security"), _qtype(probe))
    sock = socket.socket(FAMILIES[probe["family"]], socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(addr)
        res["sport"] = sock.getsockname()[1]
        try:
            sock.send(payload)
        except OSError as exc:
            res["outcome"] = _errname(exc.errno)
            return
        deadline = time.monotonic() + probe["timeout"]
        while _wait(sock, select.POLLIN, deadline - time.monotonic()):
            try:
                data = sock.recv(4096)
            except OSError as exc:
                res["outcome"] = _errname(exc.errno)
                return
            answer = _dns_answer(qid, data) if qid is not None else data[:80].decode(errors="replace")
            if answer:
                res.update(ok=True, outcome="answered", detail=answer)
                return
        res["outcome"] = "timeout"
    finally:
        sock.close()


def probe_dns_tcp(probe, res):
    addr = _addr(probe, socket.SOCK_STREAM)
    res["daddr"] = addr[0]
    qid, query = _dns_query(probe.get("qname", "api.openclaw.security"), _qtype(probe))
    sock = socket.socket(FAMILIES[probe["family"]], socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        code = sock.connect_ex(addr)
        res["sport"] = sock.getsockname()[1]
        deadline = time.monotonic() + probe["timeout"]
        if code == errno.EINPROGRESS and not _wait(sock, select.POLLOUT, probe["timeout"]):
            res["outcome"] = "timeout"
            return
        code = code or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code not in (0, errno.EINPROGRESS):
            res["outcome"] = _errname(code)
            return
        sock.setblocking(True)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.sendall(struct.pack(">H", len(query)) + query)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        answer = _dns_answer(qid, data[2:])
        res.update(ok=bool(answer), outcome="answered" if answer else "no answer", detail=answer)
    except socket.timeout:
        res["outcome"] = "timeout"
    except OSError as exc:
        res["outcome"] = _errname(exc.errno)
    finally:
        sock.close()


def probe_icmp(probe, res):
    family = probe["family"]
    addr = _addr(probe, socket.SOCK_DGRAM)
    res["daddr"] = addr[0]
    proto = socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6
    sock = socket.socket(FAMILIES[family], socket.SOCK_DGRAM, proto)
    try:
        sock.setblocking(False)
        sock.connect(addr)
        # Ping sockets: the kernel sets the echo id (the socket's "port") and the checksum.
        res["sport"] = sock.getsockname()[1]
        try:
            sock.send(struct.pack(">BBHHH", 8 if family == 4 else 128, 0, 0, 0, 1) + b"agentguard")
        except OSError as exc:
            res["outcome"] = _errname(exc.errno)
            return
        if _wait(sock, select.POLLIN, probe["timeout"]):
            try:
                data = sock.recv(2048)
            except OSError as exc:
                res["outcome"] = _errname(exc.errno)
                return
            ok = bool(data) and data[0] == (0 if family == 4 else 129)
            res.update(ok=ok, outcome="echo reply" if ok else "icmp type %d" % data[0])
        else:
            res["outcome"] = "timeout"
    finally:
        sock.close()


def probe_resolve(probe, res):
    try:
        infos = socket.getaddrinfo(probe["host"], None, FAMILIES[probe["family"]], socket.SOCK_STREAM)
    except socket.gaierror as exc:
        res["outcome"] = "not resolved: %s" % exc
        return
    addrs = sorted({info[4][0] for info in infos})
    res.update(ok=bool(addrs), outcome="resolved", detail=addrs)


def probe_flood(probe, res):
    """`count` TCP connects at once (one SYN each), then wait `timeout` for any to complete."""
    addr = _addr(probe, socket.SOCK_STREAM)
    res["daddr"] = addr[0]
    socks, sports, errors = [], [], {}
    poller = select.poll()
    try:
        for _attempt in range(probe["count"]):
            sock = socket.socket(FAMILIES[probe["family"]], socket.SOCK_STREAM)
            sock.setblocking(False)
            socks.append(sock)
            code = sock.connect_ex(addr)
            sports.append(sock.getsockname()[1])
            if code == errno.EINPROGRESS:
                poller.register(sock, select.POLLOUT)
            else:
                errors[_errname(code)] = errors.get(_errname(code), 0) + 1
        by_fd = {sock.fileno(): sock for sock in socks}
        connected, pending = 0, len(by_fd) - sum(errors.values())
        deadline = time.monotonic() + probe["timeout"]
        while pending and time.monotonic() < deadline:
            for fd, _ev in poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                poller.unregister(fd)
                pending -= 1
                code = by_fd[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code == 0:
                    connected += 1
                else:
                    errors[_errname(code)] = errors.get(_errname(code), 0) + 1
        res.update(ok=connected > 0, outcome="%d connected, %d timed out" % (connected, pending),
                   detail={"connected": connected, "timeout": pending, "errors": errors, "sports": sports})
    finally:
        for sock in socks:
            sock.close()


KINDS = {"tcp": probe_tcp, "udp": probe_datagram, "dns-udp": probe_datagram, "dns-tcp": probe_dns_tcp,
         "icmp": probe_icmp, "resolve": probe_resolve, "flood": probe_flood}


def run(probe):
    res = {"id": probe["id"], "ok": False, "outcome": None, "sport": None, "daddr": None, "detail": None}
    start = time.monotonic()
    try:
        KINDS[probe["kind"]](probe, res)
    except socket.gaierror as exc:
        res["outcome"] = "not resolved: %s" % exc
    except OSError as exc:
        res["outcome"] = "%s: %s" % (_errname(exc.errno) if exc.errno else type(exc).__name__, exc)
    res["elapsed"] = round(time.monotonic() - start, 3)
    return res


def probe_results(probes, out):
    """On the controller (conftest): (uid, {id: result}) of main()'s output `out` for `probes`.
    Fails unless every probe sent came back exactly once and nothing else did: a test that loops
    over the results must not pass because none came back."""
    data = json.loads(out)
    sent = sorted(p["id"] for p in probes)
    got = sorted(r["id"] for r in data["results"])
    if len(set(sent)) != len(sent) or got != sent:
        raise AssertionError("probes sent %s, results for %s" % (sent, got))
    return data["uid"], {r["id"]: r for r in data["results"]}


def main():
    request = json.loads(sys.argv[1])
    probes = request["probes"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(32, len(probes)))) as pool:
        results = list(pool.map(run, probes))
    json.dump({"uid": os.getuid(), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
