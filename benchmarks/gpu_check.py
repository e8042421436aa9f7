"""Everything ptrack needs to know from a GPU, in one run of under 4 minutes: one JSON file and a printed table.

    python benchmarks/gpu_check.py [--json gpu_check.json] [--budget 230] [--skip fidelity,track,finetune,verifier]
    python benchmarks/gpu_check.py --smoke        # the same code on the CPU, tiny inputs (a test runs this)

Sections (each one recorded, failures included, so one run answers as much as it can):

1. ``fidelity``: every model fixture test (``tests/models/test_*.py``, discovered: RealTracker, the verifier and
   each teacher with fixtures) run on the device through ``_gpu_pytest_plugin.py``: fp32 with TF32 off (must pass
   at the CPU tolerances) and under bf16 / fp16 autocast (deviation reported: worst error / tolerance per test).
   The three runs are separate processes, started together.
2. ``track``: RealTracker offline and online, ``--grid 50`` and ``--grid 100``, on a 100-frame 854x480 clip the
   script generates (fill-rule weights: speed and memory do not depend on the values): frames/s of tracking
   (features included, start-up excluded) and peak GPU memory (``max_memory_allocated``).
3. ``finetune``: one optimisation step of the student at ``ptrack finetune``'s defaults (384x512, 64 frames
   online / 80 offline, 384 points, 4 iterations, bf16 autocast, activation checkpointing): seconds and peak memory.
4. ``verifier``: the Track-On-R verifier on T=100 frames (100 points, 4 candidates): seconds and peak memory at
   fp32 and fp16 (its ``--precision auto`` on CUDA).

Then it prints what ``--precision auto`` could be: a precision qualifies for a model family when all its fixture
tests pass under it. ``--budget`` (seconds, default 230) bounds the whole run: sections that would start after
it are skipped and say so. ``--smoke`` runs everything on the CPU at toy sizes (cheap fixture tests only).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the package and tests.helpers (fill-rule weights), run from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every weight is generated: never reach for the Hub

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Cheap fixture tests (layouts, tables): the machinery, not the numbers; no model forward (bf16 is slow on most CPUs).
SMOKE_TESTS = "sincos or key_list or (layout and not points and not load and not lightning and not wrong and not checkpoint)"


class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(device: torch.device, out: dict):
    """Seconds and peak memory of the block into ``out`` (GPU: max_memory_allocated; CPU: process peak RSS so far)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    yield
    sync(device)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    else:
        import resource  # POSIX only; the CPU path is the smoke test

        out["peak_rss_gib_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


# --------------------------------------------------------------------------------------------------
# 1. fidelity


def fixture_test_modules() -> list[Path]:
    """The model fixture tests: ``tests/models/test_*.py`` (each model family with fixtures has one)."""
    return sorted((ROOT / "tests" / "models").glob("test_*.py"))


def run_fidelity(device: str, precisions: list[str], smoke: bool, timeout: float, work: Path) -> dict:
    """Every discovered fixture test once per precision; on a GPU in parallel processes (the plugin moves the tests'
    tensors to the device for the whole process), with ``--smoke`` in this process, one precision after the other."""
    modules = fixture_test_modules()
    args = ["-q", "-p", "_gpu_pytest_plugin", "-p", "no:cacheprovider", *[str(m) for m in modules]]
    if smoke:
        args += ["-k", SMOKE_TESTS]
    out: dict = {"modules": [m.name for m in modules], "runs": {}}
    if smoke:
        import pytest  # only the in-process smoke run needs it here

        sys.path.insert(0, str(HERE))
        for prec in precisions:
            report = work / f"fidelity_{prec}.jsonl"
            os.environ.update(PTRACK_CHECK_DEVICE=device, PTRACK_CHECK_PRECISION=prec, PTRACK_CHECK_REPORT=str(report))
            with contextlib.redirect_stdout(open(work / f"fidelity_{prec}.log", "w")):
                code = pytest.main(args)
            out["runs"][prec] = _collect(report, work / f"fidelity_{prec}.log", f"exit {int(code)}")
        return out
    procs = {}
    for prec in precisions:
        report = work / f"fidelity_{prec}.jsonl"
        env = dict(os.environ, PTRACK_CHECK_DEVICE=device, PTRACK_CHECK_PRECISION=prec, PTRACK_CHECK_REPORT=str(report),
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]))
        log = open(work / f"fidelity_{prec}.log", "w")
        procs[prec] = (subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT), report, log)
    deadline = time.perf_counter() + timeout
    for prec, (proc, report, log) in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
            status = f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = f"killed after {timeout:.0f} s (time budget)"
        log.close()
        out["runs"][prec] = _collect(report, work / f"fidelity_{prec}.log", status)
    return out


