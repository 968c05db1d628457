"""Dry run: its parameter and FLOP counts match direct ones; the full default config meets the budget."""

from __future__ import annotations

import dataclasses

import torch
from model_inputs import DA, DV, TA, TV, P, make_batch, tiny_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mmfer.core.config import ModelConfig, TrainingConfig
from mmfer.train.dryrun import FULL_DIMS, dry_run, dry_run_for_cache, format_dry_run
from mmfer.train.model.builder import build_model

DIMS = dict(video_dim=DV, num_patches=P, audio_dim=DA, dropout=0.1)


def test_tiny_dry_run_matches_direct_counts() -> None:
    cfg = tiny_config(mode="frozen")
    result = dry_run(cfg, num_frames=TV, audio_frames=TA, batch_size=4, precision="fp16", **DIMS)
    model = build_model(cfg, **DIMS)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert (result["trainable_params"], result["frozen_params"]) == (trainable, frozen)
    assert frozen == sum(p.numel() for p in model.fusion.backbone.parameters())
    assert sum(r["trainable_params"] for r in result["modules"]) == trainable
    assert sum(r["frozen_params"] for r in result["modules"]) == frozen
    for mode, memory in result["memory"].items():
        reference = build_model(dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, mode=mode)), **DIMS)
        assert memory["trainable_params"] == sum(p.numel() for p in reference.parameters() if p.requires_grad), mode
        assert memory["activations_ckpt_gb"] < memory["activations_gb"], mode
    assert result["memory"]["lora"]["trainable_params"] > result["memory"]["frozen"]["trainable_params"]

    counter = FlopCounterMode(display=False)   # FLOPs of a real forward on a real tiny batch
    model.eval()
    # the CPU's fused attention kernel is invisible to FlopCounterMode; the math backend is counted
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(make_batch())
    direct = counter.get_total_flops() / 4 / 1e9
    assert abs(result["forward_gflops_per_clip"] - direct) <= 1e-6 * direct, (result["forward_gflops_per_clip"], direct)
    assert abs(sum(r["gflops_per_clip"] for r in result["modules"]) - direct) <= 1e-6 * direct
    text = format_dry_run(result)
    assert "fusion.lfm2" in text and "total" in text and "lora" in text


def test_full_default_config_meets_the_flop_budget_offline() -> None:
    t = TrainingConfig()   # use_pretrained=True: architecture from the built-in LFM2-700M config
    result = dry_run(ModelConfig(), **FULL_DIMS, batch_size=t.batch_size, precision="fp16", dropout=t.dropout)
    lfm2 = next(r for r in result["modules"] if r["name"] == "fusion.lfm2")
    assert abs(lfm2["trainable_params"] - 241.47e6) < 0.01e6   # LFM2-700M's first 6 layers
    assert result["forward_gflops_per_clip"] <= 20.0
    assert result["encoder_gflops_per_clip"] == 554.0
    assert result["cache_speedup"] >= 10.0
    for key in ("trainable_params", "frozen_params", "peak_memory_gb", "fits_4gb", "fits_6gb", "fits_8gb"):
        assert key in result
    assert result["memory"]["frozen"]["peak_gb"] < result["memory"]["finetune"]["peak_gb"]
    assert result["memory"]["lora"]["fits_4gb"]


def test_branch_only_variants_report_one_mode() -> None:
    result = dry_run(dataclasses.replace(tiny_config(), variant="audio"), num_frames=TV, audio_frames=TA, batch_size=4,
                     precision="fp16", **DIMS)
    assert list(result["memory"]) == ["finetune"] and result["frozen_params"] == 0
    assert [r["name"] for r in result["modules"]] == ["audio", "heads", "other (pooling)"]


def test_dry_run_for_a_run_config_without_cache(tmp_path) -> None:
    from mmfer.core.config import TrainConfig, TrainingConfig

    cfg = TrainConfig(cache=str(tmp_path / "no-cache"), model=tiny_config(),
                      training=TrainingConfig(batch_size=2, gradient_checkpointing=True, mixed_precision=False))
    result = dry_run_for_cache(cfg)
    assert (result["batch_size"], result["precision"], result["gradient_checkpointing"]) == (2, "fp32", True)
    assert result["peak_memory_gb"] == result["memory"]["finetune"]["peak_ckpt_gb"]


class _HubKernelStyleLayer(torch.nn.Module):
    """A layer that hands a view of its own weight, made under no_grad, to a child module, as transformers 5.25's
    hub-kernel wrappers do with LFM2's short convolution (`causal_conv1d_forward(x, conv.weight.view(...))`)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(8, 8))
        self.kernel = _Linear()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.kernel(batch["x"], self.weight.view(8, 8))


class _Linear(torch.nn.Module):
    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, weight)


def test_flop_count_does_not_depend_on_how_a_layer_is_wrapped() -> None:
    """FlopCounterMode's module tracker failed with 'Expected gradient function to be set' on such a layer."""
    from mmfer.train.dryrun import _count_flops

    for device in ("cpu", "meta"):
        with torch.device(device):
            layer = _HubKernelStyleLayer()
        flops = _count_flops(layer, {"x": torch.empty(4, 8, device=device)})
        assert flops["Global"] == 2 * 4 * 8 * 8, (device, flops)
        assert layer.weight.requires_grad, "the count must leave requires_grad as it found it"
