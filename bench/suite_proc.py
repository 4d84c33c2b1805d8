"""One child process per case, with its peak memory and a hard wall-clock kill.

The child runs in its own session (process group), so its worker processes can be measured and, on a
timeout, killed with it. Memory is read from /proc (Linux), no extra dependency:
- `peak_mb`: the largest sum over the group's processes of their proportional set size (Pss, from
  /proc/PID/smaps_rollup; pages shared by forked workers are counted once), sampled every `interval` s;
- `max_rss_mb`: the largest resident set of any single process of the case (exact, from wait4: the
  child's own ru_maxrss and that of the workers it reaped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class ProcessRun:
    returncode: int | None  # None: killed at the wall-clock limit
    wall_seconds: float
    peak_mb: float
    max_rss_mb: float
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def _group_members(pgid: int) -> list[int]:
    """Pids whose process group is `pgid` (fields after the parenthesised command: state ppid pgrp ...)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _memory_kb(pid: int) -> int:
    """Pss of one process in kB (its resident set when smaps_rollup cannot be read); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except OSError:
        return 0


def group_memory_mb(pgid: int) -> float:
    return sum(_memory_kb(pid) for pid in _group_members(pgid)) / 1024.0


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the case's own process group (only when members remain)."""
    if _group_members(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_measured(argv: Sequence[str], *, cwd: Path, kill_after: float, stdout_path: Path, stderr_path: Path,
                 interval: float = 0.2) -> ProcessRun:
    """Run `argv` to completion or until `kill_after` seconds of wall clock, measuring memory."""
    t0 = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=err, start_new_session=True)
    pgid, peak, killed = proc.pid, 0.0, False
    try:
        while True:
            peak = max(peak, group_memory_mb(pgid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > kill_after:
                os.killpg(pgid, signal.SIGKILL)
                killed = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(interval)
    except BaseException:  # Ctrl-C reaches only this process (the case has its own session): end the case too
        os.killpg(pgid, signal.SIGKILL)
        os.wait4(proc.pid, 0)
        proc.returncode = -signal.SIGKILL
        raise
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    _kill_group(pgid)  # workers orphaned by a crash
    return ProcessRun(
        returncode=None if killed else proc.returncode,
        wall_seconds=wall,
        peak_mb=peak,
        max_rss_mb=usage.ru_maxrss / 1024.0,  # kB on Linux
        stdout=stdout_path.read_text(encoding="utf-8", errors="replace"),
        stderr=stderr_path.read_text(encoding="utf-8", errors="replace"),
    )
