"""`train-fusion --dry-run`: parameters, forward FLOPs and an estimate of peak GPU memory, without training.

Builds the model on the "meta" device (no weights allocated, nothing downloaded: a use_pretrained config
gets the same architecture from the built-in LFM2-700M config), counts FLOPs with FlopCounterMode over a
meta batch, and measures the tensors autograd saves for backward to estimate activation memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmfer.core.config import ExtractConfig, ModelConfig, TrainConfig
from mmfer.train.model.builder import FusionModel, build_model

# Forward GFLOP per clip of the frozen encoders, measured with FlopCounterMode on the real architectures
# (random weights): SigLIP2-base/16 at 224 px on 16 frames, FastConformer-large on 3.5 s (`mmfer bench` counts
# them again on its own clips).
ENCODER_GFLOPS_PER_CLIP: dict[str, float] = {"siglip2-base x16 frames": 544.0, "fastconformer-large 3.5 s": 10.0}
TRAIN_STEP_FLOPS_PER_FORWARD = 3.0   # forward + backward (about twice the forward)
CUDA_OVERHEAD_GB = 0.5               # CUDA context + allocator slack on a consumer card
CARD_SIZES_GB = (4, 6, 8)
GB = 1024**3
# SigLIP2-base, FastConformer-L, at extract's default frame count: the sizes before any cache exists
FULL_DIMS = {"video_dim": 768, "num_patches": 196, "num_frames": ExtractConfig().num_frames, "audio_dim": 512}
TYPICAL_AUDIO_FRAMES = 44   # Ta of a 3.5 s RAVDESS clip at 80 ms per FastConformer frame

log = logging.getLogger(__name__)


def dry_run_for_cache(cfg: TrainConfig, facts=None) -> dict:
    """dry_run with the feature sizes of cfg.cache when it exists (else the full encoders' sizes), the
    run's batch size, dropout, precision (fp16 when mixed_precision) and gradient checkpointing. `facts`
    (core/cache_facts.py): the cache as the command read it (None: read here)."""
    dims = dict(FULL_DIMS)
    if facts is not None or Path(cfg.cache).exists():
        from mmfer.train.dataset import open_cache

        cache = open_cache(facts if facts is not None else cfg.cache, use_video=cfg.model.uses_video, use_audio=cfg.model.uses_audio,
                           video_entry=cfg.video_entry, audio_entry=cfg.audio_entry)
        spec = cache.feature_spec   # the dims every consumer reads, in one place (core/feature_spec.py)
        if spec.video is not None:
            num_frames, num_patches, video_dim = spec.video_shape
            dims.update(num_frames=num_frames, num_patches=num_patches, video_dim=video_dim)
        if spec.audio is not None:
            dims.update(audio_dim=spec.audio_dim)
    else:
        log.info("%s: no cache yet; dry run with the full encoders' feature sizes %s", cfg.cache, dims)
    t = cfg.training
    fusion = dataclasses.replace(cfg.model.fusion,
                                 gradient_checkpointing=cfg.model.fusion.gradient_checkpointing or t.gradient_checkpointing)
    return dry_run(dataclasses.replace(cfg.model, fusion=fusion), batch_size=t.batch_size, dropout=t.dropout,
                   precision="fp16" if t.mixed_precision else "fp32", **dims)


def dry_run(
    cfg: ModelConfig, *, video_dim: int, num_patches: int, num_frames: int, audio_dim: int, batch_size: int,
    precision: str, dropout: float, audio_frames: int = TYPICAL_AUDIO_FRAMES, encoder_gflops: dict[str, float] | None = None,
) -> dict:
    """Parameters, forward GFLOP per clip and peak-memory estimates for `cfg` (see format_dry_run).

    num_frames is Tv, audio_frames is Ta (44 = 3.5 s of 80 ms frames); precision is fp16, bf16 or fp32.
    """
    if precision not in ("fp16", "bf16", "fp32"):
        raise ValueError(f"precision must be fp16, bf16 or fp32, got {precision!r}")
    cfg = _without_download(cfg)
    dims = dict(video_dim=video_dim, num_patches=num_patches, audio_dim=audio_dim, dropout=dropout)
    batch = _meta_batch(batch_size, num_frames, num_patches, video_dim, audio_frames, audio_dim)
    with torch.device("meta"):
        model = build_model(cfg, **dims)
    flops = _count_flops(model, batch)
    rows = _module_rows(model, flops, batch_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    encoder = dict(ENCODER_GFLOPS_PER_CLIP if encoder_gflops is None else encoder_gflops)
    forward_gflops = flops["Global"] / batch_size / 1e9
    encoder_total = sum(encoder.values())
    train_gflops = TRAIN_STEP_FLOPS_PER_FORWARD * forward_gflops

    modes = ("finetune", "frozen", "lora") if cfg.uses_lfm2 else ("finetune",)
    memory = {}
    for mode in modes:
        mode_cfg = dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, mode=mode))
        with torch.device("meta"):
            mode_model = build_model(mode_cfg, **dims)
        memory[mode] = _memory_estimate(mode_model, batch, precision)
    chosen = memory[cfg.fusion.mode if cfg.uses_lfm2 else "finetune"]
    peak = chosen["peak_ckpt_gb" if cfg.fusion.gradient_checkpointing else "peak_gb"]
    return {
        "variant": cfg.variant, "mode": cfg.fusion.mode, "batch_size": batch_size, "precision": precision,
        "gradient_checkpointing": cfg.fusion.gradient_checkpointing,
        "trainable_params": trainable, "frozen_params": frozen, "modules": rows,
        "forward_gflops_per_clip": forward_gflops, "train_step_gflops_per_clip": train_gflops,
        "encoder_gflops_per_clip": encoder_total, "encoder_gflops": encoder,
        "cache_speedup": (encoder_total + train_gflops) / train_gflops,
        "memory": memory, "peak_memory_gb": peak,
        **{f"fits_{size}gb": peak <= size for size in CARD_SIZES_GB},
    }


def format_dry_run(result: dict) -> str:
    """The dry-run result as console tables."""
    lines = [f"variant {result['variant']} (LFM2 mode {result['mode']}), batch {result['batch_size']}, "
             f"{result['precision']}", "",
             f"{'module':<22}{'trainable':>14}{'frozen':>14}{'GFLOP/clip':>12}"]
    for row in result["modules"]:
        lines.append(f"{row['name']:<22}{row['trainable_params']:>14,}{row['frozen_params']:>14,}{row['gflops_per_clip']:>12.2f}")
    lines.append(f"{'total':<22}{result['trainable_params']:>14,}{result['frozen_params']:>14,}"
                 f"{result['forward_gflops_per_clip']:>12.2f}")
    lines += ["", f"frozen encoders (once, at extract): {result['encoder_gflops_per_clip']:.0f} GFLOP/clip "
              f"({', '.join(f'{k} {v:g}' for k, v in result['encoder_gflops'].items())}); a cached training step "
              f"is {result['cache_speedup']:.0f}x cheaper than running them online", "",
              f"{'LFM2 mode':<10}{'trainable':>13}{'weights':>9}{'grads':>7}{'AdamW':>7}{'activ.':>8}"
              f"{'peak GB':>9}{'ckpt activ.':>12}{'ckpt peak':>10}  fits 4/6/8 GB (no ckpt | ckpt)"]
    for mode, m in result["memory"].items():
        fits = lambda key: "/".join("y" if m[key] <= s else "n" for s in CARD_SIZES_GB)  # noqa: E731
        lines.append(f"{mode:<10}{m['trainable_params']:>13,}{m['weights_gb']:>9.2f}{m['grads_gb']:>7.2f}"
                     f"{m['optimizer_gb']:>7.2f}{m['activations_gb']:>8.2f}{m['peak_gb']:>9.2f}"
                     f"{m['activations_ckpt_gb']:>12.2f}{m['peak_ckpt_gb']:>10.2f}  {fits('peak_gb')} | {fits('peak_ckpt_gb')}")
    lines.append(f"(estimates: fp32 weights + AdamW states, {result['precision']} activations, "
                 f"+{CUDA_OVERHEAD_GB} GB CUDA overhead)")
    return "\n".join(lines)


def _without_download(cfg: ModelConfig) -> ModelConfig:
    """Same architecture, random weights: use_pretrained=False (LFM2-700M's config is built in)."""
    return dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, use_pretrained=False))


