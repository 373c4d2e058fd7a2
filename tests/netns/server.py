"""A tiny dual-stack TCP server for the integration tests: answers "ok\\n" on every port given.

Usage: server.py PORT [PORT ...]; stops on SIGTERM. Bounded: it only accepts and replies.
"""
import signal
import socket
import sys
import threading


def serve(port):
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(128)
    while True:
        conn, dummy = sock.accept()
        try:
            conn.sendall(b"ok\n")
        finally:
            conn.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    for p in sys.argv[1:]:
        threading.Thread(target=serve, args=(int(p),), daemon=True).start()
    print("ready", flush=True)
    signal.pause()
