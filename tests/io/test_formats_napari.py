"""--format napari: checked column by column against napari's documented Points CSV reader.

napari (``napari_builtins.io._read``): the first line names the columns; columns starting with ``axis-`` are the
point coordinates in axis order; a first column named ``index`` is skipped; every other column is a property,
parsed as integers if it can be, else floats, else kept as text. Reproduced here without napari.
"""
from __future__ import annotations

import csv

import numpy as np

from pointtrack_cli.io.formats import napari
from tests.helpers.named_tracks import FRAMES, NAMES, named_result


def napari_points_reader(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    names, table = rows[0], np.array(rows[1:])
    axes = [n.startswith("axis-") for n in names]
    data = table[:, axes].astype(float)
    props = {}
    for i, n in enumerate(names):
        if axes[i] or (i == 0 and n == "index"):
            continue
        try:
            props[n] = table[:, i].astype(int)
        except ValueError:
            try:
                props[n] = table[:, i].astype(float)
            except ValueError:
                props[n] = table[:, i]
    return data, props


def test_points_csv_opens_as_napari_reads_it(tmp_path):
    r = named_result()
    napari.save_napari(r, tmp_path / "p.csv")
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header.split(",")[:4] == ["index", "axis-0", "axis-1", "axis-2"]
    rows = [line.split(",") for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    assert all(row[0] == row[4] for row in rows)  # index = the point (as the layout: point, t, y, x)
    data, props = napari_points_reader(tmp_path / "p.csv")
    assert data.shape == (11, 3)  # 4 frames x 3 points, less ear on frame 2 (no estimate)
    assert sorted(props) == ["confidence", "name", "point", "visibility_prob", "visible"]
    assert props["point"].dtype.kind == "i" and props["visible"].dtype.kind == "i"
    assert props["visibility_prob"].dtype.kind == "f" and props["name"].dtype.kind == "U"
    for (t, y, x), n, name, vis, prob in zip(data, props["point"], props["name"], props["visible"],
                                             props["visibility_prob"]):
        k = int(np.nonzero(FRAMES == t)[0][0])  # axis-0 is the source frame number
        assert name == NAMES[n]
        np.testing.assert_allclose([x, y], r.tracks[k, n], atol=1e-3)
        assert vis == r.visibility[k, n] and abs(prob - r.visibility_prob[k, n]) < 1e-5
    assert not ((data[:, 0] == 2) & (props["name"] == "ear")).any()
