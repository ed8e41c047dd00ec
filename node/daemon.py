"""``peerline run``: settings (``config.toml`` + flags), the home lock, the foreground daemon.

Settings come from ``HOME/config.toml`` and then from command-line flags, which win. Keys
(all optional)::

    listen = "127.0.0.1:4433"          # QUIC address (HOST:PORT; port 0 = any free port)
    mdns = true                        # LAN discovery
    mdns_interfaces = ["192.168.1.7"]  # where mDNS multicasts (default: every interface)
    dht = false
    dht_listen = "0.0.0.0:4434"
    bootstrap = ["203.0.113.5:4434"]
    rendezvous = ["pl...@rdv.example.org:4433"]

The daemon holds an exclusive lock on ``HOME/node.lock`` (one node per home), serves the
control socket, reports events through ``on_event`` (the first is
``{"event": "ready", "peer_id", "listen"}``) and stops gracefully on SIGINT or SIGTERM.
Rendezvous clients come from the caller's ``mailboxes`` factory (the ``node`` package does not
import ``rendezvous``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from node.control import ControlServer
from node.errors import ConfigError, NodeRunningError, StorageError
from node.home import CONFIG_FILE, load_identity, read_public_identity
from node.messaging import parse_hostport
from node.node import MailboxFactory, Node, NodeConfig

__all__ = ["LOCK_FILE", "load_config", "run_daemon"]

LOCK_FILE = "node.lock"
_KEYS = {
    "listen",
    "mdns",
    "mdns_interfaces",
    "dht",
    "dht_listen",
    "bootstrap",
    "rendezvous",
}


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings", code="config.invalid")
    return tuple(value)


def _flag(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false", code="config.invalid")
    return value


def _address(value: object, key: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be HOST:PORT", code="config.invalid")
    host, sep, port = value.rpartition(":")
    if sep and port == "0" and host:
        return host.strip("[]"), 0
    return parse_hostport(value)


def load_config(home: Path, overrides: Mapping[str, Any]) -> NodeConfig:
    """``config.toml`` merged with ``overrides`` (flags; ``None`` values are ignored)."""
    settings: dict[str, Any] = {}
    path = home / CONFIG_FILE
    if path.exists():
        try:
            settings.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"{path}: {exc}", code="config.invalid") from None
    settings.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(settings) - _KEYS
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    config = NodeConfig()
    if "listen" in settings:
        config = replace(config, listen=_address(settings["listen"], "listen"))
    if "mdns" in settings:
        config = replace(config, mdns=_flag(settings["mdns"], "mdns"))
    if "mdns_interfaces" in settings:
        interfaces = _strings(settings["mdns_interfaces"], "mdns_interfaces")
        config = replace(config, mdns_interfaces=interfaces)
    if "dht" in settings:
        config = replace(config, dht=_flag(settings["dht"], "dht"))
    if "dht_listen" in settings:
        config = replace(config, dht_listen=_address(settings["dht_listen"], "dht_listen"))
    if "bootstrap" in settings:
        peers = tuple(_address(a, "bootstrap") for a in _strings(settings["bootstrap"], "x"))
        config = replace(config, bootstrap=peers)
    if "rendezvous" in settings:
        config = replace(config, rendezvous=_strings(settings["rendezvous"], "rendezvous"))
    return config


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot open the node lock: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeRunningError("a node is already running on this home") from None
        yield
    finally:
        os.close(fd)


async def run_daemon(
    home: Path,
    config: NodeConfig,
    *,
    passphrase: bytes | None,
    on_event: Callable[[dict[str, Any]], None],
    mailboxes: MailboxFactory | None = None,
) -> None:
    """Run the node until SIGINT/SIGTERM; ``on_event`` sees ``ready`` and every later event."""
    identity = await load_identity(home, passphrase)
    public = await read_public_identity(home)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with _home_lock(home):
        async with Node.open(home, identity, config, public.name, mailboxes) as node:
            server = ControlServer(node, home)
            await server.start()
            queue = node.subscribe()
            host, port = node.transport.address
            on_event({"event": "ready", "peer_id": node.peer_id.text(), "listen": f"{host}:{port}"})
            helpers = [asyncio.create_task(_print_events(queue, on_event))]
            if await node.contacts.visibility() == "open":
                helpers.append(asyncio.create_task(_publish(node)))
            try:
                await stop.wait()
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                await server.aclose()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)


async def _print_events(
    queue: asyncio.Queue[dict[str, Any] | None], on_event: Callable[[dict[str, Any]], None]
) -> None:
    while (event := await queue.get()) is not None:
        on_event(event)


async def _publish(node: Node) -> None:
    """List an open account once the rendezvous connections had a moment to come up."""
    await asyncio.sleep(1.0)
    await node.publish_visibility()
