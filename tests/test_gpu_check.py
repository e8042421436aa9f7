"""``benchmarks/gpu_check.py --smoke``: the GPU check runs end to end on the CPU (so it is known to work before a
GPU is lent) and writes the JSON its report is made from."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--json", str(out), "--budget", "600"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["env"]["smoke"] and res["env"]["device"] == "cpu"
    # Fidelity: every model fixture test module was discovered and run in both precisions, with parsed results.
    modules = sorted(p.name for p in (ROOT / "tests" / "models").glob("test_*.py"))
    assert res["fidelity"]["modules"] == modules and "test_realtracker.py" in modules
    for prec in ("fp32", "bf16"):
        run = res["fidelity"]["runs"][prec]
        assert set(run["summary"]) == set(modules), (prec, run["status"], run["log_tail"])
        assert all(s["error"] == 0 for s in run["summary"].values()), run["summary"]
    assert res["fidelity"]["runs"]["fp32"]["summary"]["test_realtracker.py"]["failed"] == 0
    recorded = [c for t in res["fidelity"]["runs"]["fp32"]["tests"] for c in t["comparisons"]]
    assert recorded and all(c["ratio"] is not None and c["ratio"] <= 1 for c in recorded)  # deviations were captured
    # Tracking, a fine-tuning step and the verifier ran and produced finite numbers.
    assert {r["model"] for r in res["track"]} == {"realtracker-offline", "realtracker-online"}
    assert all(r["finite"] and r["frames_per_s"] > 0 for r in res["track"])
    assert res["finetune"][0]["student"] == "online" and "error" not in res["finetune"][0]
    assert res["finetune"][0]["loss"] == res["finetune"][0]["loss"]  # not NaN
    assert all(r["finite"] for r in res["verifier"])
    assert "fp32" in res["precision_auto"]["test_realtracker.py"]
    assert "fidelity" in proc.stdout and "track:" in proc.stdout
