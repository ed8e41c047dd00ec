"""``peerline demo``: a self-contained tour until messaging exists.

Creates two identities (alice and bob) in a temporary directory, shows both and the safety
number they would compare, then removes the directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from cli.output import emit, run
from node.home import PublicIdentity, create_identity
from node.identity import fingerprint, safety_number

__all__ = ["demo"]

_NAMES = ("alice", "bob")


async def _create_pair(root: Path) -> list[PublicIdentity]:
    return [await create_identity(root / name, name, None) for name in _NAMES]


@click.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Create two throw-away identities and show their safety number."""
    with tempfile.TemporaryDirectory(prefix="peerline-demo-") as tmp:
        peers = run(_create_pair(Path(tmp)))
    number = safety_number(peers[0].peer_id, peers[1].peer_id)
    rows: list[dict[str, Any]] = [
        {"name": p.name, "peer_id": p.peer_id.text(), "fingerprint": fingerprint(p.peer_id)}
        for p in peers
    ]
    lines = ["two fresh identities (in a temporary directory, now removed):"]
    for row in rows:
        lines += [
            f"  {row['name']:<6} {row['peer_id']}",
            f"         fingerprint {row['fingerprint']}",
        ]
    groups = number.split()
    lines += [
        "safety number (alice and bob compare it out of band; both see the same):",
        "  " + " ".join(groups[:6]),
        "  " + " ".join(groups[6:]),
        "messaging between them comes with `peerline run` and `peerline send` (later issues)",
    ]
    emit(ctx, "\n".join(lines), {"peers": rows, "safety_number": number})
