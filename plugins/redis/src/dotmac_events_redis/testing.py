"""Test helpers: a private ``redis-server`` process to start, stop, kill and restart,
and a private Redis Cluster of such processes.

>>> with RedisServer(appendonly=True) as server:
...     bus = create_bus(server.url)
...     server.kill()       # SIGKILL, like a crash
...     server.start()      # same port, same data directory

>>> with RedisClusterServers(masters=3, replicas=1) as cluster:
...     bus = create_bus(cluster.url)          # redis+cluster://...
...     cluster.primary_for(b"{key}").kill()   # a primary crashes
...     cluster.wait_ok(replicas=0)             # its replica took over

Besides ``dotmac.events`` only the standard library is used, so test suites of other
packages can reuse it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from dotmac.events.testing.server import ServerProcess, free_port

__all__ = ["RedisClusterServers", "RedisServer", "free_port", "redis_cli", "redis_server_available"]


def redis_server_available(binary: str = "redis-server") -> bool:
    return shutil.which(binary) is not None


class RedisServer(ServerProcess):
    """A ``redis-server`` subprocess on a free port of 127.0.0.1, with its own data directory.

    ``appendonly``/``appendfsync`` choose AOF persistence (``"always"``,
    ``"everysec"``, ``"no"``); without AOF nothing survives a restart. ``password``
    sets ``requirepass``; ``tls`` is a mapping of ``tls-*`` settings (then
    ``tls_port`` serves TLS and the plain port is closed). ``extra_args`` are passed
    through. The port and data directory stay the same across restarts
    (the lifecycle is :class:`dotmac.events.testing.server.ServerProcess`): ``stop()``
    (SIGTERM) flushes and fsyncs the AOF; after ``kill()`` (SIGKILL, a crash) with
    ``appendfsync everysec`` up to a second of writes is lost.
    """

    name = "redis"
    captures_output = False  # --logfile

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        tls: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        binary: str = "redis-server",
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout, stop_timeout=10.0)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.tls = dict(tls) if tls else None
        self.extra_args = tuple(extra_args)
        self.binary = binary
        self._password = password

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self._password}@" if self._password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    def __repr__(self) -> str:
        return f"<RedisServer port={self.port} running={self.running} aof={self.appendonly}>"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_path),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--protected-mode",
            "no",
        ]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port)]
            for name, value in self.tls.items():
                args += [f"--{name}", value]
        else:
            args += ["--port", str(self.port)]
        if self._password:
            args += ["--requirepass", self._password]
        args += list(self.extra_args)
        return args

    def call(self, *args: str | bytes, timeout: float = 2.0) -> Any:
        """One command on a fresh connection (plain TCP, no AUTH); its reply."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(_pack(args))
            return _read_reply(sock.makefile("rb"))

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                if self.tls:
                    return True  # the TLS port accepts connections
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # "-LOADING" while the AOF is replayed; "-NOAUTH" means it is up.
        return reply.startswith((b"+PONG", b"-NOAUTH"))


def redis_cli(binary: str = "redis-cli") -> str | None:
    return shutil.which(binary)


def _pack(args: Sequence[str | bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(stream: BinaryIO) -> Any:
    line = stream.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2]
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(stream) for _ in range(size)]
    raise ValueError(f"unexpected reply {line!r}")


def _key_slot(key: bytes) -> int:
    """The cluster slot of ``key`` (CRC16/XMODEM of the hash tag or the key, mod 16384)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    crc = 0
    for byte in key:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """A Redis Cluster of private ``redis-server`` processes on free ports of 127.0.0.1:
    ``masters`` primaries with ``replicas`` replicas each, created with
    ``redis-cli --cluster create``. ``node_timeout_ms`` is ``cluster-node-timeout``:
    how long a primary must be unreachable before its replica is promoted.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        binary: str = "redis-server",
        cli: str = "redis-cli",
        startup_timeout: float = 30.0,
    ) -> None:
        self.cli = cli
        self.startup_timeout = startup_timeout
        self.nodes = [
            RedisServer(
                port=_cluster_port(),
                binary=binary,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # Replicas get their first copy at once instead of after 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                ),
            )
            for _ in range(masters * (1 + replicas))
        ]
        self.masters = masters
        self.replicas = replicas

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        seeds = ",".join(f"{n.host}:{n.port}" for n in self.nodes)
        return f"redis+cluster://{seeds}/0"

    @property
    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(  # noqa: S603 - fixed binary, arguments built here
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(f"{n.host}:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=self.startup_timeout,
            )
            self.wait_ok(self.startup_timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _info(self, node: RedisServer) -> dict[str, str]:
        reply = node.call("CLUSTER", "INFO")
        if not isinstance(reply, bytes):
            return {}
        return dict(line.split(":", 1) for line in reply.decode().splitlines() if ":" in line)

    def topology(self, node: RedisServer | None = None) -> list[tuple[int, int, int, list[int]]]:
        """``CLUSTER SLOTS`` as seen by ``node``: (first slot, last slot, primary port, replica ports)."""
        reply = (node or self.running[0]).call("CLUSTER", "SLOTS")
        return [(int(r[0]), int(r[1]), int(r[2][1]), [int(x[1]) for x in r[3:]]) for r in reply or ()]

    def _online_replicas(self, primary: RedisServer) -> set[int]:
        """Ports of the replicas whose link to ``primary`` is up (its INFO replication)."""
        reply = primary.call("INFO", "replication")
        ports: set[int] = set()
        for line in (reply.decode() if isinstance(reply, bytes) else "").splitlines():
            if line.startswith("slave") and ":" in line:
                fields = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].split(",") if "=" in kv)
                if fields.get("state") == "online" and fields.get("port", "").isdigit():
                    ports.add(int(fields["port"]))
        return ports

    def _settled(self, replicas: int) -> bool:
        live = {n.port: n for n in self.running}
        for node in live.values():
            info = self._info(node)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                return False
            # Every live node sees only live primaries serving every slot. (CLUSTER SLOTS
            # lists a replica only once it has replicated something, so replicas are
            # counted by their primaries.)
            for _a, _b, primary, _copies in self.topology(node):
                if primary not in live:
                    return False
        for primary in {p for _a, _b, p, _c in self.topology(next(iter(live.values())))}:
            if len(self._online_replicas(live[primary]) & set(live)) < replicas:
                return False
        return True

    def wait_ok(self, timeout: float = 30.0, *, replicas: int | None = None) -> None:
        """Wait until every live node reports ``cluster_state:ok``, every slot is served by
        a live primary, and each primary has ``replicas`` (default: as created) replicas
        whose link to it is up."""
        wanted = self.replicas if replicas is None else replicas
        # External processes: poll their state with a deadline (no event to await).
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._settled(wanted):
                    return
            except (OSError, ValueError, IndexError, TypeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not settle within {timeout}s")
            time.sleep(0.05)

    def primary_for(self, key: bytes) -> RedisServer:
        """The node serving ``key`` now."""
        slot = _key_slot(key)
        for first, last, port, _replicas in self.topology():
            if first <= slot <= last:
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
