"""Shared test fixtures: small generated videos with known motion (no external data)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Tests never touch the network or the user's HF cache. Set before huggingface_hub is imported:
# it reads these variables once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ptrack_test_hf_")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pointtrack_cli.synthetic import translating_frames, write_mp4, write_png_folder  # noqa: E402
from tests.helpers import VELOCITY, H, T, W, run_cli  # noqa: E402


@pytest.fixture(scope="session")
def frames() -> np.ndarray:
    return np.stack(list(translating_frames(T, H, W, VELOCITY, seed=3)))


@pytest.fixture(scope="session")
def mp4_video(tmp_path_factory, frames) -> Path:
    return write_mp4(frames, tmp_path_factory.mktemp("video") / "clip.mp4", fps=12)


@pytest.fixture(scope="session")
def png_video(tmp_path_factory, frames) -> Path:
    return write_png_folder(frames, tmp_path_factory.mktemp("pngs") / "clip")


@pytest.fixture
def cli():
    return run_cli
