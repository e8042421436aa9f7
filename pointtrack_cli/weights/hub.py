"""Getting a model's checkpoint: a local file, the Hugging Face Hub, or the authors' own URL.

Hub downloads go through huggingface_hub into its normal cache, so HF_HOME, HF_HUB_CACHE and
HF_HUB_OFFLINE behave as in every other HF tool; a pinned ``revision`` in the registry is respected.
Files published outside the Hub (a ``url`` in the registry) are downloaded into the same cache folder
(``$HF_HUB_CACHE/ptrack-url/<model id>/<file>``) under a temporary name, fsynced and renamed into place, so
an interrupted download never leaves a file that looks complete; HF_HUB_OFFLINE forbids them too. A file
that cannot be downloaded by a program (``manual``) can be placed there with ``copy_into_cache``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import disable_progress_bars

from ..errors import PtrackError
from .registry import entry
from .state_dict import read_state_dict

DownloadProgress = Callable[[int, int | None], None]
"""Called as bytes arrive: (bytes so far, total bytes or None when the server does not say)."""
StateDictReader = Callable[[Path], "dict[str, torch.Tensor]"]

_CHUNK = 1 << 20


def _fetch_hint(e: dict) -> str:
    model_id = e["id"]
    if e.get("repo_id"):
        rev = f" --revision {e['revision']}" if e.get("revision") else ""
        kind = " --repo-type dataset" if e.get("repo_type") == "dataset" else ""
        how = f"`ptrack models download {model_id}` (or `hf download {e['repo_id']} {e['filename']}{kind}{rev}`)"
        hint = f"on a machine with internet run {how}, copy the file here and pass --weights PATH"
    elif e.get("url"):
        hint = f"on a machine with internet download {e['url']}, copy the file here and pass --weights PATH"
    else:
        hint = f"{e.get('manual') or 'the file is not published for download'}; then pass --weights PATH"
    if e.get("kind") == "tracker":
        hint += "; or track without weights: --model protracker (or lk)"
    return hint


def _url_cache_path(e: dict) -> Path:
    return Path(constants.HF_HUB_CACHE) / "ptrack-url" / e["id"] / e["filename"]


def cached_path(model_id: str) -> Path | None:
    """Path of the checkpoint in the local cache, or None when it has not been downloaded."""
    e = entry(model_id)
    if e.get("repo_id"):
        found = try_to_load_from_cache(e["repo_id"], e["filename"], revision=e.get("revision") or None,
                                       repo_type=e.get("repo_type") or None)
        return Path(found) if isinstance(found, (str, os.PathLike)) else None
    path = _url_cache_path(e)  # downloaded from its URL, or placed by `ptrack models download ID --file F`
    return path if path.is_file() else None


def _download_url(e: dict, progress: DownloadProgress | None) -> Path:
    """``e["url"]`` into the cache: temporary file in the same folder, fsync, atomic rename."""
    dest = _url_cache_path(e)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(e["url"], timeout=30) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if total is not None and done != total:
                raise OSError(f"connection closed after {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest


def download(model_id: str, quiet: bool = False, progress: DownloadProgress | None = None) -> Path:
    """Checkpoint of ``model_id`` from the cache, else downloaded (Hub: huggingface_hub's own progress bar;
    URL: ``progress(bytes, total)``).

    Raises :class:`PtrackError` (one line: what, from where, how to fetch it elsewhere) when the source
    cannot be reached and nothing is cached, when HF_HUB_OFFLINE is set and the file is not cached, or
    when the entry has no downloadable source (``manual``).
    """
    e = entry(model_id)
    hit = cached_path(model_id)
    if hit is not None:
        return hit
    if e.get("repo_id"):
        where = f"{e['filename']} from the Hugging Face Hub repo {e['repo_id']}"
    elif e.get("url"):
        where = f"{e['filename']} from {e['url']}"
    else:
        raise PtrackError(f"{model_id}: its weights cannot be downloaded automatically: {_fetch_hint(e)}")
    if constants.HF_HUB_OFFLINE:
        raise PtrackError(f"{where} is not in the local cache and HF_HUB_OFFLINE is set: {_fetch_hint(e)}")
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)  # its retry warnings would bury our one-line error
    try:
        if not e.get("repo_id"):
            return _download_url(e, None if quiet else progress)
        if quiet:
            disable_progress_bars()
        path = hf_hub_download(e["repo_id"], e["filename"], revision=e.get("revision") or None,
                               repo_type=e.get("repo_type") or None, etag_timeout=10)
    except (OSError, urllib.error.URLError, ValueError) as exc:  # network down, DNS, 404, disk full ...
        reason = type(exc).__name__
        raise PtrackError(f"cannot download {where} ({reason}: source unreachable or file unavailable); "
                          f"{_fetch_hint(e)}") from None
    except Exception as exc:  # huggingface_hub's own errors (gated repo, revision not found, ...)
        reason = type(exc).__name__
        raise PtrackError(f"cannot download {where} ({reason}: Hub unreachable or file unavailable); "
                          f"{_fetch_hint(e)}") from None
    finally:
        hub_log.setLevel(level)
    return Path(path)


def load_weights(
    model_id: str,
    weights: str | Path | None = None,
    quiet: bool = False,
    reader: StateDictReader | None = None,
    progress: DownloadProgress | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict for ``model_id`` (from ``weights`` if given, else the cache or a download) and where it came from.

    reader: how to read the file when it is not a plain torch/safetensors state dict (a JAX ``.npz``, a
    Lightning checkpoint); default :func:`~pointtrack_cli.weights.state_dict.read_state_dict`.
    """
    e = entry(model_id)
    read = reader or read_state_dict
    if weights is not None:
        return read(Path(weights)), {"source": "local file", "path": str(Path(weights).resolve())}
    path = download(model_id, quiet=quiet, progress=progress)
    info: dict = {"path": str(path), "licence": e.get("licence")}
    if e.get("repo_id"):
        info.update(source="huggingface_hub", repo_id=e["repo_id"], filename=e["filename"],
                    revision=e.get("revision") or "main")
    else:
        info.update(source="url", url=e["url"])
    return read(path), info


def describe(info: Mapping | None) -> str:
    """One line for a weights ``info`` dict (summaries, metadata)."""
    if not info:
        return "none (weight-free tracker)"
    return str(info.get("path") or info.get("repo_id") or info.get("url") or info)


def copy_into_cache(model_id: str, path: str | Path) -> Path:
    """Place a file fetched by hand where :func:`cached_path` finds it (URL-published models only)."""
    e = entry(model_id)
    if e.get("repo_id"):
        raise PtrackError(f"{model_id} is published on the Hugging Face Hub: pass --weights {path} instead")
    dest = _url_cache_path(e)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest
