"""The node's UDP socket and address forms (no aioquic; used by ``node/transport.py``).

One socket per node. ``"::"`` binds a dual-stack socket: IPv4 peers are then reached and seen
as IPv4-mapped addresses (``::ffff:1.2.3.4``), which :func:`plain_ip` turns back for limits
and display, and :func:`wire_address` produces for sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket

from node.errors import ConfigError, DialError

__all__ = ["bind_udp", "plain_ip", "wire_address"]

_SOCKET_BUFFER = 1 << 20  # asked for; the kernel caps it (net.core.rmem_max / wmem_max)


async def bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (``port`` 0: any free port).

    Raises :class:`ConfigError` (``transport.bind``) if the address cannot be bound.
    """
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise ConfigError(f"cannot bind {host}:{port}: {exc}", code="transport.bind") from None
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        sock.setblocking(False)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{port}: {exc}", code="transport.bind") from None
    return sock


def plain_ip(host: str) -> str:
    """``::ffff:1.2.3.4`` -> ``1.2.3.4``; other addresses unchanged."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return host


def wire_address(host: str, port: int, *, ipv6_socket: bool) -> tuple[object, ...]:
    """The socket address to send to ``host:port`` from our socket.

    Raises :class:`DialError` (``dial.bad_address``) for a host that is not an IP address or an
    IPv6 address on an IPv4-only socket.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DialError(f"not an IP address: {host!r}", code="dial.bad_address") from None
    if isinstance(ip, ipaddress.IPv4Address) and ipv6_socket:
        return (f"::ffff:{ip}", port, 0, 0)
    if isinstance(ip, ipaddress.IPv6Address) and not ipv6_socket:
        raise DialError("IPv6 address on an IPv4 socket", code="dial.bad_address")
    return (str(ip), port, 0, 0) if ipv6_socket else (str(ip), port)
