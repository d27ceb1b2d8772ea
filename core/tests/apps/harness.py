"""Start ``dotmac-events run`` in a subprocess and watch its log and record file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

APPS = Path(__file__).resolve().parent


class Service:
    """``dotmac-events run ARGS`` with stderr in ``tmp/NAME.log``; killed at cleanup if alive."""

    def __init__(
        self,
        tmp: Path,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        name: str = "svc",
        app_dir: Path = APPS,
        record: Path | None = None,
    ) -> None:
        self.log_path = tmp / f"{name}.log"
        self.record_path = record or tmp / f"{name}.records"
        full_env = {**os.environ, "SVC_RECORD": str(self.record_path), **(env or {})}
        full_env.pop("DOTMAC_EVENTS_URL", None)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in cleanup()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dotmac.events.cli", "run", *args, "--app-dir", str(app_dir)],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def records(self) -> list[tuple[str, str, int]]:
        """``(step, n, pid)`` of every record line (``up``/``down`` have ``n == ""``)."""
        if not self.record_path.exists():
            return []
        rows = []
        for line in self.record_path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((parts[0], parts[1], int(parts[2])))
            elif len(parts) == 2:
                rows.append((parts[0], "", int(parts[1])))
        return rows

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}\n--- log ---\n{self.log()}"
                )
            if self.proc.poll() is not None and not predicate():
                raise AssertionError(
                    f"exited with {self.proc.returncode} before {what}\n--- log ---\n{self.log()}"
                )
            time.sleep(0.02)  # polling a file another process writes

    def wait_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.log())
            if match:
                found.append(match)
            return match is not None

        self.wait_until(seen, timeout, f"log line /{pattern}/")
        return found[-1]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s\n--- log ---\n{self.log()}") from None

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class Services:
    """Starts :class:`Service` processes in ``tmp``; ``cleanup()`` kills the survivors."""

    def __init__(self, tmp: Path, app_dir: Path = APPS, shared_record: bool = False) -> None:
        self.tmp = tmp
        self.app_dir = app_dir
        # One record file for all: for tests that follow events from one process to the next.
        self.record = tmp / "all.records" if shared_record else None
        self.started: list[Service] = []

    def __call__(self, *args: str, **env: object) -> Service:
        svc = Service(
            self.tmp,
            args,
            {k: str(v) for k, v in env.items()},
            f"svc{len(self.started)}",
            self.app_dir,
            self.record,
        )
        self.started.append(svc)
        return svc

    def cleanup(self) -> None:
        for svc in self.started:
            svc.cleanup()
