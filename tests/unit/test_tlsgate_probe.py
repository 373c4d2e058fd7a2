"""The TLS client that the TLS gate's bench and its netns test share (bench/tlsgate/probe.py): the hand-made
ClientHello is one a real TLS stack reads with the name it carries, and request reads the answer to its end."""
import importlib.util
import os
import socket
import ssl
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SPEC = importlib.util.spec_from_file_location("tlsgate_probe", os.path.join(ROOT, "bench", "tlsgate", "probe.py"))
probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe)


def names_read(hello):
    """The server names OpenSSL's server side reads from a ClientHello (fed through memory, no socket)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    seen = []
    ctx.sni_callback = lambda conn, name, context: seen.append(name)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(hello)
    with pytest.raises(ssl.SSLError):  # no certificate here: the handshake stops once the hello is read
        server.do_handshake()
    return seen


@pytest.mark.parametrize("sni", ["api.test", "198.18.49.10", "fd00:48:2::10"])
def test_the_client_hello_carries_its_name_as_it_is(sni):
    # An IP literal too: what Python's ssl never sends, and what the gate must refuse.
    assert names_read(probe.client_hello(sni)) == [sni]
    assert names_read(probe.client_hello(sni, ech=True)) == [sni]


def test_a_client_hello_without_a_name_has_no_server_name():
    assert names_read(probe.client_hello("")) == [None]


def test_request_asks_for_the_host_and_reads_the_answer_to_its_end():
    client, server = socket.socketpair()
    asked = []

    def answer():
        asked.append(server.recv(4096))
        # Longer than one read: the body comes in several pieces.
        server.sendall(b"HTTP/1.0 200 OK\r\nServer: test\r\n\r\n" + b"hello " * 2000)
        server.close()

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        client.settimeout(5)
        assert probe.request(client, "api.test") == ("hello " * 2000).strip()
    finally:
        thread.join(5)
        client.close()
    assert asked == [b"GET / HTTP/1.0\r\nHost: api.test\r\n\r\n"]
