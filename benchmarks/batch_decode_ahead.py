"""Would decoding the next video while the current one is tracked shorten a batch? (Measured: not on the CPU.)

    python benchmarks/batch_decode_ahead.py [--videos DIR] [--model lk] [--grid 10] [--repeats 3] [--overlay]

Without --videos: 6 generated clips (90 frames, 480x640). Both variants run the batch loop of
:func:`pointtrack_cli.batch.run_batch` in this process (the model built once, as the CLI does): "off" plans each
video from its path (streamed while tracked, as ptrack does); "on" plans it from frames a thread decoded into
memory while the previous video was tracked. They alternate (off, on, off, on, ...) so a change in the machine's
load hits both; every run recomputes (overwrite). Prints each run's wall and CPU seconds (this process and its
ffmpeg children) and the median per variant.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pointtrack_cli.api import plan_track  # noqa: E402
from pointtrack_cli.batch import Shard, plan_inputs, run_batch  # noqa: E402
from pointtrack_cli.io.video import open_video  # noqa: E402
from pointtrack_cli.synthetic import translating_frames, write_mp4  # noqa: E402


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_videos(folder: Path, count: int, frames: int, h: int, w: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_mp4(translating_frames(frames, h, w, (0.8, 0.4), seed=i), folder / f"clip{i}.mp4", fps=24)
    return folder


def run(videos, out: Path, ahead: bool, options: dict, overlay: bool):
    pool = ThreadPoolExecutor(1) if ahead else None
    futures: dict[int, Future] = {}

    def decode(video):
        return open_video(video.path).decode()

    def plan(video):
        if pool is None:
            return plan_track(video.path, **options)
        if video.index == 0:
            futures[0] = pool.submit(decode, video)
        if video.index + 1 < len(videos):  # the next one decodes while this one is tracked
            futures[video.index + 1] = pool.submit(decode, videos[video.index + 1])
        return plan_track(futures.pop(video.index).result(), **options)

    try:
        return run_batch(videos, out, plan, formats="npz", overlay=overlay, overwrite=True, shard=Shard())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, help="folder of videos (default: generated clips)")
    ap.add_argument("--model", default="lk")
    ap.add_argument("--grid", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overlay", action="store_true", help="also write overlay.mp4 (default: npz only)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.videos or make_videos(Path(tmp) / "videos", 6, 90, 480, 640)
        videos = plan_inputs([folder]).videos
        options = dict(model=args.model, grid=args.grid, device=args.device)
        times: dict[bool, list[float]] = {False: [], True: []}
        print(f"videos {folder} ({len(videos)}), model {args.model}, grid {args.grid}, overlay {args.overlay}")
        print(f"{'decode ahead':>12s} {'wall s':>8s} {'cpu s':>8s}")
        for _ in range(args.repeats):
            for ahead in (False, True):
                c0, t0 = cpu_seconds(), time.perf_counter()
                done = run(videos, Path(tmp) / "out", ahead, options, args.overlay)
                wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                assert done.ok, [(row.video, row.error) for row in done.rows if row.error]
                times[ahead].append(wall)
                print(f"{'on' if ahead else 'off':>12s} {wall:8.2f} {cpu:8.2f}", flush=True)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"median wall: off {off:.2f} s, on {on:.2f} s ({100 * (off - on) / off:+.1f}% saved by decoding ahead)")


if __name__ == "__main__":
    main()
