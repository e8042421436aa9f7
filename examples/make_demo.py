"""Generate examples/demo.mp4: a textured scene panning with a known motion (60 frames, 320x240, 24 fps).

    python examples/make_demo.py            # writes examples/demo.mp4
    ptrack track examples/demo.mp4 --grid 20
"""
from pathlib import Path

from pointtrack_cli.synthetic import translating_frames, write_mp4

if __name__ == "__main__":
    out = Path(__file__).with_name("demo.mp4")
    write_mp4(translating_frames(60, 240, 320, velocity=(1.5, 0.5), seed=7), out, fps=24)
    print(f"wrote {out} (content moves 1.5 px right and 0.5 px down per frame)")
