"""The ``peerline`` command: parse, call the public API, print (text or ``--json``)."""

from __future__ import annotations

from cli.main import cli, main

__all__ = ["cli", "main"]
