"""Deterministic synthetic TAPNext weights (the fixtures' weight-fill rule, tests/fixtures/tapnext/README.md).

Every official key gets ``z = default_rng(crc32(key)).standard_normal(shape)`` (float64), then, cast to
float32 once at the end:

* matrices ``z / sqrt(fan_in)``: ``...weight`` / ``in_proj_weight`` with ndim >= 2 (``fan_in = prod(shape[1:])``);
  block-diagonal gates ``rg_lru.*_gate.w`` ``[H, i, j]`` (``fan_in = i``); ``ffw_up.w`` ``[2, D, E]``
  (``fan_in = D``); the depthwise ``conv_1d.w`` ``[K, D]`` (``fan_in = K``);
* 1-D ``...weight`` (every LayerNorm scale): ``1 + 0.05 z``;
* ``rg_lru.a_param``: ``log(expm1(-log r))`` with ``r = 0.9 + 0.099 * sigmoid(z)`` (recurrentgemma's
  parametrisation of a radius in [0.9, 0.999], so ``softplus(a_param) = -log r``);
* everything else (biases, RMSNorm ``scale`` offsets, the three tokens, ``image_pos_emb``): ``0.02 z``;
* ``query_pos_embed`` is not filled: it is the module's sin-cos buffer (computed).

Exceptions (extra factors after the rule) are in :data:`EXCEPTIONS`, offsets added after them in :data:`OFFSETS`.
"""
from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "tapnext"

EXCEPTIONS: dict[str, float] = {
    # The plain rule gives coordinate logits with std ~0.6: the softmax over 256 bins is nearly flat and the
    # certainty ~0.005 everywhere. x8 (a power of two: exact) peaks them (std ~5): certainty 0.003 .. 0.9.
    "coordinate_head.6.weight": 8.0,
}
OFFSETS: dict[str, float] = {
    # The visible logits of the plain rule sit mostly below 0 (about -2 .. 0.1: ~1 % visible), so the
    # visibility booleans would barely be tested; +1 centres them (float64, before the cast).
    "visible_head.6.bias": 1.0,
}
REDUCED = {"width": 64, "depth": 2, "num_heads": 4, "lru_width": 48, "image_size": (256, 256)}
FULL = {"width": 768, "depth": 12, "num_heads": 12, "lru_width": 768, "image_size": (256, 256)}


def fill_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array the fill rule assigns to ``key`` with the official ``shape``."""
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    z = rng.standard_normal(shape)
    if key.endswith("a_param"):
        r = 0.9 + 0.099 / (1.0 + np.exp(-z))
        v = np.log(np.expm1(-np.log(r)))
    elif key.endswith(("_gate.w", "ffw_up.w")):
        v = z / np.sqrt(float(shape[1]))
    elif key.endswith("conv_1d.w"):
        v = z / np.sqrt(float(shape[0]))
    elif len(shape) >= 2 and key.endswith("weight"):
        v = z / np.sqrt(float(np.prod(shape[1:])))
    elif key.endswith("weight"):
        v = 1.0 + 0.05 * z
    else:
        v = 0.02 * z
    if key in EXCEPTIONS:
        v = v * EXCEPTIONS[key]
    if key in OFFSETS:
        v = v + OFFSETS[key]
    return v.astype(np.float32)


def load_case(name: str) -> dict[str, np.ndarray]:
    """The arrays of fixture case ``name`` (``tests/fixtures/tapnext/<name>.npz``)."""
    with np.load(FIXTURE_DIR / f"{name}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def one_thread() -> Iterator[None]:
    """Body of a module fixture: one intra-op thread. The reduced network's small tensors gain nothing from more,
    and lose a lot on a busy machine (5x the CPU time with 2 threads at load 4)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def formula_video(t: int, h: int, w: int) -> np.ndarray:
    """The fixtures' model-level input ``[1, T, H, W, 3]`` float32 in [-1, 1]: smooth moving waves (float64, one cast)."""
    tt, yy, xx, cc = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    v = np.sin(0.05 * xx * (cc + 1) + 0.07 * yy + 0.3 * tt) * np.cos(0.031 * yy * (cc + 2) - 0.11 * xx * 0.2 + 0.2 * tt)
    return v[None].astype(np.float32)


def _key(config: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in config.items()))


@lru_cache(maxsize=2)
def _filled(config_key: tuple) -> dict[str, torch.Tensor]:
    from pointtrack_cli.models.tapnext import expected_shapes, sincos_posemb_2d

    config = dict(config_key)
    shapes = expected_shapes(**config)
    sd = {}
    for k, shape in shapes.items():
        if k == "query_pos_embed":
            h, w = config["image_size"]
            sd[k] = sincos_posemb_2d(h, w, config["width"])
        else:
            sd[k] = torch.from_numpy(fill_value(k, shape))
    return sd


