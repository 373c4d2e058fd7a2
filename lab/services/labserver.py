#!/usr/bin/env python
"""Small, bounded lab server: TCP, TLS and UDP listeners from command-line flags (stdlib only).

    labserver.py --name api --cert api.crt --key api.key \
        --listen tls:443 --listen tcp:80 --listen udp:443 --listen tcp:25:banner

Each --listen is PROTO:PORT[:MODE]:
  tcp / tls + mode http (default): read one HTTP request, answer 200 with the body
                                   "agentguard-lab NAME ok" and close.
  tcp / tls + mode banner:         send "agentguard-lab NAME PROTO/PORT" first, then echo
                                   one line back and close (SMTP/SSH/DoT-like ports).
  udp (mode echo):                 answer every datagram with "agentguard-lab NAME udp/PORT echo ...".
Every listener binds the IPv4 and the IPv6 wildcard address. Every connection and datagram is logged,
one line each, to stdout and to --log, so a test can prove that a blocked packet never arrived; a TLS
connection's line carries the server name the client sent (`sni=NAME`, `sni=-` without one), so a test
can tell which of the names sharing an address (a CDN's co-tenants) a connection reached.
Python >= 3.9 (the oldest Debian the lab builds ships 3.9).
"""
import argparse
import asyncio
import datetime
import socket
import ssl
import sys

MAX_CONNECTIONS = 128  # concurrent TCP/TLS connections, all listeners together
IO_TIMEOUT = 10.0  # seconds per connection
MAX_REQUEST = 16 * 1024  # bytes read from one client
MAX_DATAGRAM = 2048


class Logger:
    def __init__(self, name, path):
        self.name = name
        self.fh = open(path, "a", buffering=1, encoding="utf-8") if path else None

    def __call__(self, msg):
        line = "%s %s %s" % (datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                             self.name, msg)
        print(line, flush=True)
        if self.fh:
            self.fh.write(line + "\n")


def peer_str(peer):
    host, port = peer[0], peer[1]
    if host.startswith("::ffff:"):
        host = host[7:]
    return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)


def parse_listen(spec):
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("tcp", "tls", "udp"):
        raise argparse.ArgumentTypeError("expected PROTO:PORT[:MODE], PROTO in tcp, tls, udp: %r" % spec)
    proto, port = parts[0], int(parts[1])
    mode = parts[2] if len(parts) == 3 else ("echo" if proto == "udp" else "http")
    if (proto == "udp") != (mode == "echo") or mode not in ("http", "banner", "echo"):
        raise argparse.ArgumentTypeError("bad mode %r for %s" % (mode, proto))
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError("bad port in %r" % spec)
    return proto, port, mode


def wildcard_sockets(kind, port):
    """One socket bound to 0.0.0.0 and one bound to :: (IPv6 only), both for `port`."""
    socks = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        s.setblocking(False)
        socks.append(s)
    return socks


class Server:
    def __init__(self, args, log):
        self.args = args
        self.log = log
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.body = ("agentguard-lab %s ok\n" % args.name).encode()
        self.ssl = None
        if any(listen[0] == "tls" for listen in args.listen):
            if not (args.cert and args.key):
                sys.exit("labserver: a tls listener needs --cert and --key")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(args.cert, args.key)
            ctx.set_alpn_protocols(["http/1.1"])
            ctx.sni_callback = self.note_sni
            self.ssl = ctx

    @staticmethod
    def note_sni(ssl_object, server_name, _ctx):
        # Kept on the connection's SSLObject for its log line; None continues the handshake.
        ssl_object.lab_sni = server_name
        return None

    async def handle(self, reader, writer, proto, port, mode):
        peer = peer_str(writer.get_extra_info("peername"))
        if proto == "tls":
            peer += " sni=%s" % (getattr(writer.get_extra_info("ssl_object"), "lab_sni", None) or "-")
        if self.slots.locked():
            self.log("%s/%s %s refused: too many connections" % (proto, port, peer))
            writer.close()
            return
        async with self.slots:
            what = "?"
            try:
                if mode == "banner":
                    writer.write(("agentguard-lab %s %s/%s\r\n" % (self.args.name, proto, port)).encode())
                    await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
                    line = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
                    writer.write(b"echo: " + line[:512])
                    what = "banner, %d bytes in" % len(line)
                else:
                    request = await asyncio.wait_for(self.read_request(reader), IO_TIMEOUT)
                    first = request.split(b"\r\n", 1)[0][:200].decode("latin-1")
                    status = "200 OK" if first.split(" ")[:1] and first[:1].isalpha() else "400 Bad Request"
                    writer.write(("HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                                  "Connection: close\r\nX-Agentguard-Lab: %s\r\n\r\n"
                                  % (status, len(self.body), self.args.name)).encode() + self.body)
                    what = "%r -> %s" % (first, status.split(" ", maxsplit=1)[0])
                await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
            except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError) as exc:
                what = "error %s: %s" % (type(exc).__name__, str(exc)[:120])
            finally:
                self.log("%s/%s %s %s" % (proto, port, peer, what))
                writer.close()
                try:
                    await asyncio.wait_for(writer.wait_closed(), 2)
                except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
                    pass

    @staticmethod
    async def read_request(reader):
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
            chunk = await reader.read(4096)
            if not chunk:
                break
            data += chunk
        return data

    async def start(self):
        loop = asyncio.get_running_loop()
        servers = []
        for proto, port, mode in self.args.listen:
            for sock in wildcard_sockets(socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM, port):
                if proto == "udp":
                    await loop.create_datagram_endpoint(lambda p=port: Echo(self, p), sock=sock)
                else:
                    def factory(r, w, proto=proto, port=port, mode=mode):
                        return self.handle(r, w, proto, port, mode)
                    servers.append(await asyncio.start_server(
                        factory, sock=sock, ssl=self.ssl if proto == "tls" else None,
                        ssl_handshake_timeout=IO_TIMEOUT if proto == "tls" else None, backlog=64))
            self.log("listening %s/%s (%s) on 0.0.0.0 and ::" % (proto, port, mode))
        self.log("ready")
        await asyncio.Event().wait()  # until killed


class Echo(asyncio.DatagramProtocol):
    def __init__(self, server, port):
        self.server = server
        self.port = port
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.server.log("udp/%s %s %d bytes" % (self.port, peer_str(addr), len(data)))
        reply = ("agentguard-lab %s udp/%s echo: " % (self.server.args.name, self.port)).encode()
        self.transport.sendto((reply + data)[:MAX_DATAGRAM], addr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--name", required=True, help="service name, used in answers and logs")
    ap.add_argument("--listen", action="append", type=parse_listen, required=True, metavar="PROTO:PORT[:MODE]")
    ap.add_argument("--cert", help="PEM certificate (chain) for tls listeners")
    ap.add_argument("--key", help="PEM private key for tls listeners")
    ap.add_argument("--log", help="append log lines to this file too")
    args = ap.parse_args(argv)
    log = Logger(args.name, args.log)

    async def run():  # the Server (and its Semaphore) must be made inside the running loop
        await Server(args, log).start()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
