"""--format nc: a movement poses dataset (netCDF via h5netcdf), read back with xarray."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.formats import nc
from pointtrack_cli.io.writers import check_outputs
from tests.helpers.named_tracks import FRAMES, NAMES, named_result


def test_movement_dimensions_coordinates_and_values(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    r = named_result()
    nc.save_nc(r, tmp_path / "m.nc")
    with xr.open_dataset(tmp_path / "m.nc", engine="h5netcdf") as ds:
        assert ds["position"].dims == ("time", "space", "keypoints", "individuals")
        assert ds["confidence"].dims == ("time", "keypoints", "individuals")
        assert ds["keypoints"].values.tolist() == NAMES and ds["space"].values.tolist() == ["x", "y"]
        assert ds["individuals"].values.tolist() == ["id_0"]
        np.testing.assert_allclose(ds["time"].values, np.arange(9) / 25.0)
        assert (ds.attrs["ds_type"], ds.attrs["time_unit"], ds.attrs["fps"]) == ("poses", "seconds", 25.0)
        pos = ds["position"].values[..., 0]  # [time, space, keypoints]
        conf = ds["confidence"].values[..., 0]
    np.testing.assert_allclose(pos[FRAMES].transpose(0, 2, 1), r.tracks, atol=1e-6)
    assert np.isnan(pos[[0, 1, 3, 5, 7]]).all() and np.isnan(pos[2, :, 1]).all() and np.isnan(conf[2, 1])
    np.testing.assert_allclose(conf[FRAMES][1:], r.visibility_prob[1:], atol=1e-6)


def test_missing_xarray_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(PtrackError, match=r'--format nc needs xarray.*pip install "ptrack\[nc\]"'):
        check_outputs("nc", overlay=False)
