"""Processes the tests own: a redis-server on a free loopback port (never 6379)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server subprocess the tests own; can be stopped and restarted on its port."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                exe,
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
                "--enable-debug-command",
                "local",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


# -- Redis Sentinel: one master, one replica, three sentinels --------------------------------

SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
daemonize no
dir {dir}
sentinel monitor {name} 127.0.0.1 {master_port} 2
sentinel down-after-milliseconds {name} 1000
sentinel failover-timeout {name} 3000
sentinel parallel-syncs {name} 1
"""


@dataclass
class SentinelGroup:
    """A master, its replica and three sentinels (quorum 2) on free loopback ports.

    Short timeouts (down after 1 s, failover timeout 3 s) keep failovers to a few
    seconds. ``servers`` keeps both data servers whatever their current role.
    """

    dir: Path
    name: str = "mymaster"
    servers: list[RedisServer] | None = None
    sentinel_ports: list[int] | None = None
    procs: list[subprocess.Popen[bytes]] | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports or [])
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.servers = []
        for role in ("a", "b"):
            (self.dir / role).mkdir(parents=True, exist_ok=True)
            server = RedisServer(free_port(), self.dir / role)
            server.start()
            server.client().config_set("repl-diskless-sync-delay", 0)  # sync at once
            self.servers.append(server)
        master, replica = self.servers
        replica.client().replicaof("127.0.0.1", master.port)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs = [self._start_sentinel(exe, port, master.port) for port in self.sentinel_ports]
        self.wait_healthy()

    def _start_sentinel(self, exe: str, port: int, master_port: int) -> subprocess.Popen[bytes]:
        conf = self.dir / f"sentinel-{port}.conf"
        text = SENTINEL_CONF.format(
            port=port, dir=self.dir, name=self.name, master_port=master_port
        )
        conf.write_text(text)
        return subprocess.Popen(
            [exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def sentinel(self, i: int = 0) -> redis.Redis:
        assert self.sentinel_ports is not None
        return redis.Redis(port=self.sentinel_ports[i], decode_responses=True, socket_timeout=2)

    def master_port(self, i: int = 0) -> int | None:
        """The master's port as sentinel ``i`` sees it (None while it does not know)."""
        try:
            addr = self.sentinel(i).sentinel_get_master_addr_by_name(self.name)
        except redis.RedisError:
            return None
        return int(addr[1]) if addr else None

    def master(self) -> RedisServer:
        assert self.servers is not None
        return next(s for s in self.servers if s.port == self.master_port())

    def replica(self) -> RedisServer:
        assert self.servers is not None
        return next(s for s in self.servers if s.port != self.master_port())

    def healthy(self) -> bool:
        """Every sentinel agrees on a master that says it is one, sees the other two
        sentinels and a replica that is in sync: ready for (another) failover."""
        ports = {self.master_port(i) for i in range(3)}
        if len(ports) != 1 or None in ports:
            return False
        try:
            if self.master().client().execute_command("ROLE")[0] != "master":
                return False
            for i in range(3):
                state = self.sentinel(i).sentinel_master(self.name)
                replicas = self.sentinel(i).sentinel_slaves(self.name)
                if state["num-other-sentinels"] != 2 or state["flags"] != "master":
                    return False
                if not any(
                    r["flags"] == "slave" and r["master-link-status"] == "ok" for r in replicas
                ):
                    return False
        except (redis.RedisError, StopIteration, OSError):
            return False
        return True

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel group did not become healthy")
            time.sleep(0.1)

    def wait_master(self, port: int, timeout: float = 20) -> None:
        """Until every sentinel names ``port`` as the master."""
        deadline = time.monotonic() + timeout
        while any(self.master_port(i) != port for i in range(3)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinels did not fail over to port {port}")
            time.sleep(0.05)

    def failover(self) -> int:
        """``SENTINEL FAILOVER``; returns the new master's port once all sentinels name it."""
        new = self.replica().port
        self.sentinel().sentinel_failover(self.name)
        self.wait_master(new)
        return new

    def switch_by_hand(self) -> RedisServer:
        """Swap the roles without Sentinel, as an operator or an orchestrator might, and
        point the sentinels at the new master; returns it. Unlike a Sentinel failover,
        nothing closes the clients' connections to the old master, which therefore
        answer writes with READONLY."""
        old, new = self.master(), self.replica()
        new.client().replicaof("NO", "ONE")
        old.client().replicaof("127.0.0.1", new.port)
        for i in range(3):
            s = self.sentinel(i)
            s.sentinel_remove(self.name)
            s.sentinel_monitor(self.name, "127.0.0.1", new.port, 2)
            s.sentinel_set(self.name, "down-after-milliseconds", 1000)
            s.sentinel_set(self.name, "failover-timeout", 3000)
        return new

    def stop(self) -> None:
        for proc in self.procs or []:
            proc.terminate()
            proc.wait(timeout=10)
        for server in self.servers or []:
            server.stop()
