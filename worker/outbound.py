"""Outbound requests to URLs that users enter (webhook endpoints, the LLM judge): the one SSRF check (no Django here).

A URL's host is resolved once; every address must be public (not private, loopback, link-local, reserved or
multicast), also an IPv4 address carried inside an IPv6 one (IPv4-mapped, NAT64 ``64:ff9b::/96`` and
``64:ff9b:1::/48``, 6to4 ``2002::/16``, Teredo). The request then goes to the address that was checked
(:class:`PublicOnlyTransport`), so a second lookup that answers differently (DNS rebinding) changes nothing;
the name still goes in the Host header and, for https, in SNI and the certificate check.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class OutboundRefused(ValueError):
    """The URL may not be called from here; the message says why."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo's client), if any."""
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if any(address in net for net in NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    return None


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if not address.is_global or address.is_multicast:
        return False
    inner = embedded_ipv4(address) if address.version == 6 else None
    return inner is None or (inner.is_global and not inner.is_multicast)


def public_address(host: str, port: int) -> str:
    """The address to connect to for ``host``: every address it resolves to must be public (OutboundRefused)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundRefused(f"The host {host!r} does not resolve ({exc}).") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not is_public(address):
            raise OutboundRefused(f"{host} resolves to {address}, a private, loopback or reserved address.")
    if not addresses:
        raise OutboundRefused(f"The host {host!r} does not resolve.")
    return str(addresses[0])


class PublicOnlyTransport(httpx.HTTPTransport):
    """httpx's transport that checks each request's host (``public_address``) and connects to the checked address.
    ``allow_private``: no check (tests, an all-internal deployment)."""

    def __init__(self, *, allow_private: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.allow_private = allow_private

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.allow_private:
            host = request.url.host
            try:
                address = public_address(host, request.url.port or (443 if request.url.scheme == "https" else 80))
            except OutboundRefused as exc:
                raise httpx.ConnectError(str(exc), request=request) from exc
            if address != host:
                request.extensions = {**request.extensions, "sni_hostname": host}
                request.url = request.url.copy_with(host=address)
        return super().handle_request(request)
