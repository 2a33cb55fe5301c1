"""A real 3-master Redis Cluster the tests own, on free loopback ports (never 6379)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from stocksched.storage.adapter import connect
from tests.servers import free_port

MASTERS = 3
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000
MAX_NODE_PORT = 65_535 - BUS_OFFSET


@dataclass
class RedisClusterServers:
    """Three ``redis-server --cluster-enabled yes`` processes joined by ``redis-cli --cluster
    create``; ``url`` is the ``redis+cluster://`` URL of all three."""

    dir: Path
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> None:
        """Start the nodes; the first start also creates the cluster, a restart (after
        ``stop``) rejoins it from the nodes' cluster config files."""
        exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if exe is None or cli is None:
            pytest.fail("redis-server and redis-cli are not installed (apt-get install redis)")
        created = bool(self.ports)
        self.ports = self.ports or [_node_port() for _ in range(MASTERS)]
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir(exist_ok=True)
            self.procs.append(_start_node(exe, port, node_dir))
        for port in self.ports:
            _wait_ping(port)
        if not created:
            self._create(cli)
        for port in self.ports:
            _wait_cluster_ok(port)

    def _create(self, cli: str) -> None:
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )

    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=10)
        self.procs = []

    def client(self) -> redis.Redis:
        """A cluster client as the daemon makes one (``redis+cluster://``)."""
        return connect(self.url)

    def flush(self) -> None:
        """Empty every master (a clean cluster for the next test)."""
        for port in self.ports:
            with redis.Redis(port=port) as node:
                node.flushall()


def _node_port() -> int:
    """A free port whose cluster bus port (+10000) is free too: at most 55535."""
    for _ in range(200):
        port = free_port()
        if port <= MAX_NODE_PORT and _free(port + BUS_OFFSET):
            return port
        port = random.randint(20_000, MAX_NODE_PORT)
        if _free(port) and _free(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_node(exe: str, port: int, node_dir: Path) -> subprocess.Popen[bytes]:
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir)]
    args += ["--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf")]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    return subprocess.Popen(
        [exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=node_dir
    )


def _wait_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, socket_timeout=0.5).ping()
            return
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError(f"cluster node on port {port} did not start")


def _wait_cluster_ok(port: int) -> None:
    deadline = time.monotonic() + 20
    with redis.Redis(port=port, decode_responses=True) as node:
        while time.monotonic() < deadline:
            if node.cluster("INFO").get("cluster_state") == "ok":
                return
            time.sleep(0.05)
    raise RuntimeError(f"cluster node on port {port} never reported cluster_state:ok")
