"""mDNS discovery on the local network: the only module that imports ``zeroconf``.

We advertise ``<peer-id-text>._peerline._udp.local.`` (the instance name *is* the PeerId text,
58 characters, so it is unique per device and within the 63-byte label limit). Its TXT entries:

- ``id`` = the PeerId text, ``port`` = the QUIC port;
- ``n`` = the number of record chunks and ``r0`` .. ``r<n-1>`` = the signed :class:`PeerRecord`
  bytes split into chunks that keep every ``key=value`` entry within 255 bytes.

Browsing resolves every instance we see, reassembles the record and runs the one
:func:`node.records.validate` with the PeerId that the instance name and the ``id`` entry
claim; the three must agree. The cache keeps, per PeerId, the :func:`node.records.select` winner
until it expires. What mDNS says is only a hint: the addresses we hand out are the *signed*
ones from the record, never the unsigned A records, and the transport pins the PeerId when it
dials, so a spoofed advertisement ends in a refused record or a refused handshake.

``interfaces`` selects where we multicast (``None`` = every interface). Tests always pass
loopback or addresses inside network namespaces they created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from zeroconf import Error as ZeroconfError
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
from zeroconf._utils.net import get_all_addresses
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from node import records
from node.errors import (
    DiscoveryError,
    InvalidRecordError,
    LocalProtocolError,
    PeerlineError,
    RemoteProtocolError,
)
from node.identity import PeerId
from node.records import PeerRecord

__all__ = ["SERVICE_TYPE", "TXT_CHUNK", "MdnsDiscovery", "lan_addresses", "pack_txt", "unpack_txt"]

SERVICE_TYPE = "_peerline._udp.local."
TXT_CHUNK = 250
"""Record bytes per TXT entry: ``r<d>=`` plus 250 bytes stays within the 255-byte limit."""
_MAX_CHUNKS = -(-records.MAX_RECORD_SIZE // TXT_CHUNK)
_log = logging.getLogger(__name__)


def pack_txt(record: PeerRecord, port: int) -> dict[str, bytes]:
    """TXT properties advertising ``record`` (the signed bytes, split) and our QUIC port."""
    data = record.encode()
    chunks = [data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)]
    properties = {"id": record.peer_id.text().encode(), "port": str(port).encode()}
    properties["n"] = str(len(chunks)).encode()
    properties.update({f"r{i}": chunk for i, chunk in enumerate(chunks)})
    return properties


def unpack_txt(properties: Mapping[bytes, bytes | None]) -> tuple[PeerId, bytes]:
    """The claimed PeerId and the reassembled record bytes (not yet validated).

    Raises :class:`InvalidRecordError` (``record.malformed``) for anything missing or odd.
    """
    try:
        claimed = PeerId.parse((properties.get(b"id") or b"").decode("ascii"))
        count = int((properties.get(b"n") or b"").decode("ascii"))
        if not 0 < count <= _MAX_CHUNKS:
            raise ValueError("chunk count")
        parts = [properties.get(f"r{i}".encode()) for i in range(count)]
        if any(part is None for part in parts):
            raise ValueError("missing chunk")
        return claimed, b"".join(part for part in parts if part is not None)
    except (PeerlineError, ValueError, UnicodeDecodeError):
        raise InvalidRecordError("malformed mDNS TXT entries", code="record.malformed") from None


def lan_addresses(interfaces: Sequence[str] | None = None) -> list[str]:
    """IPv4 addresses to put in our record: the configured interfaces, else every
    non-loopback address of this host (loopback only if there is nothing else)."""
    if interfaces is not None:
        return list(interfaces)
    found = get_all_addresses()
    outside = [ip for ip in found if not ip.startswith("127.")]
    return outside or found


def _instance_name(peer_id: PeerId) -> str:
    return f"{peer_id.text()}.{SERVICE_TYPE}"


class MdnsDiscovery:
    """Advertise our record and keep a cache of the valid records of peers on the LAN.

    Lifecycle: ``await start()`` (or ``async with``), ``await advertise(record, port)`` as often
    as the record changes, ``await aclose()``. ``on_record`` is called synchronously with each
    record that is new or newer than the cached one. Implements ``AddressLookup``.
    """

    name = "mdns"

    def __init__(
        self,
        *,
        interfaces: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
        on_record: Callable[[PeerRecord], None] | None = None,
        resolve_timeout: float = 1.5,
        max_peers: int = 1024,
    ) -> None:
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._clock = clock
        self._on_record = on_record
        self._timeout_ms = int(resolve_timeout * 1000)
        self._max_peers = max_peers
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._own: PeerId | None = None
        self._cache: dict[PeerId, PeerRecord] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self.refused: Counter[str] = Counter()

    async def __aenter__(self) -> MdnsDiscovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the mDNS sockets on the configured interfaces and start browsing."""
        interfaces: Any = InterfaceChoice.All if self._interfaces is None else self._interfaces
        version = IPVersion.V4Only if self._interfaces is None else None
        try:
            self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
        except (OSError, ZeroconfError) as exc:
            raise DiscoveryError(f"mDNS cannot start: {exc}") from None
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )

    async def aclose(self) -> None:
        for task in list(self._resolving.values()):
            task.cancel()
        await asyncio.gather(*self._resolving.values(), return_exceptions=True)
        self._resolving.clear()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            await self._zc.async_close()  # also says goodbye for our registration
            self._zc = None

    def _require(self) -> AsyncZeroconf:
        if self._zc is None:
            raise LocalProtocolError("mDNS discovery is not started", code="mdns.not_started")
        return self._zc

    # ------------------------------------------------------------------ advertising

    async def advertise(self, record: PeerRecord, port: int) -> None:
        """Announce (or update) our record; returns when the announcement has been sent.

        The first call probes for name conflicts (about 1.2 s). Addresses announced in A/AAAA
        records are the record's signed addresses.
        """
        zc = self._require()
        if self._own is not None and record.peer_id != self._own:
            raise LocalProtocolError("one MdnsDiscovery advertises one peer", code="mdns.misuse")
        self._own = record.peer_id  # before registering: the browser will see us at once
        self._cache.pop(record.peer_id, None)
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            _instance_name(record.peer_id),
            port=port,
            properties=pack_txt(record, port),
            server=f"{record.peer_id.text()}.local.",
            parsed_addresses=[host for host, _ in record.addresses],
        )
        try:
            if self._info is None:
                await (await zc.async_register_service(info))
            else:
                await (await zc.async_update_service(info))
        except (OSError, ZeroconfError) as exc:
            raise DiscoveryError(f"mDNS cannot advertise: {exc}") from None
        self._info = info

    # ------------------------------------------------------------------ browsing

    def _on_change(
        self,
        zeroconf: Any,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser callback (synchronous): resolve added/updated instances in a task.

        Removals are ignored: a goodbye packet is unauthenticated; records age out by expiry.
        """
        if state_change is ServiceStateChange.Removed or name in self._resolving:
            return
        if len(self._resolving) >= 64:
            self.refused["busy"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._resolving[name] = task
        task.add_done_callback(lambda _: self._resolving.pop(name, None))

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            if not await info.async_request(self._require().zeroconf, self._timeout_ms):
                return
        except (OSError, ZeroconfError, PeerlineError):
            return
        self._accept(name, info.properties)

    def _accept(self, name: str, properties: Mapping[bytes, bytes | None]) -> PeerRecord | None:
        try:
            claimed, data = unpack_txt(properties)
            if name.lower() != _instance_name(claimed).lower():
                raise InvalidRecordError("instance name and id differ", code="record.wrong_peer")
            record = records.validate(data, self._clock(), peer_id=claimed)
        except RemoteProtocolError as exc:
            self.refused[exc.code] += 1
            _log.debug("refused mDNS advertisement %s: %s", name[:80], exc.code)
            return None
        if record.peer_id == self._own:
            return None
        current = self._cached(record.peer_id)
        if current is None and len(self._cache) >= self._max_peers:
            self.refused["cache_full"] += 1
            return None
        best = records.select(current, record)
        if best is not current and best is not None:
            self._cache[record.peer_id] = best
            if self._on_record is not None:
                self._on_record(best)
        return best

    def _cached(self, peer_id: PeerId) -> PeerRecord | None:
        record = self._cache.get(peer_id)
        if record is not None and record.expires <= self._clock():
            del self._cache[peer_id]
            return None
        return record

    def peers(self) -> list[PeerRecord]:
        """Every unexpired record seen on the LAN."""
        return [r for r in (self._cached(p) for p in list(self._cache)) if r is not None]

    async def lookup(self, peer_id: PeerId) -> list[PeerRecord]:
        """The cached record, else a direct mDNS query for that peer's instance name."""
        cached = self._cached(peer_id)
        if cached is None and peer_id != self._own:
            name = _instance_name(peer_id)
            await self._resolve(name)
            cached = self._cached(peer_id)
        return [] if cached is None else [cached]
