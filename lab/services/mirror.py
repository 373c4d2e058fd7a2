#!/usr/bin/env python
"""Serve a directory over HTTP on IPv4 and IPv6, logging every request (stdlib only).

    mirror.py --name mirror --root /srv/mirror --port 80 --log /var/log/lab/labserver.log

ag-mirror's apt repository (mirror.sh builds it). One log line per request in the format of
labserver.py ("tcp/80 198.18.0.46:40000 'GET /debian/dists/bookworm/Release HTTP/1.1' -> 200"), so a
test can prove which client fetched what and that a blocked connection never arrived. GET and HEAD
only, files under --root only, bounded by a timeout per connection.
Python >= 3.9 (the oldest Debian the lab builds ships 3.9).
"""
import argparse
import functools
import http.server
import socket

from labserver import Logger, peer_str  # beside this file in /lab/services (one log format)

IO_TIMEOUT = 10.0


class DualStackServer(http.server.ThreadingHTTPServer):
    """One socket on :: that takes IPv4 clients too (as ::ffff:a.b.c.d, logged as a.b.c.d)."""
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Handler(http.server.SimpleHTTPRequestHandler):
    timeout = IO_TIMEOUT
    protocol_version = "HTTP/1.1"  # apt keeps one connection for all its requests
    lab_log = None
    lab_port = 80

    def log_request(self, code="-", size="-"):
        self.lab_log("tcp/%d %s %r -> %s" % (self.lab_port, peer_str(self.client_address), self.requestline,
                                             getattr(code, "value", code)))

    def log_error(self, *args):
        self.lab_log("tcp/%d %s error %s" % (self.lab_port, peer_str(self.client_address), (args[0] % args[1:])[:160]))

    def log_message(self, *args):
        pass

    def list_directory(self, path):  # no directory listings: a mirror serves files
        self.send_error(404)
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--name", required=True, help="service name, used in the log lines")
    ap.add_argument("--root", required=True, help="directory to serve")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--log", required=True, help="append log lines to this file")
    args = ap.parse_args(argv)
    log = Logger(args.name, args.log)  # the lab's one log line format (labserver.py)

    Handler.lab_log = staticmethod(log)
    Handler.lab_port = args.port
    server = DualStackServer(("::", args.port), functools.partial(Handler, directory=args.root))
    log("listening tcp/%d (http, %s) on :: and 0.0.0.0" % (args.port, args.root))
    log("ready")
    server.serve_forever()


if __name__ == "__main__":
    main()
