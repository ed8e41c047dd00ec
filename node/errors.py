"""The one error hierarchy of peerline.

Every error says *whose fault it is* and carries a stable, machine-readable ``code``:

- ``fault == "local"``: the caller misused an API or the user gave bad input (fix the call).
- ``fault == "remote"``: a peer or a file sent something invalid (drop the connection/input).
- ``fault == "environment"``: the machine failed us (disk full, network unreachable, timeout).

Codes are dotted strings (``"wire.frame_too_large"``) and are part of the protocol contract:
they are listed in README's Protocol section and never reused for a different meaning. A class
has a default code; a raise site may pass a more specific code of the same family.

Foreign exceptions (nacl, msgpack, aioquic, aiosqlite, zeroconf, kademlia) are translated into
these at the one module that calls the library. Messages never contain secret material.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Fault = Literal["local", "remote", "environment"]

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConnectionClosedError",
    "CryptoError",
    "DecryptionError",
    "DialError",
    "DiscoveryError",
    "Fault",
    "FeedError",
    "IdentityExistsError",
    "InvalidKeyError",
    "InvalidRecordError",
    "InvalidSignatureError",
    "LimitExceededError",
    "LocalProtocolError",
    "MerkleProofError",
    "NodeNotRunningError",
    "NodeRunningError",
    "NotFoundError",
    "OperationTimeoutError",
    "PeerlineError",
    "RefusedError",
    "RemoteProtocolError",
    "ReplayError",
    "RequestFailedError",
    "StorageConstraintError",
    "StorageError",
    "StorageFullError",
    "UsageError",
    "WrongPassphraseError",
]


class PeerlineError(Exception):
    """Root of every error peerline raises on purpose.

    ``code`` is stable across releases; ``fault`` says who must act. ``str(err)`` is a one-line,
    human-readable message with no secrets in it.
    """

    default_code: ClassVar[str] = "error"
    fault: ClassVar[Fault] = "local"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def to_dict(self) -> dict[str, str]:
        """The JSON shape errors take on the CLI (``--json``) and the control socket."""
        return {"error": self.code, "fault": self.fault, "message": self.message}


class LocalProtocolError(PeerlineError):
    """The local caller used an API or a state machine wrongly (a bug or bad user input)."""

    default_code = "local.misuse"
    fault: ClassVar[Fault] = "local"


class UsageError(LocalProtocolError):
    """Bad user input on the CLI or control socket: reported in one line, nothing changed."""

    default_code = "usage.invalid"


class NotFoundError(LocalProtocolError):
    """A named thing (peer, alias, conversation, group) does not exist."""

    default_code = "usage.not_found"


class IdentityExistsError(LocalProtocolError):
    """``init`` refuses to overwrite an existing identity."""

    default_code = "identity.exists"


class ConfigError(LocalProtocolError):
    """A configuration file or option is invalid."""

    default_code = "config.invalid"


class RemoteProtocolError(PeerlineError):
    """A peer (or a file written by one) sent bytes that violate the protocol.

    The right reaction is to drop that input and, on a connection, close it with this code.
    """

    default_code = "remote.malformed"
    fault: ClassVar[Fault] = "remote"


class AuthenticationError(RemoteProtocolError):
    """A peer failed to prove the identity it claims (pin mismatch, bad proof, replay)."""

    default_code = "auth.failed"


class InvalidRecordError(RemoteProtocolError):
    """A signed record (peer record, DHT value) is forged, expired, stale, oversized or malformed.

    Codes: ``record.malformed``, ``record.too_large``, ``record.bad_signature``,
    ``record.expired``, ``record.wrong_peer``, ``record.wrong_key``, ``record.stale``.
    """

    default_code = "record.invalid"


class LimitExceededError(RemoteProtocolError):
    """A peer exceeded a configured limit (frame size, streams, rate, quota)."""

    default_code = "limit.exceeded"


class FeedError(RemoteProtocolError):
    """A feed chunk or head is invalid: refuse it and flag the peer that sent it.

    Codes: ``feed.wrong_feed``, ``feed.bad_shape``, ``feed.bad_position``, ``feed.broken_chain``,
    ``feed.bad_root``, ``feed.bad_signature``, ``feed.bad_proof``.
    """

    default_code = "feed.invalid"


class MerkleProofError(RemoteProtocolError):
    """A Merkle inclusion proof does not lead to the root it claims."""

    default_code = "merkle.bad_proof"


class CryptoError(PeerlineError):
    """Base of the cryptographic failures. Usually caused by invalid input from outside."""

    default_code = "crypto.failed"
    fault: ClassVar[Fault] = "remote"


class InvalidSignatureError(CryptoError):
    """A signature does not verify for this key, message and domain."""

    default_code = "crypto.bad_signature"


class DecryptionError(CryptoError):
    """An AEAD ciphertext failed authentication (tampered, wrong key, wrong nonce or AD)."""

    default_code = "crypto.decrypt_failed"


class ReplayError(CryptoError):
    """A message (or handshake) was already processed, or its key is gone: drop it."""

    default_code = "crypto.replay"


class InvalidKeyError(CryptoError):
    """A public key is malformed or weak (wrong length, low-order X25519 point)."""

    default_code = "crypto.bad_key"


class WrongPassphraseError(CryptoError):
    """The passphrase does not open the key file."""

    default_code = "identity.wrong_passphrase"
    fault: ClassVar[Fault] = "local"


class StorageError(PeerlineError):
    """The local database failed (I/O error, corruption, locked)."""

    default_code = "storage.failed"
    fault: ClassVar[Fault] = "environment"


class StorageFullError(StorageError):
    """The disk holding the store is full: the write was not made, nothing was lost."""

    default_code = "storage.full"


class StorageConstraintError(StorageError):
    """A write broke a constraint (unique, foreign key, check): the caller's data was wrong."""

    default_code = "storage.constraint"
    fault = "local"


class DialError(PeerlineError):
    """A peer could not be reached (no address, unreachable, refused, handshake timeout)."""

    default_code = "dial.failed"
    fault: ClassVar[Fault] = "environment"


class DiscoveryError(PeerlineError):
    """Local peer discovery (mDNS, DHT socket) could not start or announce on this host."""

    default_code = "discovery.failed"
    fault: ClassVar[Fault] = "environment"


class OperationTimeoutError(PeerlineError):
    """A network operation did not complete in its time budget."""

    default_code = "timeout"
    fault: ClassVar[Fault] = "environment"


class ConnectionClosedError(PeerlineError):
    """The connection closed (by us, the peer or the network) before the operation finished.

    The code is ``transport.closed``; the message carries the close reason the peer gave.
    """

    default_code = "transport.closed"
    fault: ClassVar[Fault] = "environment"


class RequestFailedError(PeerlineError):
    """The peer answered a request with a failure; ``code`` is the peer's error code."""

    default_code = "request.failed"
    fault: ClassVar[Fault] = "remote"


class RefusedError(PeerlineError):
    """A server refused a well-formed request by policy (quota, rate limit, access, ban).

    ``code`` is the server's reason (``mailbox.full_count``, ``access.banned``, ...);
    ``retry_after`` (seconds) is set when waiting helps (rate limits).
    """

    default_code = "refused"
    fault: ClassVar[Fault] = "remote"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class NodeNotRunningError(PeerlineError):
    """The command needs the running node (``peerline run``) and none answers (exit 3)."""

    default_code = "node.not_running"
    fault: ClassVar[Fault] = "environment"


class NodeRunningError(LocalProtocolError):
    """Another node already runs on this home directory."""

    default_code = "node.already_running"
