"""The run folder's bookkeeping: ``config.json`` (and the resume rules), ``data.json`` (the clips), ``metrics.jsonl``.

Rank 0 writes these files; the other processes receive what it decided (errors included) through a broadcast,
so every process raises the same error or none. Checkpoints are :mod:`.checkpoint`, labels :mod:`.labels`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import PtrackError
from ..io.atomic import atomic_path, ensure_out_dir
from . import data as D
from .config import FinetuneConfig
from .distributed import DistInfo, broadcast_object


def prepare_run_dir(cfg: FinetuneConfig, dist: DistInfo) -> Path:
    """Create/check RUN_DIR and its config.json (rank 0); the resume rules live here."""
    run = Path(cfg.out)
    error = None
    if dist.main:
        try:
            ensure_out_dir(run)
            cfg_path = run / "config.json"
            has_run = (run / "last.state.pt").exists() or (run / "checkpoints").is_dir()
            if cfg.resume:
                if not cfg_path.is_file():
                    raise PtrackError(f"--resume: {run} holds no fine-tuning run (config.json missing); drop --resume to start one")
                old = json.loads(cfg_path.read_text())
                new = cfg.to_json()
                diff = [k for k in new if k not in FinetuneConfig.RESUMABLE_CHANGES and old.get(k) != new[k]]
                if diff:
                    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff[:4])
                    raise PtrackError(f"--resume with different options ({shown}); use the original options or a new --out")
            else:
                if has_run:
                    raise PtrackError(f"{run} already holds a fine-tuning run: pass --resume to continue it, or choose another --out")
                with atomic_path(cfg_path) as tmp:
                    tmp.write_text(json.dumps(cfg.to_json(), indent=2))
        except PtrackError as exc:
            error = str(exc)
    error = broadcast_object(error, dist)
    if error:
        raise PtrackError(error)
    return run


def prepare_data(cfg: FinetuneConfig, run: Path, dist: DistInfo, online: bool,
                 log: Callable[[str], None]) -> tuple[list[D.Clip], list[dict], int]:
    """All clips (fixed at the run's start: data.json), the skipped paths and the number of videos.

    Rank 0 scans VIDEOS_DIR (or reads data.json on resume), the others receive its result.
    """
    manifest = run / "data.json"
    payload = None
    if dist.main:
        try:
            if cfg.resume and manifest.is_file():
                payload = json.loads(manifest.read_text())
            else:
                log(f"scanning {cfg.videos_dir} for videos ...")
                videos, skipped = D.discover_videos(cfg.videos_dir, exclude=[run])
                clips, short = D.make_clips(videos, cfg.clip_length, cfg.frame_stride, cfg.max_clips_per_video,
                                            D.MIN_CLIP_FRAMES[online])
                payload = D.clips_manifest(clips, skipped + short)
                payload["videos"] = len(videos)
                with atomic_path(manifest) as tmp:
                    tmp.write_text(json.dumps(payload, indent=1))
        except PtrackError as exc:
            payload = {"error": str(exc)}
    payload = broadcast_object(payload, dist)
    if "error" in payload:
        raise PtrackError(payload["error"])
    clips = [D.Clip(**c) for c in payload["clips"]]
    skipped = payload["skipped"]
    if not clips:
        why = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise PtrackError(f"no usable videos under {cfg.videos_dir} ({why or 'the folder is empty'}); "
                          f"videos need at least {D.MIN_CLIP_FRAMES[online]} frames")
    if len(clips) < dist.world_size:
        raise PtrackError(f"only {len(clips)} clip(s) for {dist.world_size} processes: use fewer GPUs or more/longer videos")
    return clips, skipped, int(payload.get("videos", 0))


class MetricsLog:
    """``metrics.jsonl``: one JSON record per line (training steps, and ``"event": "eval"`` records)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate(self, step: int) -> None:
        """Drop records after ``step`` (a resumed run rewrites them)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(l + "\n" for l in keep))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
