"""A real Redis Cluster on loopback for the tests: three masters and three replicas from
Debian's ``redis-server``, joined with ``redis-cli --cluster create``, as an operator would
build one by hand. AOF with fsync always on every node, and a short node timeout (1 s) so a
killed master's replica takes over within a few seconds."""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

NODE_TIMEOUT_MS = 1000


def _node_ports(n: int, avoid: list[int] | None = None) -> list[int]:
    """``n`` free loopback ports whose cluster-bus ports (port + 10000) are free too. Both
    stay below Linux's ephemeral range (32768 up), where a client socket could take a port
    between this check and the node binding it."""
    rng = random.Random()
    ports: list[int] = []
    taken = set(avoid or [])
    while len(ports) < n:
        port = rng.randrange(20000, 22768)
        if port not in ports and port not in taken and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisClusterProcs:
    """Six ``redis-server`` processes in cluster mode (3 masters + 3 replicas)."""

    def __init__(self, root: Path, masters: int = 3) -> None:
        self.root = root
        self.ports = _node_ports(masters * 2)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """One node is enough: the client discovers the others from it."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> RedisClusterProcs:
        exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        try:
            for port in self.ports:
                self._start_node(exe, port)
            for i in range(len(self.ports)):
                self._until_node_answers(exe, i)
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.until_healthy()
        except BaseException:
            self.stop()  # no node outlives a cluster that did not form
            raise
        return self

    def _ours(self, port: int) -> bool:
        """The Redis answering on ``port`` is the node we started there (not a stranger
        that held the port while ours failed to bind)."""
        info = self.client(port).info("server")
        return int(info["process_id"]) == self.procs[port].pid

    def _until_node_answers(self, exe: str, i: int, tries: int = 3) -> None:
        """Wait for the ``i``-th node to answer. A port found free can be taken before the
        node binds it (another test's server, a busy machine's ephemeral range): a node that
        exits or stays silent is started again on fresh ports rather than failing the
        session, and the last try's log is in the error."""
        for attempt in range(tries):
            port = self.ports[i]
            proc = self.procs[port]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(redis.RedisError, OSError):
                    if self.client(port).ping() and self._ours(port):
                        return
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            del self.procs[port]
            if attempt == tries - 1:
                path = self.root / str(port) / "redis.log"
                log = path.read_text(errors="replace") if path.exists() else "(no log written)"
                raise RuntimeError(f"redis node {port} never answered; its log:\n{log[-2000:]}")
            self.ports[i] = _node_ports(1, avoid=self.ports)[0]
            self._start_node(exe, self.ports[i])

    def _start_node(self, exe: str, port: int) -> None:
        d = self.root / str(port)
        d.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(d)]
        args += ["--logfile", str(d / "redis.log")]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        self.procs[port] = subprocess.Popen(
            [exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def masters(self) -> list[int]:
        """Ports of the live masters, as the cluster sees them."""
        live = [p for p, proc in self.procs.items() if proc.poll() is None]
        nodes = self.client(live[0]).cluster("NODES")  # {"host:port": {"flags": ...}}
        out = []
        for addr, node in nodes.items():
            flags = node["flags"]
            if "master" in flags and "fail" not in flags:
                out.append(int(addr.split("@")[0].rsplit(":", 1)[1]))
        return sorted(p for p in out if p in live)

    def master_of(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot now."""
        slot = self.cluster_client().keyslot(key)
        live = next(p for p, proc in self.procs.items() if proc.poll() is None)
        for lo, hi, master, *_ in self.client(live).execute_command("CLUSTER SLOTS"):
            if lo <= slot <= hi:
                return int(master[1])
        raise LookupError(key)

    def replica_of(self, master: int) -> int:
        """The port of a replica of the master on ``master``."""
        nodes = self.client(master).cluster("NODES")
        ids = {n["node_id"]: int(a.split("@")[0].rsplit(":", 1)[1]) for a, n in nodes.items()}
        mine = next(i for i, p in ids.items() if p == master)
        for addr, node in nodes.items():
            if node.get("master_id") == mine and "fail" not in node["flags"]:
                return int(addr.split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no replica of {master}")

    def pause(self, port: int) -> None:
        """SIGSTOP a node: it keeps its connections but answers nothing (a hung machine)."""
        self.procs[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGCONT)

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crashed machine: no goodbye to the cluster)."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def until_taken_over(self, key: str, dead: int, timeout_s: float = 60) -> int:
        """Wait until another node serves ``key``'s slot in place of the killed master
        ``dead`` and the cluster is healthy again; that node's port."""
        self._until(lambda: self.master_of(key) != dead, f"a replica to replace {dead}", timeout_s)
        self.until_healthy(timeout_s)
        return self.master_of(key)

    def until_healthy(self, timeout_s: float = 60) -> None:
        """Every live node says ``cluster_state:ok`` and all 16384 slots are served."""

        def ok() -> bool:
            for port, proc in self.procs.items():
                if proc.poll() is not None:
                    continue
                info = self.client(port).cluster("INFO")
                if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
            return True

        self._until(ok, "the cluster to be healthy", timeout_s)

    @staticmethod
    def _until(pred: object, what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                if pred():  # type: ignore[operator]
                    return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
