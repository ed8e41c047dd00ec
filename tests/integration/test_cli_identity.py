"""The CLI shell driven for real: init, id, demo, --version, and every bad input.

Most cases call ``cli.main.main(argv)`` in-process (fast, same error handling as the console
script); a few run the installed ``peerline`` script and ``python -m cli`` as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import node.home
from cli.main import main
from node.errors import StorageError
from node.home import DB_FILE, KEY_FILE, resolve_home
from node.identity import PeerId, safety_number

pytestmark = pytest.mark.integration

_REPO = Path(__file__).resolve().parents[2]
Snapshot = dict[str, tuple[int, int, int]]


@pytest.fixture(autouse=True)
def _fast_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERLINE_ARGON2", "fast")
    monkeypatch.delenv("PEERLINE_HOME", raising=False)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "--json", *args)
    assert (code, err) == (0, ""), err
    assert len(out.splitlines()) == 1
    obj = json.loads(out)
    assert isinstance(obj, dict)
    return obj


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root`` with mode, size and mtime: equal snapshots = nothing changed."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns)
        for p in [root, *root.rglob("*")]
    }


def write_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def alice(home: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return run_json(capsys, "--home", str(home), "init", "--name", "alice")


def test_init_then_id_text_and_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--home", str(home), "init", "--name", " alice ")
    assert (code, err) == (0, "")
    assert "peer id:" in out and "NOT encrypted" in out
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in home.iterdir()) == [KEY_FILE, DB_FILE]
    shown = run_json(capsys, "--home", str(home), "id")
    assert shown["name"] == "alice" and shown["key_encrypted"] is False
    PeerId.parse(shown["peer_id"])
    assert set(shown) == {"peer_id", "name", "fingerprint", "created_at", "key_encrypted"}
    code, out, err = run_cli(capsys, "--home", str(home), "id")
    assert code == 0 and shown["peer_id"] in out and shown["fingerprint"] in out


def test_init_json_shape(home: Path, alice: dict[str, Any]) -> None:
    assert set(alice) == {"peer_id", "name", "fingerprint", "created_at", "home", "key_encrypted"}
    assert alice["home"] == str(home) and alice["name"] == "alice"


def test_passphrase_protects_the_key_but_not_the_public_id(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_file(tmp_path / "pw", b"correct horse\n")
    made = run_json(capsys, "--home", str(home), "init", "--name", "bob", "--passphrase-file", good)
    assert made["key_encrypted"] is True
    assert b"correct horse" not in (home / KEY_FILE).read_bytes()
    shown = run_json(capsys, "--home", str(home), "id")
    assert shown["peer_id"] == made["peer_id"] and shown["key_encrypted"] is True
    unlocked = run_json(capsys, "--home", str(home), "id", "--passphrase-file", good)
    assert unlocked["key_unlocked"] is True


def test_id_with_peer_shows_the_shared_safety_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = run_json(capsys, "--home", str(tmp_path / "a"), "init", "--name", "a")
    b = run_json(capsys, "--home", str(tmp_path / "b"), "init", "--name", "b")
    a_view = run_json(capsys, "--home", str(tmp_path / "a"), "id", b["peer_id"].upper())
    b_view = run_json(capsys, "--home", str(tmp_path / "b"), "id", a["peer_id"])
    assert a_view["safety_number"] == b_view["safety_number"]
    assert a_view["safety_number"] == safety_number(
        PeerId.parse(a["peer_id"]), PeerId.parse(b["peer_id"])
    )
    assert a_view["peer"] == {"peer_id": b["peer_id"], "fingerprint": b["fingerprint"]}


def test_home_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERLINE_HOME", str(tmp_path / "env"))
    assert resolve_home(str(tmp_path / "flag")) == tmp_path / "flag"
    assert resolve_home(None) == tmp_path / "env"
    monkeypatch.delenv("PEERLINE_HOME")
    assert resolve_home(None).name.lower() == "peerline"


def test_env_home_is_used_by_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PEERLINE_HOME", str(tmp_path / "env"))
    run_json(capsys, "init", "--name", "envy")
    assert (tmp_path / "env" / KEY_FILE).exists()


def _bad_inputs(home: Path, tmp_path: Path, peer_id: str) -> list[tuple[list[str], str]]:
    empty = write_file(tmp_path / "empty", b"\n")
    wrong = write_file(tmp_path / "wrong", b"wrong\n")
    typo = peer_id[:-1] + ("a" if peer_id[-1] != "a" else "b")
    h = ["--home", str(home)]
    return [
        (["frob"], "usage.invalid"),
        ([], "usage.invalid"),
        (["--bogus"], "usage.invalid"),
        ([*h, "init", "--bogus"], "usage.invalid"),
        ([*h, "init"], "usage.invalid"),
        ([*h, "id", "plnotapeerid"], "identity.bad_peer_id"),
        ([*h, "id", typo], "identity.bad_checksum"),
        ([*h, "init", "--name", "again"], "identity.exists"),
        (["--home", str(tmp_path / "nowhere"), "id"], "home.no_identity"),
        ([*h, "id", "--passphrase-file", wrong], "identity.wrong_passphrase"),
        ([*h, "id", "--passphrase-file", str(tmp_path / "missing")], "usage.passphrase_file"),
        ([*h, "id", "--passphrase-file", empty], "usage.passphrase_file"),
        (["--home", str(tmp_path / "new"), "init", "--name", "   "], "identity.bad_name"),
        (["--home", str(tmp_path / "new"), "init", "--name", "a\x07b"], "identity.bad_name"),
        (["--home", str(tmp_path / "new"), "init", "--name", "x" * 65], "identity.bad_name"),
    ]


@pytest.mark.parametrize("json_mode", [False, True])
def test_every_bad_input_is_one_line_exit_2_and_changes_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], json_mode: bool
) -> None:
    pw = write_file(tmp_path / "pw", b"secret")
    made = run_json(capsys, "--home", str(home), "init", "--name", "al", "--passphrase-file", pw)
    cases = _bad_inputs(home, tmp_path, made["peer_id"])
    before = snapshot(tmp_path)
    for args, code in cases:
        argv = ["--json", *args] if json_mode else args
        exit_code, out, err = run_cli(capsys, *argv)
        assert (exit_code, out) == (2, ""), (args, out, err)
        assert len(err.splitlines()) == 1 and err.endswith("\n"), (args, err)
        if json_mode:
            shown = json.loads(err)
            assert (shown["error"], shown["fault"]) == (code, "local"), args
            assert set(shown) == {"error", "fault", "message"}
        else:
            assert err.startswith("error: "), err
        assert snapshot(tmp_path) == before, args


def test_failed_init_leaves_nothing_behind(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path, data: bytes) -> None:
        raise StorageError("simulated write failure", code="home.io")

    monkeypatch.setattr(node.home, "_write_new_file", broken)
    code, out, err = run_cli(
        capsys, "--json", "--home", str(home / "deep" / "er"), "init", "--name", "x"
    )
    assert (code, out) == (1, "")
    assert json.loads(err)["error"] == "home.io"
    assert not home.exists()
    home.mkdir()
    code, _, _ = run_cli(capsys, "--home", str(home), "init", "--name", "x")
    assert code == 1 and list(home.iterdir()) == []


def test_version_and_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, "--version")["version"]
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("peerline ")
    shown = run_json(capsys, "demo")
    assert [p["name"] for p in shown["peers"]] == ["alice", "bob"]
    ids = [PeerId.parse(p["peer_id"]) for p in shown["peers"]]
    assert shown["safety_number"] == safety_number(*ids)
    code, out, _ = run_cli(capsys, "demo")
    assert code == 0 and "safety number" in out


def _subprocess(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PEERLINE_ARGON2": "fast", "PYTHONPATH": str(_REPO)}
    return subprocess.run(
        [*args, "--home", str(home), "--json", "init", "--name", "proc"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=_REPO,
    )


def test_console_script_and_python_m_cli(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "peerline"
    for argv in ([str(script)], [sys.executable, "-m", "cli"]):
        home = tmp_path / argv[-1].replace("/", "_")
        done = _subprocess(argv, home)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        assert json.loads(done.stdout)["name"] == "proc"
        again = _subprocess(argv, home)
        assert again.returncode == 2 and again.stdout == ""
        assert json.loads(again.stderr)["error"] == "identity.exists"


def test_relative_home_is_resolved_against_the_working_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    created = run_json(capsys, "--home", "rel", "init", "--name", "rel")
    assert Path(created["home"]) == tmp_path / "rel"
    assert run_json(capsys, "--home", "rel", "id")["peer_id"] == created["peer_id"]
