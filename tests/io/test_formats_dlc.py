"""--format dlc: DeepLabCut's CSV read back with pandas' multi-header reader, and its .h5 with pandas + tables."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from pointtrack_cli.api import write_outputs
from pointtrack_cli.io.formats import dlc
from pointtrack_cli.io.writers import check_outputs
from tests.helpers.named_tracks import FRAMES, NAMES, named_result

pd = pytest.importorskip("pandas")


def _expected(r):
    """Dense [9 frames, N, 3] x, y, likelihood: NaN on untracked frames and where there is no estimate."""
    out = np.full((FRAMES[-1] + 1, len(NAMES), 3), np.nan)
    out[FRAMES, :, :2] = r.tracks
    out[FRAMES, :, 2] = np.where(np.isfinite(r.tracks).all(-1), r.visibility_prob, np.nan)
    return out


def _check_frame(df, r):
    assert list(df.columns.names) == ["scorer", "bodyparts", "coords"]
    assert df.columns.get_level_values("scorer").unique().tolist() == ["ptrack"]
    assert df.columns.get_level_values("bodyparts").unique().tolist() == NAMES
    assert df.columns.get_level_values("coords")[:3].tolist() == ["x", "y", "likelihood"]
    assert df.index.tolist() == list(range(9))  # one row per source frame 0..8: row i is frame i
    got = np.stack([df.xs(n, axis=1, level="bodyparts").droplevel("scorer", axis=1)[["x", "y", "likelihood"]]
                    .to_numpy() for n in NAMES], axis=1)
    np.testing.assert_allclose(got, _expected(r), atol=1e-3)
    assert np.isnan(got[[0, 1, 3, 5, 7]]).all()  # frames not tracked (--start 2 --stride 2)
    assert np.isnan(got[2, 1]).all()  # ear: no estimate on frame 2


def test_csv_reads_back_with_pandas_multi_header(tmp_path):
    r = named_result()
    dlc.save_dlc_csv(r, tmp_path / "dlc.csv")
    lines = (tmp_path / "dlc.csv").read_text().splitlines()
    assert lines[0].startswith("scorer,ptrack") and lines[1].startswith("bodyparts,nose,nose,nose,ear")
    assert lines[2].startswith("coords,x,y,likelihood,x") and lines[3] == "0" + "," * 9  # empty, not "nan"
    # The frame column is set as the index after reading (as movement reads DLC CSVs): with index_col=0, pandas
    # would take an all-empty first row (frame 0, not tracked here) for a row of index names.
    df = pd.read_csv(tmp_path / "dlc.csv", header=[0, 1, 2])
    levels = df.columns[0]  # the first column's header cells name the levels: scorer, bodyparts, coords
    df = df.set_index(levels).rename_axis(None)
    df.columns = df.columns.set_names(list(levels))
    _check_frame(df, named_result())


def test_h5_is_deeplabcuts_df_with_missing(tmp_path):
    pytest.importorskip("tables")
    dlc.save_dlc_h5(named_result(), tmp_path / "dlc.h5")
    _check_frame(pd.read_hdf(tmp_path / "dlc.h5", "df_with_missing"), named_result())


def test_without_tables_dlc_writes_the_csv_and_says_how_to_get_the_h5(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tables", None)  # `import tables` now fails, as when it is not installed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_outputs("dlc", overlay=False) == ("dlc",)
        files = write_outputs(named_result(), tmp_path / "o", formats=["dlc"], overlay=False)
    assert any('pip install "ptrack[dlc]"' in str(w.message) for w in caught)
    assert [p.name for p in files] == ["dlc.csv"]
