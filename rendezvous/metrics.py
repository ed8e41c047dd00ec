"""Operations of a rendezvous server: Prometheus metrics (the only ``prometheus_client``
importer) and structured JSON log lines.

Every :class:`Metrics` has its own registry (several servers may live in one test process).
Labels never carry peer ids or addresses: only refusal reason codes, which are a fixed set.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import start_http_server

from node.errors import ConfigError

__all__ = ["JsonLogFormatter", "Metrics"]


class Metrics:
    """Counters and gauges the server updates; :meth:`serve` exposes them over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("peerline_rv_connections", "Connected peers", registry=r)
        self.registrations = Gauge("peerline_rv_registrations", "Live registrations", registry=r)
        self.register_total = Counter(
            "peerline_rv_register", "Accepted registrations and refreshes", registry=r
        )
        self.deposits = Counter("peerline_rv_deposits", "Envelopes stored", registry=r)
        self.drained = Counter("peerline_rv_drained", "Envelopes acked and deleted", registry=r)
        self.expired = Counter("peerline_rv_expired", "Envelopes deleted at expiry", registry=r)
        self.refusals = Counter(
            "peerline_rv_refusals", "Refused requests by reason", ["reason"], registry=r
        )
        self.stored_envelopes = Gauge("peerline_rv_stored_envelopes", "Envelopes held", registry=r)
        self.stored_bytes = Gauge("peerline_rv_stored_bytes", "Envelope bytes held", registry=r)
        self.directory_entries = Gauge(
            "peerline_rv_directory_entries", "Live directory entries", registry=r
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The text exposition format (what the HTTP endpoint serves)."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint in a daemon thread; returns the bound port."""
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for metrics on {host}:{port}: {exc.strerror}",
                code="rendezvous.metrics_listen",
            ) from None
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event`` and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        return json.dumps(data, sort_keys=True)