def _meta_batch(b: int, tv: int, p: int, dv: int, ta: int, da: int) -> dict[str, torch.Tensor]:
    meta = torch.device("meta")
    ones = lambda *shape: torch.ones(*shape, dtype=torch.bool, device=meta)  # noqa: E731  True = real
    return {
        "video_tokens": torch.empty(b, tv, p, dv, device=meta), "frame_mask": ones(b, tv), "has_video": ones(b),
        "audio_tokens": torch.empty(b, ta, da, device=meta), "audio_mask": ones(b, ta), "has_audio": ones(b),
    }


def _count_flops(model: FusionModel, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Forward FLOPs per module name (FlopCounterMode's names: 'Global', 'FusionModel.audio', ...).

    Counted with every parameter's requires_grad off: FlopCounterMode's module tracker hooks autograd on any
    module argument that requires grad, and fails on a parameter passed as an argument (transformers 5.25 hands
    LFM2's conv weight to a hub-kernel module). FLOPs do not depend on requires_grad, so the count is the same
    whatever layers transformers wraps.
    """
    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad(), _params_without_grad(model):
        model(batch)
    return {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}


@contextlib.contextmanager
def _params_without_grad(model: nn.Module) -> Iterator[None]:
    """requires_grad off for every parameter inside the block, restored after it."""
    wanted = [(param, param.requires_grad) for param in model.parameters()]
    for param, _ in wanted:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param, requires_grad in wanted:
            param.requires_grad_(requires_grad)


ROWS = (("audio", ("audio", "audio_missing")), ("visual.compress", ("visual.compress",)),
        ("visual.temporal", ("visual.temporal", "visual_missing")), ("fusion.lfm2", ("fusion.backbone",)),
        ("fusion.inputs", ("fusion",)), ("heads", ("head", "audio_head", "visual_head")))


def _module_rows(model: FusionModel, flops: dict[str, float], batch_size: int) -> list[dict]:
    """Trainable/frozen parameters and forward GFLOP per clip for each part of the model."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, param in model.named_parameters():
        row = next(label for label, prefixes in ROWS if any(name == p or name.startswith(p + ".") for p in prefixes))
        counts[row][0 if param.requires_grad else 1] += param.numel()
    gflops = {}
    for label, prefixes in ROWS:
        gflops[label] = sum(flops.get(f"FusionModel.{p}", 0.0) for p in prefixes)
    gflops["fusion.inputs"] -= gflops["fusion.lfm2"]
    other = flops.get("Global", 0.0) - sum(gflops.values())  # segment pooling, missing-token selection
    rows = [{"name": label, "trainable_params": counts[label][0], "frozen_params": counts[label][1],
             "gflops_per_clip": gflops[label] / batch_size / 1e9} for label, _ in ROWS if label in counts]
    rows.append({"name": "other (pooling)", "trainable_params": 0, "frozen_params": 0,
                 "gflops_per_clip": max(other, 0.0) / batch_size / 1e9})
    return rows


def _checkpointed_layers(model: FusionModel) -> list[nn.Module]:
    """The layers set_gradient_checkpointing recomputes."""
    layers: list[nn.Module] = []
    if model.fusion is not None:
        layers += list(model.fusion.backbone.layers)
    if model.visual is not None:
        layers += list(model.visual.temporal.blocks)
    if model.audio is not None:
        layers += list(model.audio.blocks)
    return layers


def _saved_activation_bytes(model: FusionModel, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Bytes autograd saves in one training forward (fp32), without and with per-layer checkpointing.

    With checkpointing a layer keeps only its input, and one layer's activations live again during its
    recompute: total - sum(saved in layers) + sum(layer inputs) + max(saved in one layer).
    """
    param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, tuple[int, int | None]] = {}
    stack: list[int] = []
    inputs: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in param_storages and storage._cdata not in seen:
            seen[storage._cdata] = (storage.nbytes(), stack[-1] if stack else None)
        return t

    handles = []
    for i, layer in enumerate(_checkpointed_layers(model)):
        def pre(_module, args, i=i):  # noqa: ANN001
            stack.append(i)
            inputs[i] = args[0].numel() * args[0].element_size() if args else 0

        handles.append(layer.register_forward_pre_hook(pre))
        def post(*_) -> None:  # noqa: ANN002  returns None: the layer output stays as it is
            stack.pop()

        handles.append(layer.register_forward_hook(post))
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    total = float(sum(size for size, _ in seen.values()))
    per_layer: dict[int, float] = defaultdict(float)
    for size, layer in seen.values():
        if layer is not None:
            per_layer[layer] += size
    ckpt = total - sum(per_layer.values()) + sum(inputs.values()) + max(per_layer.values(), default=0.0)
    return total, ckpt


def _memory_estimate(model: FusionModel, batch: dict[str, torch.Tensor], precision: str) -> dict:
    """GPU memory at this batch: fp32 weights, grads and AdamW states, activations; GB = GiB."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    is_half = precision in ("fp16", "bf16")
    activations, activations_ckpt = _saved_activation_bytes(model, batch)
    scale = 0.5 if is_half else 1.0                    # measured in fp32; autocast keeps most of them in 16 bit
    weights = 4 * (trainable + frozen) + (2 * trainable if is_half else 0)  # + autocast's 16-bit weight copies
    fixed = weights + 4 * trainable + 8 * trainable + CUDA_OVERHEAD_GB * GB
    out = {
        "trainable_params": trainable, "frozen_params": frozen, "weights_gb": weights / GB,
        "grads_gb": 4 * trainable / GB, "optimizer_gb": 8 * trainable / GB,
        "activations_gb": scale * activations / GB, "activations_ckpt_gb": scale * activations_ckpt / GB,
        "peak_gb": (fixed + scale * activations) / GB, "peak_ckpt_gb": (fixed + scale * activations_ckpt) / GB,
    }
    for size in CARD_SIZES_GB:
        out[f"fits_{size}gb"] = out["peak_gb"] <= size
        out[f"fits_{size}gb_ckpt"] = out["peak_ckpt_gb"] <= size
    return out
