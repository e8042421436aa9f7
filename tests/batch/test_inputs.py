"""Which videos a batch's inputs name: folders read recursively, image folders as one video, globs, sorting, output
subfolders that never collide, query files beside each video, outputs never read back as inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pointtrack_cli.batch import plan_inputs
from pointtrack_cli.errors import PtrackError


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def frames(folder: Path, n: int = 2) -> Path:
    for i in range(n):
        touch(folder / f"{i:05d}.png")
    return folder


def table(inputs) -> list[tuple[str, str, str | None]]:
    """(path relative to its common root, output name, query file name) per video."""
    return [(v.path.name, v.name, v.queries.name if v.queries else None) for v in inputs.videos]


def test_a_folder_of_videos_is_read_recursively_sorted_and_named_by_relative_path(tmp_path):
    root = tmp_path / "videos"
    touch(root / "b.mp4")
    touch(root / "day2" / "cat.MOV")
    touch(root / "day1" / "cat.mp4")  # equal stems in different folders
    frames(root / "day1" / "seq")  # an image folder inside: one video
    touch(root / "mask.png")  # loose images beside videos are not a video
    touch(root / "notes.txt")
    touch(root / ".hidden" / "x.mp4")
    touch(root / "old_ptrack" / "overlay.mp4")  # a previous run's output set is never an input
    touch(root / "old_ptrack" / "ptrack.json", json.dumps({"format": "ptrack-output-set-v1", "files": []}))
    found = plan_inputs([root])
    assert found.batch
    assert [v.name for v in found.videos] == ["b", "day1/cat", "day1/seq", "day2/cat"]
    assert [v.index for v in found.videos] == [0, 1, 2, 3]
    assert found.paths == sorted(found.paths, key=lambda p: p.as_posix()) and all(p.is_absolute() for p in found.paths)
    assert found.videos[2].path == (root / "day1" / "seq").absolute()


def test_one_video_is_single_mode_a_folder_of_videos_is_a_batch(tmp_path):
    video = touch(tmp_path / "a" / "clip.mp4")
    seq = frames(tmp_path / "seq")
    assert not plan_inputs([video]).batch
    assert not plan_inputs([seq]).batch  # a folder of images is one video, as before
    assert not plan_inputs([video, video]).batch  # the same video twice is one video
    one = plan_inputs([tmp_path / "a"])  # a folder of videos, even with one video in it
    assert one.batch and [v.name for v in one.videos] == ["clip"]
    two = plan_inputs([video, seq])  # two inputs: names relative to their common parent
    assert two.batch and [v.name for v in two.videos] == ["a/clip", "seq"]


def test_colliding_names_keep_their_suffix(tmp_path):
    touch(tmp_path / "v" / "cat.mp4")
    touch(tmp_path / "v" / "cat.mov")
    frames(tmp_path / "v" / "cat")
    touch(tmp_path / "v" / "dog.mp4")
    assert [v.name for v in plan_inputs([tmp_path / "v"]).videos] == ["cat", "cat.mov", "cat.mp4", "dog"]


def test_quoted_globs(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    touch(tmp_path / "v" / "a.csv", "t,x,y\n0,1,1\n")
    touch(tmp_path / "v" / "deep" / "b.mkv")
    frames(tmp_path / "v" / "seq")
    flat = plan_inputs([str(tmp_path / "v" / "*")])  # files with a video suffix and folders; the csv is not a video
    assert [v.name for v in flat.videos] == ["a", "deep/b", "seq"]
    deep = plan_inputs([str(tmp_path / "v" / "**" / "*.mkv")])
    assert [v.name for v in deep.videos] == ["b"] and not deep.batch  # one match: one video
    with pytest.raises(PtrackError, match="no video matches"):
        plan_inputs([str(tmp_path / "v" / "*.avi")])
    with pytest.raises(PtrackError, match="video not found"):
        plan_inputs([tmp_path / "v" / "missing.mp4"])
    empty = plan_inputs([touch(tmp_path / "empty" / "readme.txt").parent])  # one video: its reader says "no frames"
    assert not empty.batch and empty.paths == [(tmp_path / "empty").absolute()]


def test_query_files_beside_each_video_or_one_for_all(tmp_path):
    root = tmp_path / "v"
    touch(root / "a.mp4")
    touch(root / "a.csv", "t,x,y\n0,1,1\n")
    touch(root / "b.mp4")
    frames(root / "seq")
    touch(root / "seq.json", "[[0, 1, 1]]")  # beside an image folder: <folder name>.json
    assert table(plan_inputs([root])) == [("a.mp4", "a", "a.csv"), ("b.mp4", "b", None), ("seq", "seq", "seq.json")]
    one = touch(tmp_path / "all.csv", "t,x,y\n0,2,2\n")
    assert {v.queries for v in plan_inputs([root], queries=one).videos} == {one}
    assert plan_inputs([root / "a.mp4"]).videos[0].queries is None  # one video: only --queries, as before
    touch(root / "a.json", "[[0, 1, 1]]")
    with pytest.raises(PtrackError, match="two query files"):
        plan_inputs([root])


def test_the_output_folder_is_never_read_as_input(tmp_path):
    root = tmp_path / "v"
    touch(root / "a.mp4")
    touch(root / "out" / "x" / "leftover.mp4")  # inside --out, no manifest (yet)
    assert [v.name for v in plan_inputs([root], exclude=[root / "out"]).videos] == ["a"]
    assert [v.name for v in plan_inputs([str(root / "**" / "*.mp4")], exclude=[root / "out"]).videos] == ["a"]
    # an --out that holds the input (here: the input itself) excludes nothing
    assert [v.name for v in plan_inputs([root], exclude=[root]).videos] == ["a", "out/x/leftover"]
