#!/usr/bin/env python
"""Log every UDP datagram to one port that reaches this container's network interfaces (stdlib only).

    ntplog.py --name time --port 123 --log /var/log/lab/labserver.log

ag-time's chronyd answers NTP itself; this logs what arrives, one line per datagram in the format of
labserver.py ("udp/123 198.18.0.46:40000 48 bytes", "udp/123 [fd00:a9e:1::46]:40000 48 bytes"), so
a test can prove that a blocked packet never arrived. It reads a packet socket (AF_PACKET, needs
CAP_NET_RAW), sees only the container's own network namespace and sends nothing.
Python >= 3.9 (the oldest Debian the lab builds ships 3.9).
"""
import argparse
import ipaddress
import socket
import struct

from labserver import Logger  # beside this file in /lab/services

ETH_P_ALL = 0x0003
ETH_HEADER = 14


def udp_to_port(frame, port):
    """(source address, source port, payload length) of an Ethernet frame carrying a UDP datagram
    to `port` over IPv4 or IPv6 (no extension headers, first fragment only), else None."""
    if len(frame) < ETH_HEADER:
        return None
    ethertype = struct.unpack(">H", frame[12:14])[0]
    packet = frame[ETH_HEADER:]
    if ethertype == 0x0800 and len(packet) >= 20:
        header = (packet[0] & 0x0F) * 4
        fragment_offset = struct.unpack(">H", packet[6:8])[0] & 0x1FFF
        if packet[9] != socket.IPPROTO_UDP or fragment_offset:
            return None
        src, udp = ipaddress.ip_address(packet[12:16]), packet[header:]
    elif ethertype == 0x86DD and len(packet) >= 40:
        if packet[6] != socket.IPPROTO_UDP:
            return None
        src, udp = ipaddress.ip_address(packet[8:24]), packet[40:]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack(">HHH", udp[:6])
    if dport != port:
        return None
    return src, sport, max(0, length - 8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--name", required=True, help="service name, used in the log lines")
    ap.add_argument("--port", type=int, required=True, help="UDP destination port to log")
    ap.add_argument("--log", required=True, help="append log lines to this file")
    args = ap.parse_args(argv)
    log = Logger(args.name, args.log)  # the lab's one log line format (labserver.py)

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    log("logging udp/%d datagrams on every interface but lo" % args.port)
    log("ready")
    while True:
        frame, addr = sock.recvfrom(65535)
        ifname, pkttype = addr[0], addr[2]
        if ifname == "lo" or pkttype == socket.PACKET_OUTGOING:
            continue
        found = udp_to_port(frame, args.port)
        if found:
            src, sport, size = found
            peer = "[%s]:%d" % (src, sport) if src.version == 6 else "%s:%d" % (src, sport)
            log("udp/%d %s %d bytes" % (args.port, peer, size))


if __name__ == "__main__":
    main()
