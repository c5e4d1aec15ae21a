"""The one SSRF check (worker/outbound.py): IPv4 addresses hidden in IPv6 forms are seen, and a request goes to the
address that was checked, never to a second lookup's answer."""

from __future__ import annotations

import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from worker import outbound


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::5db8:d822", True),  # NAT64 of a public address
        ("2002:0a01:0203::1", False),  # 6to4 of 10.1.2.3
        ("2002:5db8:d822::1", True),  # 6to4 of a public address
    ],
)
def test_private_ipv4_addresses_in_ipv6_forms_are_refused(address, public):
    assert outbound.is_public(ipaddress.ip_address(address)) is public


class Echo(BaseHTTPRequestHandler):
    hosts: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        type(self).hosts.append(self.headers["Host"])
        self.send_response(204)
        self.end_headers()


def test_the_request_goes_to_the_checked_address_under_its_name(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    lookups = []

    def checked(host, port):  # the check resolved the name once, to this address
        lookups.append(host)
        return "127.0.0.1"

    monkeypatch.setattr(outbound, "public_address", checked)
    try:
        with httpx.Client(transport=outbound.PublicOnlyTransport()) as client:
            response = client.get(f"http://hooks.example.invalid:{port}/x")  # no DNS could answer this name
        assert response.status_code == 204
        assert lookups == ["hooks.example.invalid"] and Echo.hosts == [f"hooks.example.invalid:{port}"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_private_address_is_refused_when_sent():
    with httpx.Client(transport=outbound.PublicOnlyTransport()) as client, pytest.raises(httpx.ConnectError) as refused:
        client.get("http://127.0.0.1:9/")
    assert "private, loopback or reserved" in str(refused.value)
