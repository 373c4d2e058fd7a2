# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The canary's probe: one bounded TCP connect from the host itself.

The role runs it as `python3 -c "<this file>" HOST PORT TIMEOUT [SOURCE_PORT [SNI]]` under timeout(1)
(tasks/canary.yml; with egress_scope=users as the restricted user, through setpriv), so it needs no
file on the host. It prints what happened and exits 0 connected, 1 refused, blocked or timed out,
2 name not resolved, 3 no route from this host (ENETUNREACH); timeout(1) adds 124.

SOURCE_PORT (the forbidden probes) is bound first: egress_denials tells the canary's log lines by it.
When it is taken, or the same connection is still in TIME_WAIT, the probe connects from any port (0: any).
SNI (with the TLS gate on): after the connect, a TLS handshake sending that server name, without checking
the certificate (the canary asks whether the gate lets the name through, not whom the host trusts); it
exits 0 only when the handshake completes, 1 when the gate (or anything) closes it first. A TCP connect
alone proves nothing there: the gate's listener accepts every redirected connection.
Runs on the host's Python (Debian 11: 3.9).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import socket
import ssl
import sys


def connect(host, port, timeout, source_port):
    return socket.create_connection((host, port), timeout, ("", source_port) if source_port else None)


def handshake(sock, sni):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(sock, server_hostname=sni) as tls:
        return tls.version()


def main(argv):
    host, port, timeout = argv[1], int(argv[2]), float(argv[3])
    source_port = int(argv[4]) if len(argv) > 4 else 0
    sni = argv[5] if len(argv) > 5 else ""
    sock = None
    try:
        try:
            sock = connect(host, port, timeout, source_port)
        except OSError as exc:
            if not source_port or exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise
            sock = connect(host, port, timeout, 0)
        if sni:
            # The TLS gate logs the client by address and port: the canary finds its refusal by this.
            print("source port %d" % sock.getsockname()[1])
            version = handshake(sock, sni)
            print("handshake completed (%s) for %s" % (version, sni))
            return 0
    except socket.gaierror as exc:
        print("name not resolved: %s" % exc)
        return 2
    except (ssl.SSLError, OSError) as exc:
        print(("handshake for %s failed: " % sni if sni and sock else "") + (str(exc) or exc.__class__.__name__))
        return 3 if getattr(exc, "errno", None) == errno.ENETUNREACH else 1
    finally:
        if sock is not None:
            sock.close()
    print("connected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
