"""Sharding a batch over processes without collective operations: which videos a process takes, which GPU it
uses, and how rank 0 learns what the others did.

Under ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) process ``rank`` of
``world`` takes every ``world``-th item of the sorted list, starting at its rank, and uses GPU ``LOCAL_RANK`` (it
becomes the current CUDA device, so ``--device auto``/``cuda`` and the job keys stay as in a single process: a
video finished by one rank is skipped by any other on a rerun with another number of processes). No process
group is created: the processes never wait on each other, so one failing never hangs the rest.

They talk through files in ``<out>/.ptrack-batch/`` (a folder all ranks share; on several nodes a shared
filesystem): each rank writes ``rank-<r>.json`` (its rows so far, ``state`` running / done / failed / stopped,
the run id) atomically after every video and touches it every few seconds while it works (a heartbeat). Rank 0,
after its own share, waits for every other rank's file of **this run** to say it ended; a rank whose file is
missing or silent for ``timeout`` seconds counts as lost (its videos are reported as missing). ``--fail-fast``
writes ``stop-<run>`` there: every rank stops before its next video.

The run id tells this run's files from an earlier run's: ``$PTRACK_RUN_ID``, else torchrun's
``TORCHELASTIC_RUN_ID`` (a fresh id for each single-node ``torchrun``; on several nodes give ``--rdzv-id``) with its
restart count, else SLURM's job and step ids. A sharded run without any of them is refused (stale files of an
earlier run could be taken for this one's).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import torch

from ..device import resolve_device
from ..errors import PtrackError
from ..io.atomic import atomic_path

STATUS_DIR = ".ptrack-batch"
STATUS_FORMAT = "ptrack-batch-rank-v1"
FINAL_STATES = ("done", "failed", "stopped")
HEARTBEAT_S = 5.0

Item = TypeVar("Item")


def run_id_from_env(env: Mapping[str, str]) -> str | None:
    """The id all processes of one launch share (see the module docstring), or None."""
    if env.get("PTRACK_RUN_ID"):
        return env["PTRACK_RUN_ID"]
    elastic = env.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return f"{elastic}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    return None


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "")
    if not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise PtrackError(f"${name}={text!r} is not a whole number (set by torchrun; unset it for one process)") from None


@dataclass(frozen=True)
class Shard:
    """This process's place in a sharded run: ``rank`` of ``world`` (``local_rank``: its GPU on the node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    run_id: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Shard":
        """From torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (absent: one process)."""
        env = os.environ if env is None else env
        world = _env_int(env, "WORLD_SIZE", 1)
        rank = _env_int(env, "RANK", 0)
        local = _env_int(env, "LOCAL_RANK", 0)
        if world < 1 or not 0 <= rank < world or local < 0:
            raise PtrackError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a process of a "
                              "run (0 <= RANK < WORLD_SIZE): launch with torchrun, or unset them")
        run_id = run_id_from_env(env)
        if world > 1 and run_id is None:
            raise PtrackError(f"a sharded run (WORLD_SIZE={world}) needs an id shared by its processes: launch with "
                              "torchrun (on several nodes with --rdzv-id ID), or set PTRACK_RUN_ID to a new value")
        return cls(rank, world, local, run_id)

    @property
    def main(self) -> bool:
        """Rank 0: the process that merges and prints the summary."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def take(self, items: Sequence[Item]) -> list[Item]:
        """This rank's items of the sorted list: every ``world``-th, from ``rank`` on."""
        return list(items[self.rank::self.world])

    def owner(self, index: int) -> int:
        return index % self.world

    def pin_device(self, device: str) -> None:
        """Make GPU ``local_rank`` the current CUDA device when sharded and ``device`` resolves to plain ``cuda``."""
        if not self.sharded or resolve_device(device) != "cuda":
            return
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise PtrackError(f"process {self.rank} needs GPU {self.local_rank} (LOCAL_RANK) but only {count} are "
                              "visible (use --nproc_per_node <= the number of GPUs)")
        torch.cuda.set_device(self.local_rank)

    @property
    def tag(self) -> str:
        """A file-name-safe digest of the run id."""
        return hashlib.sha256(str(self.run_id).encode()).hexdigest()[:12]


