"""``peerline rendezvous`` commands (in-process), text forms, backup and restore."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cli.main import main
from node.errors import UsageError
from node.identity import Identity
from rendezvous import admin, db
from rendezvous.process import ServeOptions, serve
from rendezvous.protocol import (
    RendezvousAddress,
    invite_token_text,
    parse_invite_token,
)


def started(directory: Path) -> dict[str, object]:
    """Run the server until ready, then stop it (what `serve` leaves on disk)."""

    async def once() -> dict[str, object]:
        stop = asyncio.Event()
        info: dict[str, object] = {}

        def ready(got: dict[str, object]) -> None:
            info.update(got)
            stop.set()

        await serve(ServeOptions(directory, ("127.0.0.1", 0)), ready, stop)
        return info

    return asyncio.run(once())


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--json", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_address_text_forms() -> None:
    peer = Identity.generate().peer_id
    typo = peer.text()[:-1] + ("b" if peer.text().endswith("a") else "a")
    for host in ("127.0.0.1", "::1", "2001:db8::7"):
        address = RendezvousAddress(peer, host, 4433)
        assert RendezvousAddress.parse(address.text()) == address
    assert "[::1]:4433" in RendezvousAddress(peer, "::1", 4433).text()
    for bad in (
        "",
        "nonsense",
        f"{peer.text()}@host.example:1",
        f"{peer.text()}@1.2.3.4:0",
        f"{peer.text()}@1.2.3.4",
        f"{typo}@1.2.3.4:5",
    ):
        with pytest.raises(UsageError):
            RendezvousAddress.parse(bad)
    token = bytes(range(16))
    assert parse_invite_token(invite_token_text(token).upper()) == token
    for bad in ("rvi-", "abc", "rvi-!!!!", "rvi-" + "a" * 200):
        with pytest.raises(UsageError):
            parse_invite_token(bad)


def test_address_and_admin_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "rv"
    code, _, err = cli(capsys, "rendezvous", "address", "--data", str(data))
    assert code == 2 and len(err.splitlines()) == 1
    code, _, err = cli(capsys, "rendezvous", "admin", "--data", str(data), "list")
    assert code == 2 and json.loads(err)["error"] == "rendezvous.no_server"
    info = started(data)
    code, out, _ = cli(capsys, "rendezvous", "address", "--data", str(data))
    assert code == 0 and json.loads(out)["address"] == info["address"]
    code, out, _ = cli(
        capsys,
        "rendezvous",
        "admin",
        "--data",
        str(data),
        "invite",
        "create",
        "--uses",
        "2",
        "--expires",
        "12h",
    )
    assert code == 0 and json.loads(out)["invite"].startswith("rvi-")
    assert json.loads(out)["expires_in"] == 12 * 3600
    code, _, err = cli(
        capsys, "rendezvous", "admin", "--data", str(data), "invite", "create", "--expires", "soon"
    )
    assert code == 2 and json.loads(err)["error"] == "usage.invalid"
    peer = Identity.generate().peer_id.text()
    for action in ("allow", "ban"):
        code, out, _ = cli(capsys, "rendezvous", "admin", "--data", str(data), action, peer)
        assert code == 0 and json.loads(out) == {"action": action, "peer_id": peer}
    code, _, err = cli(capsys, "rendezvous", "admin", "--data", str(data), "ban", peer[:-2])
    assert code == 2 and "identity" in json.loads(err)["error"]
    code, out, _ = cli(capsys, "rendezvous", "admin", "--data", str(data), "list")
    listing = json.loads(out)
    assert listing["allowed"] == [peer] and listing["banned"] == [peer]
    assert listing["mode"] == "open" and len(listing["invites"]) == 1


def test_backup_and_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "rv"
    started(data)
    peer = Identity.generate().peer_id
    asyncio.run(admin.ban(data, peer))
    backup = tmp_path / "backup.db"
    code, _, _ = cli(capsys, "rendezvous", "backup", "--data", str(data), str(backup))
    assert code == 0
    code, _, err = cli(capsys, "rendezvous", "backup", "--data", str(data), str(backup))
    assert code == 2 and json.loads(err)["error"] == "storage.exists"
    asyncio.run(admin.unban(data, peer))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite" * 100)
    code, _, err = cli(capsys, "rendezvous", "restore", "--data", str(data), str(garbage))
    assert code == 1 and json.loads(err)["error"] == "rendezvous.bad_backup"
    assert asyncio.run(admin.listing(data)).banned == []  # untouched
    with db.serve_lock(data):  # a running server holds this lock
        code, _, err = cli(capsys, "rendezvous", "restore", "--data", str(data), str(backup))
        assert code == 2 and json.loads(err)["error"] == "rendezvous.running"
    code, _, _ = cli(capsys, "rendezvous", "restore", "--data", str(data), str(backup))
    assert code == 0
    assert asyncio.run(admin.listing(data)).banned == [peer.text()]


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:4433", "[::]:4433", "rdv.example.org:4433", "127.0.0.1", "127.0.0.1:70000"]
)
def test_serve_refuses_bad_listen_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    code, out, err = cli(capsys, "rendezvous", "serve", "--data", str(tmp_path), "--listen", listen)
    assert code == 2 and out == "" and json.loads(err)["error"] == "usage.invalid"


def test_address_before_the_first_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "rv"
    code, out, _ = cli(
        capsys, "rendezvous", "address", "--data", str(data), "--listen", "127.0.0.1:4433"
    )
    assert code == 0
    planned = RendezvousAddress.parse(json.loads(out)["address"])
    assert (planned.host, planned.port) == ("127.0.0.1", 4433)
    code, _, err = cli(
        capsys, "rendezvous", "address", "--data", str(data), "--listen", "0.0.0.0:1"
    )
    assert code == 2 and json.loads(err)["error"] == "usage.invalid"
    info = started(data)  # the same identity serves
    assert RendezvousAddress.parse(str(info["address"])).peer_id == planned.peer_id
