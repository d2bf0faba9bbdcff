"""A real Ray cluster on loopback for the tests: a head on 127.0.0.2 and, on demand, a second
node on 127.0.0.3 (Ray rewrites 127.0.0.1 and localhost to the machine's routable address).

Each node is a `ray start --block` process of our own: stopping it (SIGTERM, then SIGKILL) stops
that node's processes, and whatever is left is found by the node's own temp folder in its command
line, so nothing else on the machine (another Ray, `ray stop`) is ever touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def cluster_cpus(address: str) -> float:
    """The CPUs the cluster at `address` has registered (`ray status`): a node whose processes
    are up joins the count only seconds later, and a job started before sizes its pool without it."""
    done = subprocess.run(
        [RAY, "status", "--address", address], capture_output=True, text=True, env={**os.environ, **ENV}
    )
    for line in done.stdout.splitlines():
        used, _, unit = line.strip().partition(" ")
        if unit == "CPU" and "/" in used:
            return float(used.split("/")[1])
    return 0.0


def processes_with(text: str) -> list[int]:
    """PIDs whose command line contains `text` (this node's temp folder, say)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            pids.append(int(entry.name))
    return pids


class Node:
    def __init__(self, ip: str, head: str | None = None, cpus: int = 2) -> None:
        self.ip = ip
        self.temp = tempfile.mkdtemp(prefix=f"mr{ip.rsplit('.', 1)[1]}", dir="/tmp")  # short: Unix socket paths
        self.port = free_port(ip) if head is None else None
        args = [
            RAY,
            "start",
            "--block",
            "--node-ip-address",
            ip,
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
        ]
        if head is None:
            args += ["--head", "--port", str(self.port), "--include-dashboard=false", "--temp-dir", self.temp]
        else:
            args += ["--address", head]
        self.log = open(Path(self.temp) / "start.log", "wb")
        self.proc = subprocess.Popen(
            args, env={**os.environ, **ENV}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if head is None:
            wait_port(ip, self.port)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def pids(self) -> list[int]:
        """This node's processes: the `ray start` process's session (raylet, workers ...)."""
        mine = []
        for pid in processes_with(""):
            try:
                if os.getsid(pid) == self.proc.pid:
                    mine.append(pid)
            except OSError:
                continue
        return mine

    def stop(self, hard: bool = False) -> None:
        pids = self.pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids:  # anything of this node's session still alive
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.temp, ignore_errors=True)