def status_folder(out: Path) -> Path:
    return Path(out) / STATUS_DIR


def status_path(out: Path, rank: int) -> Path:
    return status_folder(out) / f"rank-{rank}.json"


def stop_path(out: Path, shard: Shard) -> Path:
    return status_folder(out) / f"stop-{shard.tag}"


class RankStatus:
    """This rank's status file (see the module docstring); a context manager that heartbeats while open.

    :meth:`update` rewrites it with the rows so far; leaving the block writes the final state: ``done``, or
    ``failed`` with the error's line, or ``stopped`` (Ctrl-C, SIGTERM). Without sharding it writes nothing.
    ``listing``: a digest of the whole sorted list as this rank expanded it (rank 0 checks that all ranks agree).
    """

    def __init__(self, out: Path, shard: Shard, total: int, listing: str | None = None) -> None:
        self.out, self.shard, self.total, self.listing = Path(out), shard, total, listing
        self.path = status_path(out, shard.rank)
        self.rows: list[dict] = []
        self.state, self.error = "running", None
        self.started = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RankStatus":
        if self.shard.sharded:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write()
            self._thread = threading.Thread(target=self._beat, daemon=True, name="ptrack-heartbeat")
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None:
            self.state = "done" if self.state == "running" else self.state
        elif issubclass(exc_type, KeyboardInterrupt):
            self.state = "stopped"
        else:
            self.state, self.error = "failed", " ".join(str(exc).split()) or exc_type.__name__
        if self.shard.sharded:
            with contextlib.suppress(OSError):  # the error being raised says more than a failed status write
                self._write()

    def update(self, rows: list[dict]) -> None:
        self.rows = list(rows)
        if self.shard.sharded:
            self._write()

    def request_stop(self) -> None:
        """``--fail-fast``: every rank stops before its next video."""
        if self.shard.sharded:
            stop_path(self.out, self.shard).touch()

    def stop_requested(self) -> bool:
        return self.shard.sharded and stop_path(self.out, self.shard).exists()

    def _write(self) -> None:
        data = {"format": STATUS_FORMAT, "run": self.shard.run_id, "rank": self.shard.rank, "world": self.shard.world,
                "state": self.state, "error": self.error, "started": self.started, "videos": self.total,
                "listing": self.listing, "rows": self.rows}
        with self._lock, atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, default=str), encoding="utf-8")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock, contextlib.suppress(OSError):
                os.utime(self.path)


def read_status(out: Path, rank: int, shard: Shard) -> dict | None:
    """Rank ``rank``'s status file of this run (None: not written yet, unreadable, or of another run)."""
    try:
        data = json.loads(status_path(out, rank).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != STATUS_FORMAT or data.get("run") != shard.run_id \
            or data.get("world") != shard.world or not isinstance(data.get("rows"), list):
        return None
    return data


def wait_for_ranks(out: Path, shard: Shard, timeout: float, poll: float = 0.5,
                   on_done: Callable[[int, dict | None], None] | None = None) -> dict[int, dict | None]:
    """Rank 0: every other rank's final status of this run, waiting for them; a rank is lost after ``timeout``
    seconds of silence (no file of this run since this call began, or none of its heartbeats, which touch the file,
    for that long). Lost ranks map to their last status of this run (rows so far, ``state`` still running) or
    None. ``on_done(rank, status)`` as each one settles."""
    pending = set(range(1, shard.world))
    found: dict[int, dict | None] = {}
    began = time.time()
    while pending:
        for r in sorted(pending):
            status = read_status(out, r, shard)
            found[r] = status
            if status is not None and status.get("state") in FINAL_STATES:
                pending.discard(r)
            else:
                try:
                    last = status_path(out, r).stat().st_mtime if status is not None else began
                except OSError:
                    last = began
                if time.time() - last > timeout:
                    pending.discard(r)
                else:
                    continue
            if on_done is not None:
                on_done(r, found[r])
        if pending:
            time.sleep(poll)
    return found
