"""Small clips for batch tests: image folders of a translating texture (lossless, no ffmpeg), and files that are no
video (a batch's failing member)."""
from __future__ import annotations

from pathlib import Path

from pointtrack_cli.synthetic import translating_frames, write_png_folder


def clips(root: Path, *names: str, bad: tuple[str, ...] = ()) -> Path:
    """Image-folder clips (6 frames, 40x56, one texture seed each) at ``root/<name>``; ``bad``: files at
    ``root/<name>`` holding bytes that are no video. Returns ``root``."""
    for i, name in enumerate(names):
        write_png_folder(translating_frames(6, 40, 56, (0.6, 0.2), seed=i), root / name)
    for name in bad:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not a video")
    return root
