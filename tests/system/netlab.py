"""A throw-away LAN made of Linux network namespaces (needs root and ``ip``).

``NetLab`` creates one namespace per host plus a namespace holding a bridge, joins each host to
the bridge with a veth pair and gives it an address in a private subnet that exists *only*
inside these namespaces (default ``10.213.0.0/24``). Nothing is added to the root namespace:
there is no route out, so nothing a test sends can leave the lab. ``close()`` (also on
``__exit__``) kills the processes it started and deletes every namespace it created, even
after a failure; namespace names carry the creating pid so parallel labs never collide.

Built to be extended: a later network lab puts a UDP impairment proxy between hosts (for
example a host whose process forwards between two bridges); ``Host.exec_argv`` and
``NetLab.spawn`` are the building blocks.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Host", "NetLab", "run_ip"]


def run_ip(*args: str) -> str:
    """Run ``ip <args>``; raise with its stderr on failure."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    """One namespace on the lab LAN."""

    name: str
    namespace: str
    ip: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


class NetLab:
    """``with NetLab() as lab: a = lab.add_host("a")`` ... every namespace is gone afterwards."""

    def __init__(self, *, subnet: str = "10.213.0", prefix_len: int = 24, tag: str = "pl") -> None:
        self.subnet = subnet
        self.prefix_len = prefix_len
        self.tag = f"{tag}{os.getpid()}"
        self.bridge_ns = f"{self.tag}-br"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []

    def __enter__(self) -> NetLab:
        try:
            self._add_namespace(self.bridge_ns)
            run_ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            run_ip(
                "-n", self.bridge_ns, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0"
            )
            run_ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        run_ip("netns", "add", name)
        self._namespaces.append(name)
        run_ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A namespace with ``eth0`` on the bridge and the next free address."""
        index = len(self.hosts) + 1
        namespace = f"{self.tag}-{name}"
        host = Host(name, namespace, f"{self.subnet}.{index}")
        self._add_namespace(namespace)
        veth = f"v{index}"
        run_ip(
            "-n",
            self.bridge_ns,
            "link",
            "add",
            veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            namespace,
        )
        run_ip("-n", self.bridge_ns, "link", "set", veth, "master", "br0", "up")
        run_ip("-n", namespace, "addr", "add", f"{host.ip}/{self.prefix_len}", "dev", "eth0")
        run_ip("-n", namespace, "link", "set", "eth0", "up")
        self.hosts.append(host)
        return host

    def spawn(self, host: Host, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start a process inside ``host`` (stdout piped as text lines, stderr inherited)."""
        process = subprocess.Popen(
            host.exec_argv(argv),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        host.processes.append(process)
        return process

    def spawn_python(self, host: Host, module: str, *args: str) -> subprocess.Popen[str]:
        return self.spawn(host, [sys.executable, "-m", module, *args])

    def close(self) -> None:
        for host in self.hosts:
            for process in host.processes:
                if process.poll() is None:
                    process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
                if process.stdout is not None:
                    process.stdout.close()
        for namespace in reversed(self._namespaces):
            with contextlib.suppress(RuntimeError):
                run_ip("netns", "del", namespace)
        self._namespaces.clear()

    @staticmethod
    def leftovers(tag: str = "pl") -> list[str]:
        """Namespaces named like a lab's (for a test that checks cleanup)."""
        names = [line.split()[0] for line in run_ip("netns", "list").splitlines() if line.strip()]
        return [name for name in names if name.startswith(tag) and "-" in name]
