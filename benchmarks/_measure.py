"""Run a command in a child process and report its wall time and peak resident memory."""
from __future__ import annotations

import os
import subprocess
import sys
import time


def run_measured(args: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Run ``args``; returns (seconds, peak RSS in MiB, exit code). Output goes to this process's stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024.0, proc.returncode


def run_measured_cpu(args: list[str], env: dict | None = None) -> tuple[float, float, float, int]:
    """As :func:`run_measured`, plus the child's CPU seconds (user + system, all threads) before the exit code.

    On a shared machine the wall time grows with the other processes' load; the CPU time much less so.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime, rc
