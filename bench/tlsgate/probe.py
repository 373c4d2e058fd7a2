"""One TLS gate probe, run inside a network namespace by bench/tlsgate/run.py; prints one JSON object.

  probe.py tls ADDR SNI|- CAFILE      a real TLS client (Python's ssl): handshake, one request,
                                      the answer's first line ("-": send no SNI at all)
  probe.py raw ADDR HEX WAIT          send these bytes, read for WAIT seconds: how many bytes came back
  probe.py hello ADDR SNI ECH WAIT    a hand-made ClientHello with this SNI (ECH=1 adds an
                                      encrypted_client_hello extension, as a client using ECH
                                      sends with its outer name), then as raw
  probe.py silent ADDR WAIT           connect, send nothing: did the peer close, and after how long

Every socket has a timeout; nothing loops without a bound. tests/netns/test_tls_gate.py's clients use the same
connect, client_hello and request.
"""
import json
import os
import socket
import ssl
import struct
import sys
import time

PORT = 443


def connect(addr, timeout):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((addr, PORT))
    return sock


def client_hello(sni, ech=False):
    """A TLS 1.3 ClientHello (x25519 key share) with `sni` ("" for none), optionally an ECH extension."""
    exts = b""
    if sni:
        name = sni.encode()
        entry = b"\x00" + struct.pack(">H", len(name)) + name
        names = struct.pack(">H", len(entry)) + entry
        exts += struct.pack(">HH", 0, len(names)) + names
    groups = struct.pack(">HHH", 4, 0x001D, 0x0017)
    exts += struct.pack(">HH", 10, len(groups)) + groups
    sigs = struct.pack(">HHHH", 6, 0x0403, 0x0804, 0x0401)
    exts += struct.pack(">HH", 13, len(sigs)) + sigs
    versions = bytes([4]) + struct.pack(">HH", 0x0304, 0x0303)
    exts += struct.pack(">HH", 43, len(versions)) + versions
    share = struct.pack(">HH", 0x001D, 32) + os.urandom(32)
    shares = struct.pack(">H", len(share)) + share
    exts += struct.pack(">HH", 51, len(shares)) + shares
    if ech:  # draft-ietf-tls-esni outer ECH: type 0, suite, config id, enc, payload
        body = (b"\x00" + struct.pack(">HH", 1, 1) + b"\x42" + struct.pack(">H", 32) + os.urandom(32)
                + struct.pack(">H", 128) + os.urandom(128))
        exts += struct.pack(">HH", 0xFE0D, len(body)) + body
    suites = struct.pack(">HHHH", 6, 0x1301, 0x1302, 0xC02B)
    body = (b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + suites + b"\x01\x00"
            + struct.pack(">H", len(exts)) + exts)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


def request(conn, host):
    """One HTTP/1.0 GET for host over a connected socket (a TLS one): the answer's body, read to its end."""
    conn.sendall(b"GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % host.encode())
    data = b""
    for _chunk in range(64):
        piece = conn.recv(4096)
        if not piece:
            break
        data += piece
    return data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()


def probe_tls(addr, sni, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    if sni == "-":
        ctx.check_hostname = False
        sni = None
    start = time.monotonic()
    res = {"handshake": False}
    try:
        with connect(addr, 5) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                res["handshake"] = True
                res["body"] = request(tls, sni or addr)
                res["outcome"] = "answered"
    except (OSError, ssl.SSLError) as exc:
        res["outcome"] = "%s: %s" % (type(exc).__name__, exc)
    res["elapsed"] = round(time.monotonic() - start, 3)
    return res


def probe_raw(addr, payload, wait):
    start = time.monotonic()
    got = b""
    res = {}
    try:
        with connect(addr, wait) as sock:
            sock.sendall(payload)
            deadline = start + wait
            while time.monotonic() < deadline and len(got) < 65536:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    piece = sock.recv(4096)
                except socket.timeout:
                    break
                if not piece:
                    res["closed_by_peer"] = True
                    break
                got += piece
        res["outcome"] = "bytes back" if got else "no bytes back"
    except OSError as exc:
        res["outcome"] = "%s: %s" % (type(exc).__name__, exc)
    res.update(received=len(got), first=got[:6].hex(), elapsed=round(time.monotonic() - start, 3))
    return res


def probe_silent(addr, wait):
    start = time.monotonic()
    res = {"closed_by_peer": False}
    try:
        with connect(addr, wait) as sock:
            try:
                res["closed_by_peer"] = sock.recv(1) == b""
            except socket.timeout:
                pass
        res["outcome"] = "closed by the gate" if res["closed_by_peer"] else "still open after %ss" % wait
    except OSError as exc:
        res["outcome"] = "%s: %s" % (type(exc).__name__, exc)
        res["closed_by_peer"] = isinstance(exc, ConnectionResetError)
    res["elapsed"] = round(time.monotonic() - start, 3)
    return res


def main(argv):
    kind = argv[0]
    if kind == "tls":
        res = probe_tls(argv[1], argv[2], argv[3])
    elif kind == "raw":
        res = probe_raw(argv[1], bytes.fromhex(argv[2]), float(argv[3]))
    elif kind == "hello":
        res = probe_raw(argv[1], client_hello(argv[2] if argv[2] != "-" else "", argv[3] == "1"), float(argv[4]))
    elif kind == "silent":
        res = probe_silent(argv[1], float(argv[2]))
    else:
        sys.exit("unknown probe %s" % kind)
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
