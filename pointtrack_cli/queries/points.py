"""Named points and their anchors: rows ``(t, x, y)`` with optional names -> a :class:`QuerySet`.

A point is what the outputs hold one column of; an anchor is one place where the point is given (a frame and a
position). Rows that share a name are one point with several anchors (a point clicked again on a later frame to
correct it); a row without a name is a point of its own, named ``p<index>`` after its position among the points.
Every anchor is tracked as a query of its own; :mod:`.anchors` then merges a point's anchors frame by frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import PtrackError
from ..result import NAME_PATTERN



def default_name(index: int) -> str:
    """The name of an unnamed point: ``p<index>`` (its column in the outputs)."""
    return f"p{index}"


def check_name(name: str, where: str) -> str:
    """``name`` stripped and checked against :data:`NAME_PATTERN`; one line naming ``where`` otherwise."""
    name = str(name).strip()
    if not NAME_PATTERN.match(name):
        raise PtrackError(f"{where}: point name {name!r} is not allowed (use letters, digits, _ . + - and no spaces, "
                          "e.g. left_wrist)")
    return name


def check_rows(rows: np.ndarray, source: str) -> np.ndarray:
    """``rows`` as float64 ``[K, 3]`` (t, x, y), every value finite; one line naming ``source`` otherwise."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise PtrackError(f"{source}: queries must be rows of (t, x, y), got shape {rows.shape}")
    bad = np.nonzero(~np.isfinite(rows).all(axis=1))[0]
    if len(bad):
        raise PtrackError(f"{source}: query {int(bad[0])} has NaN or infinite values (give finite t, x, y)")
    return rows


def parse_named_point(text: str) -> tuple[np.ndarray, str | None]:
    """``"t,x,y"`` or ``"NAME=t,x,y"`` -> (``[1, 3]``, the name or None)."""
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = None, text
    else:
        name = check_name(name, f"--point {text}")
    parts = [p.strip() for p in rest.split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise PtrackError(f"--point {text!r} is not t,x,y or NAME=t,x,y (e.g. --point 0,120.5,64 or --point nose=0,120.5,64)")
    return check_rows(np.array([vals]), f"--point {text}"), name


def parse_point(text: str) -> np.ndarray:
    """``"t,x,y"`` (or ``"NAME=t,x,y"``) -> ``[1, 3]``."""
    return parse_named_point(text)[0]


@dataclass(frozen=True)
class QuerySet:
    """N named points and their A >= N anchors.

    anchors: ``[A, 4]`` float64 rows (point index, t, x, y), sorted by point, then by frame; t is a source frame
        number, x, y original pixels. Each row is tracked as a query of its own (:attr:`rows`).
    names: the N point names (unique). explicit: some point came from a file, ``--point`` or a mask (RealTracker
        then adds its support grid, as the official predictor does).
    """

    anchors: np.ndarray
    names: tuple[str, ...]
    explicit: bool = True

    @property
    def rows(self) -> np.ndarray:
        """``[A, 3]`` (t, x, y): the queries the tracker gets, one per anchor."""
        return self.anchors[:, 1:4]

    @property
    def point(self) -> np.ndarray:
        """``[A]`` the point index of each anchor."""
        return self.anchors[:, 0].astype(np.int64)

    @property
    def first(self) -> np.ndarray:
        """``[N]`` index of each point's first anchor (the earliest frame)."""
        return np.searchsorted(self.point, np.arange(len(self.names)))

    @property
    def queries(self) -> np.ndarray:
        """``[N, 3]`` (t, x, y): each point's first anchor (``queries`` in ``tracks.npz``)."""
        return self.rows[self.first]

    @property
    def row_names(self) -> list[str]:
        """The point name of each anchor (for messages)."""
        return [self.names[i] for i in self.point]

    @property
    def num_points(self) -> int:
        return len(self.names)

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])


def group_points(rows: np.ndarray, names: Sequence[str | None], explicit: bool = True) -> QuerySet:
    """Rows ``[K, 3]`` (t, x, y) with a name or None each -> a :class:`QuerySet`.

    Points are numbered in the order their first row appears; rows with the same name are one point's anchors
    (sorted by frame); a row without a name is a point of its own, named ``p<index>``. Two anchors of one point on
    the same frame, or a given name equal to an unnamed point's ``p<index>``, are refused (one line each).
    """
    rows = np.asarray(rows, np.float64).reshape(-1, 3)
    if len(names) != len(rows):
        raise ValueError(f"{len(names)} names for {len(rows)} rows")
    index: dict[str, int] = {}
    point = np.empty(len(rows), np.int64)
    given: list[str | None] = []
    for i, name in enumerate(names):
        if name is None:
            point[i] = len(given)
            given.append(None)
        else:
            if name not in index:
                index[name] = len(given)
                given.append(name)
            point[i] = index[name]
    final = []
    for i, name in enumerate(given):
        if name is None:
            name = default_name(i)
            if name in index:
                raise PtrackError(f"point name {name!r} is also the name ptrack gives unnamed point {i}: rename it, "
                                  "or name every point")
        final.append(name)
    order = np.lexsort((rows[:, 0], point))  # by point, then by frame (stable: unnamed points keep their order)
    anchors = np.concatenate([point[order, None].astype(np.float64), rows[order]], axis=1)
    same = (np.diff(anchors[:, 0]) == 0) & (np.diff(anchors[:, 1]) == 0)
    if same.any():
        k = int(np.nonzero(same)[0][0])
        raise PtrackError(f"point {final[int(anchors[k, 0])]!r} has two anchors on frame {anchors[k, 1]:g} "
                          "(keep one of them)")
    return QuerySet(anchors, tuple(final), explicit)
