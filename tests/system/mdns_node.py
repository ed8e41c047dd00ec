"""A minimal node for discovery tests: QUIC transport + mDNS, nothing configured.

``python -m tests.system.mdns_node [--interface IP ...] [--lifetime S]`` binds QUIC on
0.0.0.0, signs a record with this host's LAN addresses, advertises it over mDNS on every
interface (or the given ones), dials every peer it discovers with :func:`dial_any` and prints
one JSON object per line on stdout:

- ``{"event": "ready", "peer_id", "addresses", "t"}``
- ``{"event": "found", "peer_id", "seq", "addresses", "t"}`` for each new or newer record
- ``{"event": "authenticated", "peer_id", "via": "dialed"|"accepted", "t"}``
- ``{"event": "dial_failed", "peer_id", "error", "t"}``

``t`` is seconds since the process started. The real ``peerline run`` daemon comes later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from node.errors import PeerlineError
from node.identity import Identity, PeerId
from node.lookup import Resolver, dial_any
from node.mdns import MdnsDiscovery, lan_addresses
from node.records import PeerRecord, RecordPublisher
from node.transport import Connection, Transport

STARTED = time.monotonic()


def emit(event: str, **fields: object) -> None:
    fields.update(event=event, t=round(time.monotonic() - STARTED, 3))
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def run(interfaces: list[str] | None, lifetime: float) -> None:
    identity = Identity.generate()
    tasks: set[asyncio.Task[None]] = set()
    transport = Transport(identity)
    await transport.start("0.0.0.0", 0)  # a LAN node listens on the LAN
    port = transport.address[1]

    def accepted(conn: Connection) -> None:
        if conn.peer_id is not None:
            emit("authenticated", peer_id=conn.peer_id.text(), via="accepted")

    transport.on_connection(accepted)
    discovery: MdnsDiscovery
    resolver: Resolver

    async def connect(peer: PeerId) -> None:
        try:
            await dial_any(transport, peer, resolver)
            emit("authenticated", peer_id=peer.text(), via="dialed")
        except PeerlineError as exc:
            emit("dial_failed", peer_id=peer.text(), error=exc.code)

    def found(record: PeerRecord) -> None:
        emit("found", peer_id=record.peer_id.text(), seq=record.seq, addresses=record.addresses)
        resolver.remember(record)
        task = asyncio.get_running_loop().create_task(connect(record.peer_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    discovery = MdnsDiscovery(interfaces=interfaces, on_record=found)
    resolver = Resolver([discovery])
    publisher = RecordPublisher(
        identity, addresses=[(ip, port) for ip in lan_addresses(interfaces)]
    )
    record = publisher.handle_timer(time.time())
    assert record is not None
    try:
        await discovery.start()
        await discovery.advertise(record, port)
        emit("ready", peer_id=identity.peer_id.text(), addresses=record.addresses)
        await asyncio.sleep(lifetime)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await discovery.aclose()
        await transport.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interface", action="append", dest="interfaces")
    parser.add_argument("--lifetime", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(run(args.interfaces, args.lifetime))


if __name__ == "__main__":
    main()
