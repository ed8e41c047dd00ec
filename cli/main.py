"""``peerline``: the command-line entry point (click group, global options, error handling).

Usage: ``peerline [--home DIR] [--json] COMMAND ...``. Command modules each export click
commands; :data:`COMMANDS` lists them, so a new module adds its commands there.

Exit codes (stable; scripts may rely on them):

- ``0``: success.
- ``1``: environment or remote failure (disk, database, network, a peer misbehaving), or an
  internal error.
- ``2``: bad input or local misuse (unknown command or option, bad peer id, existing identity,
  missing home, wrong passphrase, unreadable passphrase file, empty name). Nothing was changed.
- ``3``: the node is not running (error code ``node.not_running``; commands that need a
  running node).

Every failure prints exactly one line on stderr: ``error: <message>``, or with ``--json`` the
object ``{"error": <code>, "fault": <local|remote|environment>, "message": <text>}``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import click

from cli.demo import demo
from cli.identity_cmds import id_command, init
from cli.node_cmds import NODE_COMMANDS
from cli.output import AppContext, emit, emit_error
from cli.rendezvous_cmds import rendezvous
from node.errors import PeerlineError, UsageError

__all__ = [
    "COMMANDS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "cli",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_RUNNING = 3
_EXIT_BY_CODE = {
    "node.not_running": EXIT_NOT_RUNNING,
    "internal": EXIT_FAILURE,
    "aborted": EXIT_FAILURE,
}

COMMANDS: tuple[click.Command, ...] = (init, id_command, demo, rendezvous, *NODE_COMMANDS)


def peerline_version() -> str:
    """The installed package version (``0+unknown`` when run from a bare source tree)."""
    try:
        return version("peerline")
    except PackageNotFoundError:
        return "0+unknown"


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    "home",
    metavar="DIR",
    default=None,
    help="Node home directory (default: $PEERLINE_HOME, else the platform data directory).",
)
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON object per command.")
@click.option("--version", "show_version", is_flag=True, help="Print the version and exit.")
@click.pass_context
def cli(ctx: click.Context, home: str | None, json_mode: bool, show_version: bool) -> None:
    """peerline: a peer-to-peer, end-to-end encrypted messenger."""
    ctx.obj = AppContext(home_option=home, json=json_mode)
    if show_version:
        current = peerline_version()
        emit(ctx, f"peerline {current}", {"version": current})
        ctx.exit(EXIT_OK)
    if ctx.invoked_subcommand is None:
        raise UsageError("missing command (try `peerline --help`)")


for _command in COMMANDS:
    cli.add_command(_command)


def exit_code_for(err: PeerlineError) -> int:
    """The process exit code for an error (see the module doc)."""
    if err.code in _EXIT_BY_CODE:
        return _EXIT_BY_CODE[err.code]
    return EXIT_BAD_INPUT if err.fault == "local" else EXIT_FAILURE


def _wants_json(args: Sequence[str]) -> bool:
    """``--json`` among the global options (known before click has parsed anything)."""
    takes_value = False
    for arg in args:
        if takes_value:
            takes_value = False
        elif arg == "--json":
            return True
        elif arg == "--home":
            takes_value = True
        elif not arg.startswith("-"):
            return False
    return False


def _as_peerline_error(exc: BaseException) -> PeerlineError:
    if isinstance(exc, PeerlineError):
        return exc
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return UsageError("missing command (try `peerline --help`)")
    if isinstance(exc, click.ClickException):
        return UsageError(exc.format_message())
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt | EOFError):
        return PeerlineError("aborted", code="aborted")
    return PeerlineError(f"internal error: {type(exc).__name__}: {exc}", code="internal")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name="peerline", standalone_mode=False)
    except Exception as exc:  # every failure becomes one line and an exit code
        err = _as_peerline_error(exc)
        emit_error(err, _wants_json(args))
        return exit_code_for(err)
    except KeyboardInterrupt:
        emit_error(_as_peerline_error(KeyboardInterrupt()), _wants_json(args))
        return EXIT_FAILURE
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
