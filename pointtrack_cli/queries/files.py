"""Query files: CSV, NPY and JSON rows ``(t, x, y)`` with an optional point name, and COCO keypoints files.

Every reader returns ``(rows [K, 3] float64, names)`` with one name (or None) per row, and refuses more than
``limit`` rows before reading them all (the limit is :data:`pointtrack_cli.queries.MAX_QUERY_ROWS`, passed by the
caller so that it can be changed at run time).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import PtrackError
from .coco import is_coco, read_coco
from .points import check_name, check_rows

Named = tuple[np.ndarray, list]


def too_many(path: Path, n: int | str, limit: int) -> PtrackError:
    return PtrackError(f"{path} holds {n} queries, more than the {limit:,} a query file may hold "
                       "(split the points over several runs)")


def read_query_file(path: str | Path, limit: int) -> Named:
    """Rows ``[K, 3]`` (t, x, y) and a name (or None) per row from a query file.

    CSV (any suffix but ``.npy``/``.json``): a header with ``t`` (or ``frame``), ``x``, ``y`` and optionally ``name``
    (an empty cell: an unnamed point). NPY: a float array ``[K, 3]`` (no names). JSON: a list of ``[t, x, y]`` or of
    objects with ``t``/``frame``, ``x``, ``y`` and optionally ``name``; or a COCO keypoints file
    (:func:`~.coco.read_coco`).
    """
    path = Path(path)
    if not path.is_file():
        raise PtrackError(f"queries file not found: {path} (check the path given to --queries)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        rows = _read_npy(path, limit)
        return rows, [None] * len(rows)
    if suffix == ".json":
        return _read_json(path, limit)
    return _read_csv(path, limit)


def _read_npy(path: Path, limit: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")  # the header first: refuse huge files unread
    except Exception as exc:
        raise PtrackError(f"cannot read {path}: {exc} (expected a float array [N, 3] of t, x, y)") from None
    if arr.ndim >= 1 and arr.shape[0] > limit:
        raise too_many(path, f"{arr.shape[0]:,}", limit)
    if arr.dtype.kind not in "biuf":
        raise PtrackError(f"{path}: queries must be numbers (t, x, y), got an array of dtype {arr.dtype}")
    return check_rows(np.array(arr), str(path))


def _read_json(path: Path, limit: int) -> Named:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a UTF-8 BOM is skipped
    except (ValueError, UnicodeDecodeError) as exc:
        raise PtrackError(f"{path} is not valid JSON: {exc}") from None
    if is_coco(data):
        return read_coco(data, path, limit)
    if isinstance(data, list) and len(data) > limit:
        raise too_many(path, f"{len(data):,}", limit)
    rows, names = [], []
    for i, item in enumerate(data if isinstance(data, list) else [None]):
        name = None
        if isinstance(item, dict):
            row = [item.get("t", item.get("frame")), item.get("x"), item.get("y")]
            if item.get("name") not in (None, ""):
                name = check_name(item["name"], f"{path}, entry {i}")
        else:
            row = item
        try:
            rows.append([float(v) for v in row])
            if len(row) != 3:
                raise ValueError
        except (TypeError, ValueError):
            raise PtrackError(f"{path}: entry {i} is not (t, x, y) (use [t, x, y], {{\"t\":..,\"x\":..,\"y\":..}} with an "
                              "optional \"name\", or a COCO keypoints file)") from None
        names.append(name)
    return check_rows(np.array(rows).reshape(-1, 3), str(path)), names


def _read_csv(path: Path, limit: int) -> Named:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: Excel's UTF-8 BOM is not a header char
    except UnicodeDecodeError:
        raise PtrackError(f"{path} is not a text CSV file (expected header t,x,y)") from None
    reader = csv.reader(lines)
    header = next(reader, None)
    cols = [c.strip().lower() for c in header] if header else []
    tcol = "t" if "t" in cols else ("frame" if "frame" in cols else None)
    if tcol is None or "x" not in cols or "y" not in cols:
        raise PtrackError(f"{path}, line 1: header must contain t (or frame), x and y (and optionally name), got "
                          f"{','.join(cols) or 'nothing'}")
    idx = [cols.index(tcol), cols.index("x"), cols.index("y")]
    ncol = cols.index("name") if "name" in cols else None
    rows, names = [], []
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        try:
            row = [float(rec[i]) for i in idx]
        except (ValueError, IndexError):
            raise PtrackError(f"{path}, line {lineno}: expected numbers for t, x, y, got {','.join(rec)!r}") from None
        if not np.isfinite(row).all():
            raise PtrackError(f"{path}, line {lineno}: NaN or infinite value (give finite t, x, y)")
        cell = rec[ncol].strip() if ncol is not None and ncol < len(rec) else ""
        names.append(check_name(cell, f"{path}, line {lineno}") if cell else None)
        rows.append(row)
        if len(rows) > limit:
            raise too_many(path, "more than that", limit)
    if not rows:
        raise PtrackError(f"{path} holds no queries (add rows t,x,y below the header)")
    return np.array(rows, dtype=np.float64), names
