"""The launcher base of the plugins' private servers, on a real child process, and the
fault-figures fixture in a pytest run of its own."""

from __future__ import annotations

import socket
import sys
import textwrap

import pytest

from dotmac.events.testing import ServerProcess
from dotmac.events.testing.server import free_port, port_accepts

pytest_plugins = ["pytester"]

# A line server: answers every connection with the pid of this run and the contents of
# a file in its directory, so a test sees a restart and what survived it.
_ECHO = textwrap.dedent(
    """
    import os, socket, sys
    port, data = int(sys.argv[1]), sys.argv[2]
    print("listening", port, flush=True)
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            conn, _ = server.accept()
            with conn, open(data) as f:
                conn.sendall(f"{os.getpid()} {f.read()}".encode())
    """
)


class EchoServer(ServerProcess):
    name = "echo"

    def _args(self) -> list[str]:
        (self.data_dir / "data").write_text("kept")
        return [sys.executable, "-c", _ECHO, str(self.port), str(self.data_dir / "data")]

    def ask(self) -> str:
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            return sock.recv(100).decode()


class Failing(ServerProcess):
    name = "failing"
    startup_error = LookupError

    def _args(self) -> list[str]:
        return [sys.executable, "-c", "import sys; print('bad config line 3'); sys.exit(3)"]


class Silent(EchoServer):
    def _answers(self) -> bool:
        return False


def test_a_server_crashes_and_comes_back_on_its_port_with_its_data() -> None:
    with EchoServer() as server:
        first_pid = server.pid
        assert server.running and port_accepts(server.port)
        assert server.ask() == f"{first_pid} kept"
        assert "listening" in server.log_tail()
        server.kill()
        assert not server.running and server.pid is None
        assert not port_accepts(server.port)
        server.start()
        assert server.ask() == f"{server.pid} kept" and server.pid != first_pid
        server.restart()
        assert server.running
        directory = server.data_dir
    assert not server.running and not directory.exists()


def test_a_server_that_exits_while_starting_raises_its_error_with_the_log_tail() -> None:
    server = Failing()
    with (
        pytest.raises(LookupError, match=r"failing exited with 3 while starting:\nbad config line 3"),
        server,
    ):
        pass
    assert not server.data_dir.exists()


def test_a_server_that_never_answers_is_killed_after_the_startup_timeout() -> None:
    server = Silent(startup_timeout=0.5)
    with pytest.raises(RuntimeError, match=r"echo not ready on port \d+ after 0.5s"):
        server.start()
    assert not server.running
    server.cleanup()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        assert port_accepts(port)


def test_fault_figures_reach_the_summary_and_junit(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from dotmac.events.testing import FaultFigures
        _figures = FaultFigures("demo fault-test figures")
        report = _figures.fixture()
        """
    )
    pytester.makepyfile(
        """
        def test_kill(report):
            report("2 kills", lost=0, duplicates=3)
        def test_quiet():
            pass
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "--junitxml=out.xml")
    result.assert_outcomes(passed=2)
    result.stdout.re_match_lines(
        [r".*demo fault-test figures.*", r"test_kill: 2 kills, lost=0, duplicates=3"]
    )
    junit = (pytester.path / "out.xml").read_text()
    assert '<property name="duplicates" value="3"' in junit
