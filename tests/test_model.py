"""Stage-2 model: shapes of every variant, masks, missing modalities, freezing/LoRA, truncated-LFM2 parity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_inputs import DA, DV, TA, TV, B, P, make_batch, make_model, tiny_config
from transformers import Lfm2Config, Lfm2ForCausalLM, Lfm2Model

from mmfer.core.config import FusionConfig
from mmfer.train.model.builder import build_model, param_groups
from mmfer.train.model.fusion import CheckpointNotFoundError, LfmFusion, build_backbone, lfm2_config, resolve_checkpoint


def assert_same(a: dict, b: dict) -> None:
    for key in ("logits", "fused", "audio_features", "visual_features"):
        if a[key] is not None:
            diff = (a[key] - b[key]).abs()
            assert torch.allclose(a[key], b[key], atol=1e-5), f"{key}: max diff {diff.max():.3g}, mean {diff.mean():.3g}"


@pytest.mark.parametrize("variant", ["lfm2", "early", "audio", "visual"])
def test_every_variant_gives_contract_shapes(variant: str) -> None:
    model = make_model(variant).eval()
    out = model(make_batch())
    assert out["logits"].shape == (B, 8)
    assert torch.allclose(out["probabilities"].sum(-1), torch.ones(B))
    has_audio, has_visual = variant != "visual", variant != "audio"
    assert (out["audio_features"] is not None) == has_audio
    assert (out["visual_features"] is not None) == has_visual
    if has_audio:
        assert out["audio_features"].shape == (B, 8, 128)
    if has_visual:
        assert out["visual_features"].shape == (B, 16, 128)
    both = variant in ("lfm2", "early")
    assert (out["audio_logits"] is not None) == both and (out["visual_logits"] is not None) == both
    assert out["fused"].shape == (B, {"lfm2": 128, "early": 256, "audio": 128, "visual": 128}[variant])


def test_padded_positions_change_nothing() -> None:
    model = make_model().eval()
    batch = make_batch()
    other = {k: v.clone() for k, v in batch.items()}
    other["audio_tokens"][~batch["audio_mask"]] = 1e3 * torch.randn(int((~batch["audio_mask"]).sum()), DA)
    other["video_tokens"][~batch["frame_mask"]] = 1e3
    with torch.no_grad():
        a, b = model(batch), model(other)
    assert_same(a, b)
    # and the real positions do matter
    other["audio_tokens"][0, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(other)["audio_features"][0], a["audio_features"][0])


@pytest.mark.parametrize("variant", ["lfm2", "early"])
def test_mixed_missing_modalities_ignore_their_tokens(variant: str) -> None:
    model = make_model(variant).eval()
    batch = make_batch()
    batch["has_audio"] = torch.tensor([True, False, True, False])
    batch["has_video"] = torch.tensor([True, True, False, False])
    other = {k: v.clone() for k, v in batch.items()}
    other["audio_tokens"][~batch["has_audio"]] = torch.randn(2, TA, DA)
    other["video_tokens"][~batch["has_video"]] = torch.randn(2, TV, P, DV)
    with torch.no_grad():
        a, b = model(batch), model(other)
    assert_same(a, b)
    assert torch.isfinite(a["logits"]).all()
    # a clip without audio still predicts from its video: different videos, different logits
    other["video_tokens"][1] = torch.randn(TV, P, DV)
    with torch.no_grad():
        assert not torch.allclose(model(other)["logits"][1], a["logits"][1])
    model.train()
    model(batch)["logits"].sum().backward()


def _step(model, batch) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(batch)
    loss = torch.nn.functional.cross_entropy(out["logits"], batch["labels"])
    loss = loss + out["audio_logits"].sum() * 0.0 + out["visual_logits"].sum() * 0.0
    loss.backward()
    opt.step()


def test_frozen_lfm2_gets_no_grads_and_keeps_its_weights() -> None:
    model = make_model(mode="frozen").train()
    before = {k: v.clone() for k, v in model.fusion.backbone.state_dict().items()}
    head_before = model.head.net[1].weight.clone()
    _step(model, make_batch())
    assert all(p.grad is None and not p.requires_grad for p in model.fusion.backbone.parameters())
    for key, value in model.fusion.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.head.net[1].weight, head_before)
    assert model.fusion.audio_proj.weight.grad is not None   # gradients still flow through frozen LFM2


def test_lora_trains_only_adapters() -> None:
    model = make_model(mode="lora").train()
    trainable = [n for n, p in model.fusion.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = {n: p.clone() for n, p in model.fusion.backbone.named_parameters() if "lora_" not in n}
    _step(model, make_batch())
    for name, param in model.fusion.backbone.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name]), name
    assert all(model.fusion.backbone.get_parameter(n).grad is not None for n in trainable)


def test_every_trainable_param_gets_a_finite_gradient() -> None:
    model = make_model(dropout=0.1).train()
    batch = make_batch()
    out = model(batch)
    loss = out["logits"].logsumexp(-1).sum() + out["audio_logits"].sum() + out["visual_logits"].sum()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for enabled in (False, True):
        model = make_model(gradient_checkpointing=enabled).train()
        model(make_batch())["logits"].pow(2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        if grads[0][name] is None:  # the auxiliary heads are not in this loss
            assert grads[1][name] is None and "aux" not in name and name.split(".")[0].endswith("_head"), name
            continue
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


@pytest.mark.parity
def test_truncated_lfm2_matches_transformers_lfm2model(tmp_path) -> None:
    torch.manual_seed(0)
    full = lfm2_config("tiny", False, 5, 64)
    full = Lfm2Config(**{**full.to_dict(), "vocab_size": 100})
    lm = Lfm2ForCausalLM(full)
    lm.save_pretrained(tmp_path)
    num_layers = 3
    config = lfm2_config(str(tmp_path), True, num_layers, 0)
    ours = build_backbone(config, resolve_checkpoint(str(tmp_path)))
    assert ours.embed_tokens is None and len(ours.layers) == num_layers
    reference_cfg = Lfm2Config(**{**full.to_dict(), "num_hidden_layers": num_layers,
                                  "layer_types": full.layer_types[:num_layers]})
    reference = Lfm2Model(reference_cfg)
    state = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
    reference.load_state_dict({k: v for k, v in state.items()
                               if not k.startswith("layers.") or int(k.split(".")[1]) < num_layers})
    fusion = LfmFusion(ours, 16, 16, 2, 2).eval()
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        got, want = fusion.encode(x), reference(inputs_embeds=x).last_hidden_state
    diff = (got - want).abs()
    assert torch.allclose(got, want, atol=1e-5), f"max diff {diff.max():.3g}, mean {diff.mean():.3g}"
    # and through build_model with a local checkpoint folder
    cfg = dataclasses.replace(tiny_config(), fusion=FusionConfig(pretrained_model=str(tmp_path), num_layers=num_layers))
    model = build_model(cfg, video_dim=DV, num_patches=P, audio_dim=DA, dropout=0.0)
    for key, value in reference.layers.state_dict().items():
        assert torch.equal(model.fusion.backbone.layers.state_dict()[key], value), key


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    cfg = dataclasses.replace(tiny_config(), fusion=FusionConfig(pretrained_model=str(tmp_path / "absent")))
    with pytest.raises(CheckpointNotFoundError, match="hf download"):
        build_model(cfg, video_dim=DV, num_patches=P, audio_dim=DA, dropout=0.0)


def test_param_groups_split_trainable_params() -> None:
    model = make_model(mode="frozen")
    groups = param_groups(model)
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert groups["fusion"] and groups["branches"] and groups["classifier"]
    assert {id(p) for p in model.head.parameters()} <= {id(p) for p in groups["classifier"]}


def test_branch_weights_round_trip() -> None:
    source, target = make_model("audio").eval(), make_model("lfm2").eval()
    with torch.no_grad():
        source.audio.proj.weight.add_(1.0)
    target.load_branch_state_dict("audio", source.branch_state_dict("audio"), freeze=True)
    batch = make_batch()
    with torch.no_grad():
        assert torch.allclose(source(batch)["audio_features"], target(batch)["audio_features"], atol=1e-6)
    assert not any(p.requires_grad for p in target.audio.parameters())
    with pytest.raises(ValueError, match="no 'visual' branch"):
        source.branch_state_dict("visual")


def test_a_checkpoint_rebuilds_its_model_alone(tmp_path):
    """The saved spec (widths, dims, variant, dropout) rebuilds the model without any config or cache."""
    from mmfer.train.checkpoint import load_checkpoint, save_checkpoint
    from mmfer.train.model.builder import build_model_from_spec

    model = make_model("early", dropout=0.25).eval()
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "model_spec": model.spec})
    state = load_checkpoint(tmp_path / "best.pt")
    rebuilt = build_model_from_spec(state["model_spec"]).eval()
    rebuilt.load_state_dict(state["model"])
    assert rebuilt.variant == "early" and rebuilt.spec == model.spec and state["model_spec"]["dropout"] == 0.25
    assert state["model_spec"]["num_patches"] == P and state["model_spec"]["audio_dim"] == DA
    batch = make_batch()
    assert_same(model(batch), rebuilt(batch))


def test_branch_constructors_take_keywords_only():
    from mmfer.train.model.audio_branch import AudioBranch
    from mmfer.train.model.visual_branch import VisualBranch

    with pytest.raises(TypeError):
        AudioBranch(DA, 32, 1, 2, 4, 64, 0.0)
    with pytest.raises(TypeError):
        VisualBranch(DV, P, 8, 16, 32, 1, 2, 16, 4, 0.0)
