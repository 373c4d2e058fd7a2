"""Try connections in parallel and print one JSON result per target (run inside a namespace).

Usage: probe.py [--timeout S] [--repeat N] tcp:HOST:PORT udp-dns:HOST:NAME[/TYPE] tcp-dns:HOST:NAME[/TYPE]
                udp:HOST:PORT icmp:HOST:echo ...
Results: "ok" (connected / answered with data / echo reply), "ok-empty", an rcode such as "NXDOMAIN",
"timeout", "refused" (for udp: an ICMP port unreachable came back, so the datagram reached the host),
"denied" (EPERM: dropped by the local firewall before leaving), or "error: ...".
icmp needs a raw socket (root).
With --repeat N, each target is tried N times (at most 50 at once) and its result is a
count per outcome, e.g. {"timeout": 1000}.
"""
import contextlib
import json
import socket
import sys
import threading


@contextlib.contextmanager
def connected(kind, host, port, timeout):
    """A socket of the address's family (SOCK_STREAM or SOCK_DGRAM) connected to host:port, closed after."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    sock.settimeout(timeout)
    try:
        sock.connect((host, int(port)))
        yield sock
    finally:
        sock.close()


def tcp(host, port, timeout):
    with connected(socket.SOCK_STREAM, host, port, timeout) as sock:
        return "ok" if sock.recv(64) else "ok-empty"


def udp(host, port, timeout):
    with connected(socket.SOCK_DGRAM, host, port, timeout) as sock:
        sock.send(b"agentguard-probe\n")
        return "ok" if sock.recv(512) else "ok-empty"


def icmp(host, timeout):
    """One ICMP (v4 or v6) echo request; "ok" when the matching echo reply comes back."""
    import os
    import struct
    import time
    v6 = ":" in host
    if v6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        request, reply = 128, 129
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        request, reply = 8, 0
    ident = (os.getpid() + threading.get_ident()) & 0xFFFF
    payload = b"agentguard-probe"
    packet = struct.pack("!BBHHH", request, 0, 0, ident, 1) + payload
    if not v6:  # the kernel computes ICMPv6 checksums itself
        words = sum(struct.unpack("!%dH" % (len(packet) // 2), packet))
        words = (words >> 16) + (words & 0xFFFF)
        words += words >> 16
        packet = packet[:2] + struct.pack("!H", ~words & 0xFFFF) + packet[4:]
    deadline = time.monotonic() + timeout
    try:
        sock.connect((host, 0))
        sock.send(packet)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            sock.settimeout(left)
            data = sock.recv(2048)
            if not v6:
                data = data[(data[0] & 0x0F) * 4:]  # a raw IPv4 socket sees the IP header
            if len(data) >= 8 and data[0] == reply and struct.unpack("!H", data[4:6])[0] == ident:
                return "ok"
    finally:
        sock.close()


def dns(host, name, timeout, tcp=False):
    import dns.message
    import dns.query
    import dns.rcode
    name, rdtype = (name.split("/", 1) + ["A"])[:2]  # "api.test/AAAA" asks for AAAA records
    query = dns.message.make_query(name, rdtype)
    answer = (dns.query.tcp if tcp else dns.query.udp)(query, host, timeout=timeout)
    if answer.answer:
        return "ok"
    return "ok-empty" if answer.rcode() == 0 else dns.rcode.to_text(answer.rcode())


def run(target, timeout, results):
    kind, rest = target.split(":", 1)
    host, arg = rest.rsplit(":", 1)
    host = host.strip("[]")
    try:
        if kind == "tcp":
            results[target] = tcp(host, arg, timeout)
        elif kind == "udp":
            results[target] = udp(host, arg, timeout)
        elif kind == "icmp":
            results[target] = icmp(host, timeout)
        else:
            results[target] = dns(host, arg, timeout, tcp=kind == "tcp-dns")
    except socket.timeout:
        results[target] = "timeout"
    except ConnectionRefusedError:
        results[target] = "refused"
    except PermissionError:
        results[target] = "denied"  # the local firewall dropped a datagram: sendto() says EPERM
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        name = type(exc).__name__
        results[target] = "timeout" if name in ("Timeout", "TimeoutError") else "error: %s: %s" % (name, exc)


def repeat(targets, count, timeout):
    summary = {}
    for target in targets:
        outcomes = {}
        for first in range(0, count, 50):
            slots = [{} for dummy in range(min(50, count - first))]
            threads = [threading.Thread(target=run, args=(target, timeout, slot)) for slot in slots]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout * 3)
            for slot in slots:
                value = slot.get(target, "no result")
                outcomes[value] = outcomes.get(value, 0) + 1
        summary[target] = outcomes
    return summary


def main(argv):
    timeout = 1.5
    count = 0
    while argv[:1] in (["--timeout"], ["--repeat"]):
        if argv[0] == "--timeout":
            timeout = float(argv[1])
        else:
            count = int(argv[1])
        argv = argv[2:]
    if count:
        print(json.dumps(repeat(argv, count, timeout), sort_keys=True))
        return
    results = {}
    threads = [threading.Thread(target=run, args=(t, timeout, results)) for t in argv]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * 3)
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
