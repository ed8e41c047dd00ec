"""Output of the CLI: one helper for text vs ``--json``, one for errors, one for coroutines.

Contract: with ``--json`` a successful command writes exactly one JSON object (one line) on
stdout; any failure writes exactly one line on stderr (the error's ``to_dict()`` as JSON with
``--json``, ``error: <message>`` otherwise).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from node.errors import PeerlineError
from node.home import resolve_home

__all__ = ["AppContext", "app", "emit", "emit_error", "run"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AppContext:
    """Global options, stored in ``click.Context.obj`` by the group."""

    home_option: str | None
    json: bool

    @property
    def home(self) -> Path:
        return resolve_home(self.home_option)


def app(ctx: click.Context) -> AppContext:
    """The :class:`AppContext` of the running command."""
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


def emit(ctx: click.Context, text: str, obj: dict[str, Any]) -> None:
    """Print ``text`` for humans, or ``obj`` as one JSON line with ``--json``."""
    if app(ctx).json:
        click.echo(json.dumps(obj, sort_keys=True))
    else:
        click.echo(text)


def emit_error(err: PeerlineError, json_mode: bool) -> None:
    """Write ``err`` as exactly one line on stderr."""
    if json_mode:
        line = json.dumps(err.to_dict(), sort_keys=True)
    else:
        line = "error: " + " ".join(err.message.split())
    print(line, file=sys.stderr, flush=True)


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a command's coroutine on a fresh event loop."""
    return asyncio.run(coro)
