"""Reporting TAP-Vid results as data: a JSON file with every number, the ensemble comparison rows, a PNG bar plot.

The JSON keeps the official fractions at full precision; the terminal tables (numbers x100, as papers
print them) are drawn by the command line (:mod:`pointtrack_cli.cli.eval`) from the same results.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..io.atomic import atomic_path
from .metrics import METRIC_NAMES, mean_over_videos
from .runner import VideoResult


def comparison_rows(results: Sequence[VideoResult], ensemble_label: str) -> list[dict[str, Any]]:
    """Mean over videos of each teacher alone, the ensemble and the oracle (from ``extra["comparison"]``).

    Returns ``[{"name", "role" (teacher | ensemble | oracle), "mean": {metric: fraction}}]`` in table order.
    """
    comps = [r.extra["comparison"] for r in results]
    names = list(comps[0]["teachers"]) if comps else []
    rows = [{"name": n, "role": "teacher", "mean": mean_over_videos([c["teachers"][n] for c in comps])} for n in names]
    rows.append({"name": ensemble_label, "role": "ensemble", "mean": mean_over_videos([r.metrics for r in results])})
    rows.append({"name": "oracle", "role": "oracle", "mean": mean_over_videos([c["oracle"] for c in comps])})
    return rows


def _clean(v: Any) -> Any:
    """JSON-safe values: NaN/inf -> null, NumPy scalars -> Python numbers."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def results_payload(results: Sequence[VideoResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything as one JSON-able dict: metadata, the mean over videos and every per-video number (fractions)."""
    mean = mean_over_videos([r.metrics for r in results])
    times = [r.seconds for r in results if r.seconds is not None]
    payload = {
        **meta,
        "units": "fractions in [0, 1] (papers print x100); coordinates are pixels at 256x256",
        "aggregation": "unweighted mean over videos of the per-video metrics",
        "num_videos": len(results),
        "num_queries": int(sum(r.num_queries for r in results)),
        "mean": {k: mean[k] for k in METRIC_NAMES},
        "seconds_per_video": float(np.mean(times)) if times else None,
        "videos": [
            {
                "name": r.name,
                "num_frames": r.num_frames,
                "num_queries": r.num_queries,
                **({"seconds": r.seconds} if r.seconds is not None else {}),
                "metrics": {k: r.metrics[k] for k in METRIC_NAMES},
                **r.extra,
            }
            for r in results
        ],
    }
    return _clean(payload)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (atomically; NaN already mapped to null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# PNG bar plot

_AJ_BGR = (180, 119, 31)  # blue
_DELTA_BGR = (14, 127, 255)  # orange
_GRID_BGR = (225, 225, 225)
_TEXT_BGR = (40, 40, 40)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.45, color=_TEXT_BGR, thick: int = 1) -> None:
    cv2.putText(img, s, org, _FONT, scale, color, thick, cv2.LINE_AA)


def _text_width(s: str, scale: float = 0.45, thick: int = 1) -> int:
    return cv2.getTextSize(s, _FONT, scale, thick)[0][0]


def _ascii(s: str) -> str:
    """Hershey fonts only draw ASCII: replace anything else (e.g. δ)."""
    s = s.replace("δ", "delta").replace("·", "|")
    return s.encode("ascii", "replace").decode("ascii")


def plot_bars(path: Path, results: Sequence[VideoResult], title: str) -> None:
    """Horizontal bars per video: AJ and <delta_avg (x100), the mean on top; written as PNG with OpenCV."""
    mean = mean_over_videos([r.metrics for r in results])
    rows = [("mean", mean)] + [(r.name, r.metrics) for r in results]
    names = [_ascii(n if len(n) <= 40 else n[:37] + "...") for n, _ in rows]
    row_h, bar_h, top, bottom = 26, 10, 64, 44
    label_w = max(_text_width(n) for n in names) + 16
    plot_w = 600
    width = label_w + plot_w + 70
    height = top + row_h * len(rows) + bottom
    img = np.full((height, width, 3), 255, np.uint8)
    x0 = label_w
    _text(img, _ascii(title)[:120], (10, 22), 0.55, thick=1)
    # legend
    for i, (label, color) in enumerate((("AJ", _AJ_BGR), ("<delta_avg", _DELTA_BGR))):
        lx = x0 + i * 140
        cv2.rectangle(img, (lx, 34), (lx + 14, 46), color, -1)
        _text(img, label, (lx + 20, 45))
    y_end = top + row_h * len(rows)
    for v in range(0, 101, 10):  # gridlines and axis labels
        gx = x0 + int(round(v / 100 * plot_w))
        cv2.line(img, (gx, top - 4), (gx, y_end), _GRID_BGR, 1)
        _text(img, str(v), (gx - _text_width(str(v)) // 2, y_end + 18), 0.4)
    _text(img, "score x100", (x0 + plot_w // 2 - 40, y_end + 36), 0.4)
    for i, (name, metrics) in enumerate(rows):
        y = top + i * row_h
        bold = 2 if i == 0 else 1
        _text(img, names[i], (x0 - 8 - _text_width(names[i], thick=bold), y + 16), thick=bold)
        for j, (key, color) in enumerate((("average_jaccard", _AJ_BGR), ("average_pts_within_thresh", _DELTA_BGR))):
            v = metrics.get(key, float("nan"))
            by = y + 3 + j * (bar_h + 1)
            if v is None or not math.isfinite(v):
                _text(img, "nan", (x0 + 4, by + bar_h), 0.35)
                continue
            bx = x0 + int(round(max(0.0, min(1.0, v)) * plot_w))
            cv2.rectangle(img, (x0, by), (max(bx, x0 + 1), by + bar_h - 1), color, -1)
            _text(img, f"{100 * v:.1f}", (bx + 4, by + bar_h - 1), 0.35)
        if i == 0:
            cv2.line(img, (10, y + row_h - 1), (width - 10, y + row_h - 1), (160, 160, 160), 1)
    cv2.line(img, (x0, top - 4), (x0, y_end), (120, 120, 120), 1)
    path = Path(path)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise OSError("PNG encoding failed")
        tmp.write_bytes(buf.tobytes())
