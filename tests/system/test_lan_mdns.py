"""A LAN with no internet: three namespaces on a bridge, zero configuration, mDNS only.

Each node process (``tests.system.mdns_node``) uses default discovery: mDNS on every interface
of its namespace, no rendezvous, no DHT bootstrap. Every node must find *and authenticate*
(QUIC dial with the PeerId pinned) the other two within 5 seconds of being started. The subnet
exists only inside the namespaces the test creates; they are deleted even on failure.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from tests.system.netlab import NetLab, run_ip

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
NODES = 3
DEADLINE = 5.0


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as lab:
        yield lab
    assert not [n for n in NetLab.leftovers(lab.tag) if n.startswith(lab.tag)]


def pump(
    name: str, process: Popen[str], lines: queue.Queue[tuple[str, float, dict[str, object]]]
) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put((name, time.monotonic(), json.loads(line)))


def test_three_nodes_on_a_lan_find_and_authenticate_each_other(lab: NetLab) -> None:
    hosts = [lab.add_host(f"n{i}") for i in range(NODES)]
    for host in hosts:  # no way out of the lab: only the lab subnet is routable
        routes = run_ip("-n", host.namespace, "route", "show").splitlines()
        assert routes and all(r.startswith(f"{lab.subnet}.0/24 ") for r in routes), routes
    lines: queue.Queue[tuple[str, float, dict[str, object]]] = queue.Queue()
    started = time.monotonic()
    for host in hosts:
        process = lab.spawn_python(host, "tests.system.mdns_node", "--lifetime", "12")
        threading.Thread(target=pump, args=(host.name, process, lines), daemon=True).start()
    ids: dict[str, str] = {}
    authenticated: dict[str, set[str]] = {host.name: set() for host in hosts}
    found_at: dict[str, float] = {}

    def done() -> bool:
        complete = all(len(peers) == NODES - 1 for peers in authenticated.values())
        return complete and len(ids) == NODES

    while not done() and time.monotonic() - started < DEADLINE + 10:
        try:
            name, at, event = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if event["event"] == "ready":
            ids[name] = str(event["peer_id"])
            addresses = event["addresses"]
            assert isinstance(addresses, list)
            assert [a[0] for a in addresses] == [h.ip for h in hosts if h.name == name]
        elif event["event"] == "authenticated":
            authenticated[name].add(str(event["peer_id"]))
            if len(authenticated[name]) == NODES - 1:
                found_at[name] = at - started
    assert set(ids) == {h.name for h in hosts}
    for name, peers in authenticated.items():
        assert peers == {ids[other] for other in ids if other != name}, name
    slowest = max(found_at.values())
    assert slowest < DEADLINE, f"slowest node needed {slowest:.2f} s"