def fill_state_dict(config: dict | None = None) -> dict[str, torch.Tensor]:
    """The official-layout state dict filled by the rule (a new dict; shared tensors: do not modify in place).

    config: ``width``, ``depth``, ``num_heads``, ``lru_width``, ``image_size`` (default :data:`REDUCED`).
    """
    return dict(_filled(_key(config or REDUCED)))


def to_jax_arrays(sd: dict[str, torch.Tensor], num_heads: int) -> dict[str, np.ndarray]:
    """The JAX ``.npz`` layout of a TAPNext state dict (the inverse of the official restore), for tests.

    Checked at fixture generation against tapnet's ``convert_pytorch_model_to_jax_checkpoint`` and
    ``restore_model_from_jax_checkpoint`` (tests/fixtures/tapnext/README.md).
    """
    a = {k: v.detach().cpu().numpy() for k, v in sd.items()}
    out: dict[str, np.ndarray] = {
        "backbone/embedding/kernel": a["lin_proj.weight"].transpose(2, 3, 1, 0)[None],
        "backbone/embedding/bias": a["lin_proj.bias"],
        "backbone/mask_token": a["mask_token"],
        "backbone/point_query_token": a["point_query_token"],
        "backbone/unknown_token": a["unknown_token"],
        "backbone/pos_embedding": a["image_pos_emb"],
        "backbone/Transformer/encoder_norm/scale": a["encoder_norm.weight"],
        "backbone/Transformer/encoder_norm/bias": a["encoder_norm.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in a if k.startswith("blocks."))
    for i in range(depth):
        src, dst = f"blocks.{i}", f"backbone/Transformer/encoderblock_{i}"
        for k, v in a.items():
            if k.startswith(f"{src}.ssm_block."):
                name = k[len(f"{src}.ssm_block."):]
                if name.endswith("weight"):
                    name, v = name[: -len("weight")] + "kernel", v.T
                out[f"{dst}/ssm_block/{name.replace('.', '/')}"] = v
        vit, p = f"{dst}/vit_block", f"{src}.vit_block"
        out[f"{vit}/LayerNorm_0/scale"], out[f"{vit}/LayerNorm_0/bias"] = a[f"{p}.ln_1.weight"], a[f"{p}.ln_1.bias"]
        out[f"{vit}/LayerNorm_1/scale"], out[f"{vit}/LayerNorm_1/bias"] = a[f"{p}.ln_2.weight"], a[f"{p}.ln_2.bias"]
        out[f"{vit}/MlpBlock_0/Dense_0/kernel"] = a[f"{p}.mlp.0.weight"].T
        out[f"{vit}/MlpBlock_0/Dense_0/bias"] = a[f"{p}.mlp.0.bias"]
        out[f"{vit}/MlpBlock_0/Dense_1/kernel"] = a[f"{p}.mlp.3.weight"].T
        out[f"{vit}/MlpBlock_0/Dense_1/bias"] = a[f"{p}.mlp.3.bias"]
        w, b = a[f"{p}.self_attention.in_proj_weight"], a[f"{p}.self_attention.in_proj_bias"]
        d = w.shape[1]
        for j, name in enumerate(("query", "key", "value")):
            out[f"{vit}/MultiHeadDotProductAttention_0/{name}/kernel"] = w[j * d:(j + 1) * d].T.reshape(d, num_heads, -1)
            out[f"{vit}/MultiHeadDotProductAttention_0/{name}/bias"] = b[j * d:(j + 1) * d].reshape(num_heads, -1)
        out[f"{vit}/MultiHeadDotProductAttention_0/out/kernel"] = a[f"{p}.self_attention.out_proj.weight"].T.reshape(num_heads, -1, d)
        out[f"{vit}/MultiHeadDotProductAttention_0/out/bias"] = a[f"{p}.self_attention.out_proj.bias"]
    for head in ("visible_head", "coordinate_head"):
        for idx in (0, 3, 6):
            out[f"{head}/layers_{idx}/kernel"] = a[f"{head}.{idx}.weight"].T
            out[f"{head}/layers_{idx}/bias"] = a[f"{head}.{idx}.bias"]
        for idx in (1, 4):
            out[f"{head}/layers_{idx}/scale"] = a[f"{head}.{idx}.weight"]
            out[f"{head}/layers_{idx}/bias"] = a[f"{head}.{idx}.bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