def _collect(report: Path, log: Path, status: str) -> dict:
    tests = [json.loads(line) for line in report.read_text().splitlines()] if report.is_file() else []
    return {"status": status, "tests": tests, "summary": summarize(tests), "log_tail": log.read_text()[-1500:]}


def summarize(tests: list[dict]) -> dict:
    """Per test module: passed / failed / errors and the worst error / tolerance ratio seen."""
    by: dict[str, dict] = {}
    for t in tests:
        mod = t["test"].split("::")[0].rsplit("/", 1)[-1]
        s = by.setdefault(mod, {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "worst_ratio": None, "worst_test": None})
        s[t["outcome"] if t["outcome"] in s else "error"] += 1
        r = t.get("worst_ratio")
        if r is not None and (s["worst_ratio"] is None or r > s["worst_ratio"]):
            s["worst_ratio"], s["worst_test"] = r, t["test"].split("::", 1)[-1]
    return by


# --------------------------------------------------------------------------------------------------
# 2. track


def write_weights(folder: Path) -> dict[str, Path]:
    from tests.helpers.realtracker_weights import fill_state_dict

    out = {}
    for kind, online in (("offline", False), ("online", True)):
        out[kind] = folder / f"realtracker_{kind}_fill.pth"
        torch.save(fill_state_dict(online), out[kind])
    return out


def run_track(device: torch.device, weights: dict[str, Path], smoke: bool, budget: Budget) -> list[dict]:
    from pointtrack_cli.geometry import official_grid
    from pointtrack_cli.io.video import ArrayVideo
    from pointtrack_cli.synthetic import translating_frames
    from pointtrack_cli.trackers.registry import build_tracker

    t, h, w = (10, 64, 96) if smoke else (100, 480, 854)
    grids = (3,) if smoke else (50, 100)
    resolution = (64, 96) if smoke else None  # None: the model's own 384x512
    frames = np.stack(list(translating_frames(t, h, w, (1.5, 0.7), seed=3)))
    rows = []
    for kind in ("offline", "online"):
        model = f"realtracker-{kind}"
        tracker = build_tracker(model, weights=str(weights[kind]), device=str(device), precision="fp32",
                                resolution=resolution, support_grid=False, quiet=True, iters=1 if smoke else None)
        if not smoke:  # kernels, cuDNN choices, allocator: not in the timed runs
            tracker.track(ArrayVideo(frames[:16]), np.array([[0.0, w / 2, h / 2]]))
        for g in grids:
            if budget.left() < 5:
                rows.append({"model": model, "grid": g, "skipped": "time budget"})
                continue
            xy = official_grid(g, float(h), float(w))
            q = np.concatenate([np.zeros((len(xy), 1)), xy], axis=1)
            rec = {"model": model, "grid": g, "points": len(q), "frames": t, "video": f"{w}x{h}"}
            with measured(device, rec):
                out = tracker.track(ArrayVideo(frames), q)
            rec["frames_per_s"] = round(t / rec["seconds"], 2)
            rec["finite"] = bool(np.isfinite(out.tracks).all())
            rows.append(rec)
        del tracker
    return rows


# --------------------------------------------------------------------------------------------------
# 3. finetune


