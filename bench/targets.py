"""The servers under test: callstream (as `callstream serve`, optionally with patches) and the references.

Every server is its own process group, pinned with `taskset` to the server core(s), with the
descriptor limit raised for 15,000 sockets. `Target.stats()` reads RSS and CPU time of the
server's process tree from /proc, so CPU% and RSS per connection need no cooperation.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile() -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def rss_kib(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/statm") as fh:
            total += int(fh.read().split()[1]) * PAGE // 1024
    return total


def cpu_s(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def runq_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (other work on the core)."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/schedstat") as fh:
                    total += int(fh.read().split()[1])
    return total / 1e9


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


@dataclass
class Target:
    """One server under test. `dialect` names the protocol the load generator speaks to it."""

    name: str
    dialect: str
    kind: str
    patches: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    workers: int = 1
    port: int = 0
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, cpus: str | None, extra_env: dict[str, str] | None = None, port: int | None = None) -> Target:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name.replace('+', '-')}-"))
        self.port = port or free_port()
        env = {**os.environ, **self.env, **(extra_env or {})}
        env.pop("PYTHONPATH", None)
        command = self._command(env)
        if cpus:
            command = ["taskset", "-c", cpus, *command]
        self.log_path = self.workdir / "server.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                         preexec_fn=raise_nofile, start_new_session=True)
        wait_port(self.port, 60, self.proc)
        if self.kind == "callstream":
            self._wait_healthy()
        return self

    def _command(self, env: dict[str, str]) -> list[str]:
        assert self.workdir is not None
        if self.kind == "callstream":
            return self._callstream(env)
        if self.kind == "bare":
            return [PY, "-m", "bench.references.bare_websockets", "--port", str(self.port)]
        if self.kind == "picows":
            return [PY, "-m", "bench.references.picows_server", "--port", str(self.port)]
        if self.kind == "socketio":
            return [PY, "-m", "bench.references.socketio_server", "--port", str(self.port), *self.args]
        if self.kind == "nchan":
            conf = (ROOT / "bench/references/nchan.conf").read_text()
            conf = conf.replace("@PORT@", str(self.port)).replace("@DIR@", str(self.workdir))
            conf = conf.replace("@WORKERS@", str(self.workers))
            path = self.workdir / "nginx.conf"
            path.write_text(conf)
            return ["nginx", "-c", str(path), "-p", str(self.workdir)]
        raise ValueError(self.kind)

    def _callstream(self, env: dict[str, str]) -> list[str]:
        assert self.workdir is not None
        if self.patches:
            src = self.workdir / "src"
            shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            for patch in self.patches:
                path = ROOT / "bench/patches" / patch
                subprocess.run(["git", "apply", "--unsafe-paths", str(path)], cwd=self.workdir, check=True)
            env["PYTHONPATH"] = str(src)
        else:  # this tree's src, not whichever tree the venv's editable install points at
            env["PYTHONPATH"] = str(ROOT / "src")
        data = self.workdir / "data"
        db = ["--database", self.args[self.args.index("--database") + 1]] if "--database" in self.args else []
        created = subprocess.run(
            [PY, "-m", "callstream", "keys", "create", "--account", "bench", "--json", "--data-dir", str(data), *db],
            env=env, cwd=ROOT, check=True, capture_output=True,
        )
        self.token = json.loads(created.stdout)["key"]
        return [PY, "-m", "callstream", "serve", "--port", str(self.port), "--data-dir", str(data),
                "--log-level", "warning", *self.args]

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            url = f"http://127.0.0.1:{self.port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} is not healthy")

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def runq_wait_s(self) -> float:
        return runq_wait_s(self.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
        if self.workdir is not None and not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)


# The benchmark measures capacity, not policy: the per-key/per-account socket caps, the per-key
# ingest rate and the account quotas are lifted for every callstream target.
CALLSTREAM_BENCH_ENV = {
    "CALLSTREAM_MAX_CONNECTIONS_PER_KEY": "0",
    "CALLSTREAM_MAX_CONNECTIONS_PER_ACCOUNT": "0",
    "CALLSTREAM_INGEST_RATE": "0",
    "CALLSTREAM_QUOTA_LIVE_CALLS": "0",
    "CALLSTREAM_QUOTA_EVENTS_PER_CALL": "0",
    "CALLSTREAM_QUOTA_SOCKETS": "0",
}


# `callstream+proposed`: every change bench/patches proposes for src/ (see bench/README.md).
PROPOSED: list[str] = []  # in the order they apply; empty: everything proposed so far has landed


def make(name: str) -> Target:
    """`callstream`, `callstream-sse`, `callstream[-sse]+<patch>[+<patch>…]` (bench/patches/<patch>.diff;
    `proposed` = PROPOSED), `bare`, `socketio`, `nchan`, `picows`."""
    if name.startswith("callstream"):
        # `callstream-sse[+<patch>…]`: the same server, its subscribers on Server-Sent Events
        dialect = "sse" if name.split("+")[0] == "callstream-sse" else "callstream"
        names = [q for p in name.split("+")[1:] for q in (PROPOSED if p == "proposed" else [p])]
        patches = [p + ".diff" for p in names]
        return Target(name, dialect, "callstream", patches=patches, env=dict(CALLSTREAM_BENCH_ENV))
    if name == "bare":
        return Target("bare-websockets", "bare", "bare")
    if name == "socketio":
        return Target("python-socketio", "socketio", "socketio")
    if name == "picows":
        return Target("picows-server", "bare", "picows")
    if name == "nchan":
        return Target("nchan", "nchan", "nchan")
    raise ValueError(f"unknown target {name}")


def nchan_available() -> bool:
    return shutil.which("nginx") is not None and Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists()
