"""Processes of a fine-tuning run: the process group, collectives that are no-ops alone, local multi-process launch.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) :func:`init_distributed` joins the process group (NCCL on
CUDA, gloo on CPU) and picks this process's GPU (``LOCAL_RANK``). Without it the run is one process and every
helper here returns its input unchanged, so the training code has a single path. :func:`spawn_local` starts
``nprocs`` processes on this machine the way ``torchrun --nproc_per_node`` does (tests, CPU runs).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from ..device import resolve_device
from ..errors import PtrackError


@dataclass
class DistInfo:
    """This process's place in the run: ``rank`` of ``world_size`` (``local_rank`` = its GPU on the node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder's files and reports progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialised:
            torch.distributed.barrier()


def init_distributed(device_pref: str) -> tuple[DistInfo, torch.device]:
    """Process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``), and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev_name = resolve_device(device_pref)
    if dev_name.startswith("cuda"):
        if world > 1 or dev_name == "cuda":
            if local >= torch.cuda.device_count():
                raise PtrackError(f"process {rank} needs GPU {local} but only {torch.cuda.device_count()} are visible "
                                  "(use --gpus/--nproc_per_node <= the number of GPUs)")
            dev_name = f"cuda:{local}"
        torch.cuda.set_device(torch.device(dev_name))
    device = torch.device(dev_name)
    info = DistInfo(rank, world, local, False)
    if world > 1:
        if not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend, timeout=timedelta(hours=2))
        info.initialised = True
    return info, device


def check_local_gpus(device_pref: str, nprocs: int) -> None:
    """Before launching ``nprocs`` processes here: on CUDA each needs its own visible GPU."""
    if resolve_device(device_pref).startswith("cuda") and nprocs > torch.cuda.device_count():
        raise PtrackError(f"--gpus {nprocs} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")


def close_distributed(dist: DistInfo) -> None:
    if dist.initialised and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_model(model: torch.nn.Module, dist: DistInfo, device: torch.device) -> torch.nn.Module:
    """``model`` in DDP (gradients averaged over the processes in backward), or itself when alone."""
    if not dist.initialised:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_mean(values: list[float], dist: DistInfo, device: torch.device) -> list[float]:
    """Element-wise mean of ``values`` over the processes (float64)."""
    if not dist.initialised:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return (t / dist.world_size).tolist()


def broadcast_object(obj: Any, dist: DistInfo) -> Any:
    """Rank 0's ``obj`` on every process (picklable objects)."""
    if not dist.initialised:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj: Any, dist: DistInfo) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if not dist.initialised:
        return [obj]
    out: list = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------------
# Local multi-process launch (tests, CPU): the same code path torchrun drives


def _local_worker(rank: int, run: Callable, cfg: Any, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    summary = run(cfg)
    Path(out, f"summary_rank{rank}.json").write_text(json.dumps(dataclasses.asdict(summary)))


def spawn_local(run: Callable, cfg: Any, nprocs: int) -> list[dict]:
    """``run(cfg)`` in ``nprocs`` spawned processes with torchrun's environment; their results (dataclasses) as dicts.

    ``run`` must be a module-level function (the spawned processes import it by name).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="ptrack_ddp_") as out:
        mp.start_processes(_local_worker, args=(run, cfg, nprocs, port, out), nprocs=nprocs, join=True,
                           start_method="spawn")
        return [json.loads(Path(out, f"summary_rank{r}.json").read_text()) for r in range(nprocs)]