def run_finetune_step(device: torch.device, smoke: bool, budget: Budget) -> list[dict]:
    from pointtrack_cli.device import resolve_precision
    from pointtrack_cli.finetune import FinetuneConfig
    from pointtrack_cli.finetune.config import DEFAULT_CLIP_LEN
    from pointtrack_cli.finetune.labels import ClipLabels
    from pointtrack_cli.finetune.student import Batch, build_student, compute_loss, make_optimizer, optimizer_step
    from tests.helpers.realtracker_weights import fill_state_dict

    hw, points, iters = ((32, 48), 4, 1) if smoke else ((384, 512), 384, 4)
    precision = resolve_precision("auto", str(device), "finetune")
    rows = []
    for online in ((True,) if smoke else (True, False)):  # smoke: the default (online) student only
        t = 10 if smoke else DEFAULT_CLIP_LEN[online]
        rec = {"student": "online" if online else "offline", "resolution": f"{hw[0]}x{hw[1]}", "frames": t,
               "points": points, "iters": iters, "precision": precision, "checkpointing": True}
        if budget.left() < 20:
            rec["skipped"] = "time budget"
            rows.append(rec)
            continue
        model = build_student(fill_state_dict(online), online, hw, "fill rule", device)
        cfg = FinetuneConfig("", "", iters=iters, steps=10, precision=precision)
        opt, sched = make_optimizer(model, cfg)
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, (t, *hw, 3)).astype(np.uint8)
        q = np.stack([rng.integers(0, max(1, t // 2), points), rng.uniform(0, hw[1] - 1, points),
                      rng.uniform(0, hw[0] - 1, points)], 1).astype(np.float32)
        gt = (q[None, :, 1:] + rng.normal(0, 3, (t, points, 2))).astype(np.float32)
        batch = Batch(frames, ClipLabels(q, gt, rng.random((t, points)) > 0.2, np.ones((t, points), bool), "synthetic"))
        try:
            with measured(device, rec):
                loss = compute_loss(model, batch, cfg, device, precision)
                rec["grad_norm"] = optimizer_step(model, opt, sched, loss.total, cfg)
            rec["loss"] = float(loss.total.detach())
        except torch.cuda.OutOfMemoryError as exc:  # a finding, not a crash
            rec["error"] = f"out of memory: {str(exc).splitlines()[0][:200]}"
        rows.append(rec)
        del model, opt, sched
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------------------------------
# 4. verifier


def run_verifier_check(device: torch.device, smoke: bool, budget: Budget) -> list[dict]:
    from pointtrack_cli.ensemble.verifier import run_verifier
    from pointtrack_cli.models.verifier import load_verifier
    from tests.helpers.verifier_weights import fill_state_dict

    t, n, m, (h, w) = (2, 4, 3, (64, 96)) if smoke else (100, 100, 4, (480, 854))
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (t, h, w, 3)).astype(np.uint8)
    queries = np.stack([np.zeros(n), rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], 1)
    cand = queries[None, :, None, 1:] + rng.normal(0, 5, (t, n, m, 2))
    cand = np.clip(cand, 0, [w - 1, h - 1]).astype(np.float32)
    absent = np.zeros((t, n, m), bool)
    model = load_verifier(fill_state_dict(), "fill rule").to(device)
    rows = []
    for prec in (("fp32",) if device.type == "cpu" else ("fp32", "fp16", "bf16")):
        rec = {"T": t, "points": n, "candidates": m, "video": f"{w}x{h}", "precision": prec}
        if budget.left() < 5:
            rec["skipped"] = "time budget"
        else:
            with measured(device, rec):
                logits = run_verifier(frames, cand, queries, absent, model, device, prec)
            rec["finite"] = bool(np.isfinite(logits).all())
        rows.append(rec)
    return rows


# --------------------------------------------------------------------------------------------------
# Report


def print_report(res: dict) -> None:
    env = res["env"]
    print(f"\nptrack GPU check - {env['device_name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda']}, "
          f"{'SMOKE (CPU, toy sizes)' if env['smoke'] else 'full'}; {res['seconds']:.0f} s")
    fid = res.get("fidelity", {})
    if "runs" in fid:
        print("\nfidelity (model fixture tests on the device; ratio = worst error / CPU tolerance, > 1 fails):")
        print(f"{'precision':9s}  {'test module':22s}  {'pass':>4s}  {'fail':>4s}  {'err':>4s}  {'worst ratio':>11s}  worst test")
        for prec, run in fid["runs"].items():
            if not run["summary"]:
                print(f"{prec:9s}  (no results: {run['status']})")
            for mod, s in run["summary"].items():
                r = "-" if s["worst_ratio"] is None else f"{s['worst_ratio']:.3g}"
                print(f"{prec:9s}  {mod:22s}  {s['passed']:4d}  {s['failed']:4d}  {s['error']:4d}  {r:>11s}  {s['worst_test'] or ''}")
    for name, cols in (("track", ("model", "grid", "points", "frames", "frames_per_s", "seconds", "peak_gib")),
                       ("finetune", ("student", "resolution", "frames", "points", "iters", "precision", "seconds",
                                     "peak_gib", "error")),
                       ("verifier", ("T", "points", "candidates", "precision", "seconds", "peak_gib"))):
        rows = res.get(name)
        if isinstance(rows, dict):
            print(f"\n{name}: {rows.get('error') or rows.get('skipped')}")
            continue
        if not rows:
            continue
        mem = "peak_gib" if res["env"]["device"] != "cpu" else "peak_rss_gib_process"
        cols = tuple(mem if c == "peak_gib" else c for c in cols)
        print(f"\n{name}:")
        print("  ".join(f"{c:>12s}" for c in cols))
        for r in rows:
            print("  ".join(f"{str(r.get(c, r.get('skipped', '-') if c == cols[-1] else '-')):>12s}" for c in cols))
    if res.get("precision_auto"):
        print("\n--precision auto candidates (every fixture test of the family passes under it):")
        for mod, precs in res["precision_auto"].items():
            print(f"  {mod:22s}  {', '.join(precs) or 'none'}")


def precision_candidates(fid: dict) -> dict:
    out: dict[str, list[str]] = {}
    for prec, run in fid.get("runs", {}).items():
        for mod, s in run["summary"].items():
            ok = s["failed"] == 0 and s["error"] == 0 and s["passed"] > 0
            out.setdefault(mod, [])
            if ok:
                out[mod].append(prec)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, toy sizes, cheap fixture tests only")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--budget", type=float, default=230.0, help="seconds for the whole run (default 230)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: fidelity,track,finetune,verifier")
    args = ap.parse_args()
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if args.smoke:
        torch.set_num_threads(1)  # toy sizes: threads would only wait for each other (and the CPU may be shared)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch (use --smoke to check the script on the CPU)")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    budget = Budget(args.budget)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # measured numbers are fp32 unless autocast says otherwise
        torch.backends.cudnn.allow_tf32 = False
    res: dict = {"env": {
        "device": str(device), "smoke": args.smoke, "torch": torch.__version__, "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0], "tf32": False,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }}
    precisions = ["fp32", "bf16"] if device.type == "cpu" else ["fp32", "bf16", "fp16"]
    with tempfile.TemporaryDirectory(prefix="ptrack_gpu_check_") as tmp:
        work = Path(tmp)
        sections = [
            ("fidelity", lambda: run_fidelity(str(device), precisions, args.smoke, max(10.0, 0.55 * budget.left()), work)),
            ("track", lambda: run_track(device, write_weights(work), args.smoke, budget)),
            ("finetune", lambda: run_finetune_step(device, args.smoke, budget)),
            ("verifier", lambda: run_verifier_check(device, args.smoke, budget)),
        ]
        for name, fn in sections:
            if name in skip:
                res[name] = {"skipped": "--skip"}
                continue
            if budget.left() < 10:
                res[name] = {"skipped": "time budget"}
                continue
            print(f"[{budget.elapsed():5.0f} s] {name} ...", flush=True)
            try:
                res[name] = fn()
            except Exception as exc:  # recorded: the other sections still run
                res[name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    res["precision_auto"] = precision_candidates(res.get("fidelity", {}))
    res["seconds"] = round(budget.elapsed(), 1)
    args.json.write_text(json.dumps(res, indent=2, default=float))
    print_report(res)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
