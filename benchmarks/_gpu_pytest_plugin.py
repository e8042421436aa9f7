"""pytest plugin of ``gpu_check.py``: run the model fixture tests on another device and/or under autocast.

    PTRACK_CHECK_DEVICE=cuda PTRACK_CHECK_PRECISION=bf16 PTRACK_CHECK_REPORT=out.jsonl \
        python -m pytest -p benchmarks._gpu_pytest_plugin tests/models

The tests are written for the CPU. Without touching them, the plugin makes their tensors live on the device:
``torch.set_default_device`` (factories), ``torch.from_numpy`` returning a device copy, ``Tensor.numpy`` /
``__array__`` copying back to the host, and a ``TorchFunctionMode`` that moves host tensors to the device when
an operation mixes both (weights read from files onto the CPU, tensors made before the test). fp32 runs with
TF32 off (the CPU's arithmetic); ``bf16`` / ``fp16`` run each test inside ``torch.autocast``.

Every comparison the tests make through ``np.testing.assert_allclose``, ``torch.testing.assert_close``,
``np.allclose`` / ``torch.allclose``, every ``max|err| X tol Y`` line they print and the numbers of a failure
message are recorded, so the report gives how far each test is from its tolerance (``ratio`` = error / tolerance;
above 1 fails). One JSON line per test goes to ``PTRACK_CHECK_REPORT``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_current: list[dict] = []  # comparisons of the running test
_state = {"wrapped": False, "on_device": False}


def _setting(name: str, default: str | None) -> str | None:
    # Read at every use: gpu_check --smoke runs pytest twice in one process (fp32, then bf16).
    return os.environ.get(f"PTRACK_CHECK_{name}", default)


def _record(err: float, tol: float | None, how: str) -> None:
    if tol is None:
        ratio = None
    elif tol > 0:
        ratio = err / tol
    else:
        ratio = 0.0 if err == 0 else math.inf
    _current.append({"err": err, "tol": tol, "ratio": ratio, "how": how})


def _max_abs(a, b) -> float:
    a = np.asarray(a.detach().cpu().double() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu().double() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    d = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.where(both_nan, 0.0, d)
    return float(np.nanmax(d)) if d.size and not np.isnan(d).all() else (0.0 if d.size == 0 else math.inf)


def _tol(atol: float, rtol: float, ref) -> float:
    ref = ref.detach().cpu().double().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, dtype=np.float64)
    return float(atol + rtol * (np.nanmax(np.abs(ref)) if ref.size else 0.0))


def _wrap_comparisons() -> None:
    if _state["wrapped"]:
        return
    _state["wrapped"] = True
    np_assert, torch_assert = np.testing.assert_allclose, torch.testing.assert_close
    np_close, torch_close = np.allclose, torch.allclose

    def assert_allclose(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
        with contextlib.suppress(Exception):
            _record(_max_abs(actual, desired), _tol(atol, rtol, desired), "np.testing.assert_allclose")
        return np_assert(actual, desired, rtol, atol, *args, **kwargs)

    def assert_close(actual, expected, *args, rtol=None, atol=None, **kwargs):
        with contextlib.suppress(Exception):
            tol = _tol(atol, rtol, expected) if atol is not None and rtol is not None else None
            _record(_max_abs(actual, expected), tol, "torch.testing.assert_close")
        return torch_assert(actual, expected, *args, rtol=rtol, atol=atol, **kwargs)

    def allclose_np(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
        with contextlib.suppress(Exception):
            _record(_max_abs(a, b), _tol(atol, rtol, b), "np.allclose")
        return np_close(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)

    def allclose_torch(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
        with contextlib.suppress(Exception):
            _record(_max_abs(a, b), _tol(atol, rtol, b), "torch.allclose")
        return torch_close(a, b.to(a.device) if isinstance(b, torch.Tensor) else b, rtol=rtol, atol=atol,
                           equal_nan=equal_nan)

    np.testing.assert_allclose = assert_allclose
    torch.testing.assert_close = assert_close
    np.allclose = allclose_np
    torch.allclose = allclose_torch


# --------------------------------------------------------------------------------------------------
# Tensors on the device


def _map(fn, obj):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        out = [_map(fn, o) for o in obj]
        return type(obj)(out) if isinstance(obj, list) or type(obj) is tuple else type(obj)(*out)
    if isinstance(obj, dict):
        return {k: _map(fn, v) for k, v in obj.items()}
    return obj


def _tensors(obj, acc: list) -> list:
    if isinstance(obj, torch.Tensor):
        acc.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, acc)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, acc)
    return acc


_PASS = {"to", "cpu", "cuda", "copy_", "__setitem__", "numpy", "tolist", "item", "__array__", "detach", "clone",
         "requires_grad_", "data_ptr", "untyped_storage", "is_pinned", "pin_memory", "__get__", "__set__"}


class _OnDevice(TorchFunctionMode):
    """Operations that mix host and device tensors get the host ones moved to the device (read-only uses);
    in-place operations on a host tensor get their device operands moved to the host instead."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in _PASS:
            ts = _tensors((args, kwargs), [])
            types_ = {t.device.type for t in ts if t.dim() > 0 or t.device.type != "cpu"}
            if "cpu" in types_ and self.device.type in types_:
                target = args[0] if args and isinstance(args[0], torch.Tensor) else None
                if name.endswith("_") and not name.startswith("__") and target is not None and target.device.type == "cpu":
                    mover = (lambda t: t.cpu() if t is not target else t)  # in place on a host tensor: stay there
                else:
                    mover = (lambda t: t.to(self.device) if t.device.type == "cpu" and (t.dim() > 0 or t.is_floating_point()) else t)
                args, kwargs = _map(mover, args), _map(mover, kwargs)
        return func(*args, **kwargs)


