"""One terminal for a page of the documentation: a bash session that runs its blocks in order.

A reader types a page's commands into one terminal: variables set by one block are there for the
next, `&` leaves a job running in the background, `kill %1` stops it. So the blocks of a page run
in one `bash` process, each with `set -e` (a failing command fails the block) and its output sent
to a file of its own (a background job keeps writing its lines to the file of the block that
started it, as it would to the reader's terminal). Job control is on, so each job is a process
group of its own that `close` can end, whatever the page left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# A block may take this long per command it holds, as one budget (a block of four commands gets
# four times it): on a busy machine, a CLI command that takes a second alone has taken fifteen
# under the whole suite.
COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Ran:
    """What one block did: its exit status, where its output went, whether it left jobs running."""

    status: int
    output_path: Path
    started_jobs: bool
    last_job: int | None = None  # `$!`: the last command it sent to the background
    stopped: bool = False  # its last command ran until the reader pressed Ctrl-C

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")


class Shell:
    """A bash session in `cwd` with `env`; `run` one block at a time, then `close`."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self._dir = cwd / ".snippets"
        self._dir.mkdir()
        self._n = 0
        self._jobs: set[int] = set()
        self._proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            text=True,
            start_new_session=True,
        )
        self._send(f"set -m\nset -o pipefail\ntrap 'jobs -p > {self._dir}/exit.jobs' EXIT\n")

    def run(self, block: str) -> Ran:
        """Run `block`; a block still running after `COMMAND_TIMEOUT_S` times its commands raises."""
        timeout_s = COMMAND_TIMEOUT_S * max(1, len(_commands(block)))
        self._n += 1
        out, status, jobs, last = (self._dir / f"{self._n}.{suffix}" for suffix in ("out", "status", "jobs", "last"))
        before = set(self._jobs)
        self._send(
            f"{{ set -e\n{block.rstrip()}\nset +e; }} > {out} 2>&1 < /dev/null\n"
            f"echo $? > {status}.part; jobs -p > {jobs}; echo $! > {last}; mv {status}.part {status}\n"
        )
        deadline = time.monotonic() + timeout_s
        while not status.exists():
            if self._proc.poll() is not None:  # `set -e` ended the shell: the block failed
                return Ran(self._proc.returncode or 1, out, False)
            if time.monotonic() > deadline:
                printed = out.read_text(errors="replace") if out.exists() else ""
                raise TimeoutError(f"the block did not finish within {timeout_s:.0f} s:\n{block}\nit printed:\n{printed}")
            time.sleep(0.02)
        self._jobs = {int(pid) for pid in jobs.read_text().split()}
        last_job = int(last.read_text()) if last.read_text().strip() else None
        return Ran(int(status.read_text()), out, bool(self._jobs - before), last_job)

    def interrupt(self, pid: int) -> int:
        """Ctrl-C for the job `pid` belongs to (SIGINT to its process group); its exit status.
        (bash starts background jobs with SIGINT ignored: `interruptible` gives it back.)"""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGINT)
        waited = self.run(f"status=0\nwait {pid} || status=$?\necho $status")
        return int(waited.output().split()[-1])

    @staticmethod
    def interruptible(command: str) -> str:
        """`command` in the background, as it would run in the foreground: SIGINT stops it."""
        return f"env --default-signal=INT {command} &\n"

    def write(self, name: str, text: str) -> Path:
        """Save a file as the reader would before running it (`watch.mjs`, `agent.py`)."""
        path = self.cwd / name
        path.write_text(text)
        return path

    def close(self) -> None:
        """End every job the page left running, then the shell itself."""
        left = self._dir / "exit.jobs"
        if left.exists():  # the shell ended early (a block failed): the jobs it knew then
            self._jobs |= {int(pid) for pid in left.read_text().split()}
        for pgid in self._jobs:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_alive(pgid) for pgid in self._jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pgid in self._jobs:
            _signal_group(pgid, signal.SIGKILL)
        # A block that timed out never reported the jobs it started: end whatever is left of
        # the shell's session (it leads its own), so no server outlives the page.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left_over = _session_members(self._proc.pid)
            for pid in left_over:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while left_over and _session_members(self._proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            _signal_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def _send(self, text: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(text)
        self._proc.stdin.flush()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _session_members(sid: int) -> list[int]:
    """The processes of session `sid` but its leader (Linux: field 6 of /proc/PID/stat)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == sid:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def _commands(block: str) -> list[str]:
    """The commands of `block`: its lines that are not blank or comments, a line ending in `\\`
    joined with the next."""
    commands: list[str] = []
    continued = False
    for line in block.splitlines():
        if continued:
            commands[-1] += "\n" + line
        elif line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
        continued = bool(commands) and commands[-1].endswith("\\")
    return commands
