"""Identity commands: ``peerline init`` and ``peerline id``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli.output import app, emit, run
from node.errors import StorageError, UsageError
from node.home import PublicIdentity, create_identity, key_is_sealed, load_identity
from node.home import read_public_identity as read_public
from node.identity import PeerId, fingerprint, safety_number

__all__ = ["id_command", "init", "read_passphrase_file"]

_PASSPHRASE_OPTION = click.option(
    "--passphrase-file",
    "passphrase_file",
    metavar="FILE",
    default=None,
    help="Read the key passphrase from FILE (`-` = stdin); one trailing newline is ignored.",
)


def read_passphrase_file(path: str) -> bytes:
    """The passphrase in ``path`` (``-`` = stdin) without one trailing newline; never empty."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read passphrase file {path}: {exc.strerror or exc}",
            code="usage.passphrase_file",
        ) from None
    passphrase = data.removesuffix(b"\n").removesuffix(b"\r")
    if not passphrase:
        raise UsageError(f"passphrase file {path} is empty", code="usage.passphrase_file")
    return passphrase


def _public_fields(public: PublicIdentity) -> dict[str, Any]:
    return {
        "peer_id": public.peer_id.text(),
        "name": public.name,
        "fingerprint": fingerprint(public.peer_id),
        "created_at": public.created_at,
    }


def _grouped(number: str, per_line: int = 6) -> str:
    """A safety number on lines of ``per_line`` groups, indented for the text output."""
    groups = number.split()
    lines = [" ".join(groups[i : i + per_line]) for i in range(0, len(groups), per_line)]
    return "\n               ".join(lines)


@click.command()
@click.option("--name", required=True, help="Your display name (shown to your contacts).")
@_PASSPHRASE_OPTION
@click.pass_context
def init(ctx: click.Context, name: str, passphrase_file: str | None) -> None:
    """Create this node's identity (refuses to overwrite an existing one)."""
    home = app(ctx).home
    passphrase = None if passphrase_file is None else read_passphrase_file(passphrase_file)
    public = run(create_identity(home, name, passphrase))
    obj = {**_public_fields(public), "home": str(home), "key_encrypted": passphrase is not None}
    protection = "encrypted with your passphrase" if passphrase else "NOT encrypted (no passphrase)"
    text = (
        f"created identity in {home}\n"
        f"name:          {public.name}\n"
        f"peer id:       {public.peer_id.text()}\n"
        f"fingerprint:   {obj['fingerprint']}\n"
        f"secret key:    {protection}"
    )
    emit(ctx, text, obj)


@click.command("id")
@click.argument("peer", required=False)
@_PASSPHRASE_OPTION
@click.pass_context
def id_command(ctx: click.Context, peer: str | None, passphrase_file: str | None) -> None:
    """Show our peer id and fingerprint; with PEER also the safety number we share with it.

    With --passphrase-file the secret key is also unlocked, to check the passphrase.
    """
    home = app(ctx).home
    other = None if peer is None else PeerId.parse(peer)
    passphrase = None if passphrase_file is None else read_passphrase_file(passphrase_file)
    sealed = key_is_sealed(home)
    # Unlock before opening the database: a wrong passphrase must leave the home untouched.
    unlocked = None if passphrase is None else run(load_identity(home, passphrase))
    public = run(read_public(home))
    if unlocked is not None and unlocked.peer_id != public.peer_id:
        raise StorageError(
            "the key file does not match the identity in the database", code="identity.mismatch"
        )
    obj: dict[str, Any] = {**_public_fields(public), "key_encrypted": sealed}
    lines = [
        f"name:          {public.name}",
        f"peer id:       {public.peer_id.text()}",
        f"fingerprint:   {obj['fingerprint']}",
        f"secret key:    {'encrypted' if sealed else 'not encrypted'}",
    ]
    if unlocked is not None:
        obj["key_unlocked"] = True
        lines.append("passphrase:    ok (key unlocked)")
    if other is not None:
        number = safety_number(public.peer_id, other)
        obj["peer"] = {"peer_id": other.text(), "fingerprint": fingerprint(other)}
        obj["safety_number"] = number
        lines += [
            f"peer:          {other.text()}",
            f"its print:     {fingerprint(other)}",
            f"safety number: {_grouped(number)}",
        ]
    emit(ctx, "\n".join(lines), obj)