def _put_on_device(device: torch.device) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (cuBLAS and cuDNN default to TF32 otherwise)
    torch.backends.cudnn.allow_tf32 = False
    torch.set_default_device(device)
    from_numpy, to_numpy = torch.from_numpy, torch.Tensor.numpy

    def from_numpy_on_device(a):
        return from_numpy(a).to(device)

    def numpy_on_host(self, *args, **kwargs):
        return to_numpy(self.detach().cpu() if self.device.type != "cpu" else self, *args, **kwargs)

    torch.from_numpy = from_numpy_on_device
    torch.Tensor.numpy = numpy_on_host
    mode = _OnDevice(device)
    mode.__enter__()  # for the whole session


# --------------------------------------------------------------------------------------------------
# pytest hooks

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|nan)"
_PATTERNS = [
    re.compile(r"max\s*\|\s*err\s*\|\s*" + _NUM + r"[^\n]*?tol\s*" + _NUM),  # "max|err| 1e-3 tol 1e-2"
    re.compile(r"assert\s+" + _NUM + r"\s*<=?\s*" + _NUM),  # "assert 0.5 <= 0.01"
]
_NP_MSG = re.compile(r"Max absolute difference(?: among violations)?:\s*" + _NUM)


def _parse(text: str, how: str) -> None:
    for pat in _PATTERNS:
        for m in pat.finditer(text or ""):
            with contextlib.suppress(ValueError):
                _record(float(m.group(1)), float(m.group(2)), how)


def pytest_configure(config) -> None:
    _wrap_comparisons()
    device = _setting("DEVICE", "cpu")
    if device != "cpu" and not _state["on_device"]:
        _state["on_device"] = True
        _put_on_device(torch.device(device))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    dtype = DTYPES.get(_setting("PRECISION", "fp32"))
    device_type = torch.device(_setting("DEVICE", "cpu")).type
    ctx = torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with ctx:
        yield


def pytest_runtest_setup(item) -> None:
    _current.clear()


def pytest_runtest_logreport(report) -> None:
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    _parse(report.capstdout, "printed")
    message = ""
    if report.outcome == "failed":
        message = str(report.longreprtext)[-2000:]
        _parse("\n".join(message.splitlines()[-40:]), "failure message")
        m = _NP_MSG.search(message)
        if m and not any(c["how"] == "np.testing.assert_allclose" for c in _current):
            _record(float(m.group(1)), None, "failure message")
    ratios = [c["ratio"] for c in _current if c["ratio"] is not None]
    rec = {"test": report.nodeid, "outcome": report.outcome if report.when == "call" else "error",
           "seconds": round(report.duration, 3), "worst_ratio": max(ratios) if ratios else None,
           "comparisons": _current[:50], "message": message[-600:] if message else ""}
    report_path = _setting("REPORT", None)
    if report_path:
        with open(report_path, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")
