"""Small unit tests of the training pieces: losses, mixup, schedule, metrics, checkpoints, collation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfer.core.labels import EMOTIONS
from mmfer.core.config import TrainConfig, train_config_with_preset
from mmfer.train.checkpoint import CheckpointError, load_checkpoint, previous_path, save_checkpoint
from mmfer.train.curriculum import epoch_subset
from mmfer.train.dataset import collate_clips, prefetch
from mmfer.train.losses import (
    ContrastiveLoss,
    EmotionLoss,
    MultimodalLoss,
    class_weights_from_labels,
    resolve_class_weights,
)
from mmfer.train.metrics import aggregate_folds, compute_metrics, mean_nll
from mmfer.train.mixup import mix_batch, sample_mixup
from mmfer.train.report import build_summary, format_summary_table
from mmfer.train.schedule import EarlyStopping, EpochSchedule, build_optimizer


def test_class_weights_from_frequencies():
    weights = class_weights_from_labels(np.array([0, 0, 0, 1]), num_classes=3)
    assert torch.allclose(weights, torch.tensor([4 / 6, 2.0, 0.0]))
    assert resolve_class_weights("none", np.array([0]), 8) is None
    given = resolve_class_weights("1,1.2,1,1.1,1,1.3,1.2,1", np.array([0]), 8)
    assert given[5].item() == pytest.approx(1.3)
    balanced = class_weights_from_labels(np.repeat(np.arange(8), 5), 8)
    assert torch.allclose(balanced, torch.ones(8))


def test_emotion_loss_weights_smoothing_and_mixup():
    logits, a, b = torch.randn(6, 8), torch.randint(0, 8, (6,)), torch.randint(0, 8, (6,))
    weights = torch.rand(8) + 0.5
    loss = EmotionLoss(label_smoothing=0.1, class_weights=weights)
    want = 0.3 * F.cross_entropy(logits, a, weight=weights, label_smoothing=0.1) + \
        0.7 * F.cross_entropy(logits, b, weight=weights, label_smoothing=0.1)
    assert loss(logits, a, b, 0.3).item() == pytest.approx(want.item(), rel=1e-5)


def test_multimodal_loss_weights_and_masks_aux_losses():
    labels = torch.tensor([0, 1, 2, 3])
    outputs = {"logits": torch.randn(4, 8), "audio_logits": torch.randn(4, 8), "visual_logits": torch.randn(4, 8)}
    has_audio = torch.tensor([True, True, False, True])
    has_video = torch.ones(4, dtype=torch.bool)
    parts = MultimodalLoss(label_smoothing=0.0, class_weights=None, alpha_fusion=1.0, alpha_audio=0.3, alpha_visual=0.3,
                           contrastive=None, contrastive_weight=0.0)(outputs, labels, has_audio=has_audio, has_video=has_video)
    ce = F.cross_entropy
    assert parts["loss_audio"].item() == pytest.approx(ce(outputs["audio_logits"][has_audio], labels[has_audio]).item(), rel=1e-5)
    want = ce(outputs["logits"], labels) + 0.3 * parts["loss_audio"] + 0.3 * ce(outputs["visual_logits"], labels)
    assert parts["loss"].item() == pytest.approx(want.item(), rel=1e-5)


def test_contrastive_loss_prefers_aligned_pairs_and_projects_widths():
    loss = ContrastiveLoss(audio_dim=6, visual_dim=10, temperature=0.07)
    assert isinstance(loss.visual_proj, nn.Linear) and loss.visual_proj.out_features == 6
    same = ContrastiveLoss(audio_dim=6, visual_dim=6)
    base = torch.randn(5, 3, 6)
    both = torch.ones(5, dtype=torch.bool)
    aligned = same(base, base, both)
    shuffled = same(base, base[torch.tensor([1, 2, 3, 4, 0])], both)
    assert aligned < shuffled
    assert same(base, base, torch.tensor([True, False, False, False, False])).item() == 0.0


def _batch(labels: list[int]) -> dict:
    b = len(labels)
    value = torch.tensor(labels, dtype=torch.float32)
    return {"video_tokens": value.view(b, 1, 1, 1).expand(b, 2, 3, 4).clone(),
            "video_pooled": value.view(b, 1, 1).expand(b, 2, 4).clone(),
            "audio_tokens": value.view(b, 1, 1).expand(b, 5, 3).clone(),
            "frame_mask": torch.ones(b, 2, dtype=torch.bool), "has_video": torch.ones(b, dtype=torch.bool),
            "audio_mask": torch.tensor([[True] * (i + 1) + [False] * (4 - i) for i in range(b)]),
            "has_audio": torch.tensor([i % 2 == 0 for i in range(b)]), "labels": torch.tensor(labels)}


def test_mixup_mixes_features_and_labels_with_one_lambda_and_permutation():
    batch = dict(_batch([0, 1, 2, 3]), is_standardized=True)
    lam, perm = sample_mixup(np.random.default_rng(3), 0.2, 4)
    assert sorted(perm.tolist()) == [0, 1, 2, 3] and 0 <= lam <= 1
    mixed, labels_b = mix_batch(batch, lam, perm)
    assert labels_b.tolist() == [batch["labels"][p].item() for p in perm]
    # each clip's features hold its label value, so the mixed features must equal the mixed labels
    want = lam * batch["labels"].float() + (1 - lam) * labels_b.float()
    for name in ("video_tokens", "video_pooled"):
        got = mixed[name].flatten(1)
        assert torch.allclose(got, want[:, None].expand_as(got), atol=1e-6), name
    again = sample_mixup(np.random.default_rng(3), 0.2, 4)
    assert again[0] == lam and np.array_equal(again[1], perm)
    assert sample_mixup(np.random.default_rng(0), 0.0, 3)[0] == 1.0


def test_mixup_keeps_each_clips_masks_and_presence_and_padding_neutral():
    """Padding and a missing modality count as 0 (the standardized mean), never as data, and no clip gains
    audio or real frames from its partner: a no-audio clip stays no-audio."""
    from mmfer.train.model.normalize import FeatureNorm

    raw = _batch([0, 1, 2, 3])      # clips 1 and 3 have no audio; clip i has i + 1 real audio frames
    with pytest.raises(ValueError, match="standardize"):
        mix_batch(raw, 0.5, np.array([1, 0, 3, 2]))
    norm = FeatureNorm((3, 4), 3)
    norm.set_statistics({"audio_mean": np.full(3, 5.0), "audio_std": np.full(3, 0.5)})
    batch = norm(raw)
    assert norm(batch) is batch                                          # standardized once, not twice
    perm = np.array([1, 0, 3, 2])                                        # audio clip 0 <-> no-audio clip 1, ...
    mixed, _ = mix_batch(batch, 0.7, perm)
    for name in ("audio_mask", "has_audio", "frame_mask", "has_video"):
        assert torch.equal(mixed[name], raw[name]), name                 # each clip's own, not OR-ed
    assert mixed["has_audio"].tolist() == [True, False, True, False]
    real = raw["audio_mask"] & raw["has_audio"][:, None]
    standardized = (raw["audio_tokens"] - 5.0) / 0.5 * real[:, :, None]
    want = 0.7 * standardized + 0.3 * standardized[torch.as_tensor(perm)]
    assert torch.allclose(mixed["audio_tokens"], want, atol=1e-6)
    # clip 0's real frames take 0.7 of its own value and nothing from its no-audio partner (not -mean/std)
    assert torch.allclose(mixed["audio_tokens"][0, :1], 0.7 * standardized[0, :1])
    assert mixed["audio_tokens"][0, 1:].abs().max() == 0                # its padding stays neutral


def _optimizer() -> torch.optim.Optimizer:
    groups = {"branches": [nn.Parameter(torch.zeros(2))], "fusion": [nn.Parameter(torch.zeros(2))],
              "classifier": [nn.Parameter(torch.zeros(2))]}
    return build_optimizer(groups, lr_branches=1e-4, lr_fusion=5e-5, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999))


def test_warmup_then_cosine_learning_rates():
    optimizer = _optimizer()
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 5e-5, 1e-3]
    schedule = EpochSchedule(optimizer, kind="CosineAnnealingWarmRestarts", warmup_epochs=5, cosine_t0=10,
                             cosine_t_mult=2, eta_min=1e-6, plateau_factor=0.5, plateau_patience=5)
    seen = [schedule.lrs()["classifier"]]
    for _ in range(7):
        schedule.step(0.5)
        seen.append(schedule.lrs()["classifier"])
    want = [1e-3 * (0.01 + 0.99 * e / 5) for e in range(6)]
    want += [1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * k / 10)) / 2 for k in (1, 2)]
    assert seen == pytest.approx(want, rel=1e-9)
    assert schedule.lrs()["branches"] == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + math.cos(math.pi * 2 / 10)) / 2)


def test_plateau_halves_after_patience_and_state_round_trips():
    optimizer = _optimizer()
    schedule = EpochSchedule(optimizer, kind="ReduceLROnPlateau", warmup_epochs=1, cosine_t0=10, cosine_t_mult=2,
                             eta_min=1e-6, plateau_factor=0.5, plateau_patience=2)
    for _ in range(5):
        schedule.step(0.5)
    assert schedule.lrs()["classifier"] == pytest.approx(5e-4)
    other = EpochSchedule(_optimizer(), kind="ReduceLROnPlateau", warmup_epochs=1, cosine_t0=10, cosine_t_mult=2,
                          eta_min=1e-6, plateau_factor=0.5, plateau_patience=2)
    other.load_state_dict(schedule.state_dict())
    assert other.epoch == 5


def test_early_stopping_min_delta_and_patience():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert stopper.update(0.5, 0)
    assert not stopper.update(0.505, 1)   # below min_delta
    assert stopper.update(0.6, 2)
    assert not stopper.update(0.6, 3) and not stopper.should_stop
    assert not stopper.update(0.59, 4) and stopper.should_stop
    assert stopper.best_epoch == 2


def test_a_tied_validation_metric_goes_to_the_lower_validation_loss():
    """tie_break=val_nll: once macro-F1 saturates, a later epoch with equal F1 and lower NLL is the best one."""
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert stopper.update(0.9, 0, tie_loss=0.8)
    assert stopper.update(1.0, 1, tie_loss=0.6)
    assert stopper.update(1.0, 2, tie_loss=0.4) and stopper.best_epoch == 2 and stopper.bad_epochs == 0
    assert not stopper.update(1.0, 3, tie_loss=0.5)              # tied, higher loss
    assert not stopper.update(0.995, 4, tie_loss=0.1)            # lower metric: the loss does not count
    assert stopper.should_stop and stopper.best_epoch == 2
    earliest = EarlyStopping(patience=2, min_delta=0.01)      # tie_break=none: the loop passes no loss
    assert earliest.update(1.0, 0) and not earliest.update(1.0, 1) and earliest.best_epoch == 0


def test_metrics_and_fold_aggregation():
    labels = np.array([0, 0, 0, 0, 1, 1])
    preds = np.array([0, 0, 0, 0, 0, 1])
    m = compute_metrics(labels, preds, class_names=EMOTIONS)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["uar"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["per_class"]["calm"]["recall"] == pytest.approx(0.5)
    assert m["confusion_matrix"][1][0] == 1 and len(m["confusion_matrix"]) == 8
    mean, std = aggregate_folds([{**m, "accuracy": 0.5}, {**m, "accuracy": 1.0}])
    assert mean["accuracy"] == pytest.approx(0.75) and std["accuracy"] == pytest.approx(0.25 * math.sqrt(2))
    table = format_summary_table({"folds": {"fold1": m}, "mean": mean, "std": std})
    assert "fold1" in table and "mean" in table


def test_validation_nll_is_the_plain_cross_entropy_of_the_true_class():
    """metrics.jsonl's val_nll: what torch's cross-entropy gives on the log-probabilities, no smoothing."""
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    probs = logits.softmax(1).numpy()
    assert mean_nll(labels.numpy(), probs) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert mean_nll(np.array([1]), np.array([[1.0, 0.0]])) == pytest.approx(-math.log(1e-12))   # finite when p = 0


def test_one_spread_convention_sample_std_labelled():
    from mmfer.train.studies.stats import mean_std_ci

    values = [0.5, 1.0, 0.6]
    _, std = aggregate_folds([{k: v for k in ("accuracy", "uar", "f1_macro", "f1_weighted")} for v in values])
    assert std["accuracy"] == pytest.approx(float(np.std(values, ddof=1)))   # not the population std
    assert std["accuracy"] == pytest.approx(mean_std_ci(values)["std"])       # train-fusion == ablate
    one_mean, one_std = aggregate_folds([{k: 0.5 for k in ("accuracy", "uar", "f1_macro", "f1_weighted")}])
    assert one_std["accuracy"] is None and math.isnan(mean_std_ci([0.5])["std"])   # undefined, not 0
    summary = build_summary([], {"fold1": {"accuracy": 0.5, "uar": 0.5, "f1_macro": 0.5, "f1_weighted": 0.5}},
                            one_mean, one_std, {})
    assert summary["std_kind"] == "sample std (ddof=1) over folds"
    table = format_summary_table(summary)
    assert "± = sample std (ddof=1) over folds" in table and "n/a" in table


def test_checkpoint_atomic_and_falls_back_to_previous(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(2)})
    save_checkpoint(path, {"epoch": 2, "w": torch.ones(2)})
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    path.write_bytes(path.read_bytes()[:50])   # a truncated file
    assert load_checkpoint(path)["epoch"] == 1
    previous_path(path).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(path)


def test_collate_pads_audio_and_marks_missing_modalities():
    items = [
        {"clip_id": "a", "label": 1, "has_video": True, "has_audio": True, "video_tokens": np.ones((2, 4, 3), np.float16),
         "video_pooled": np.ones((2, 3), np.float16), "audio_tokens": np.ones((3, 5), np.float16)},
        {"clip_id": "b", "label": 2, "has_video": True, "has_audio": False, "video_tokens": np.ones((2, 4, 3), np.float16),
         "video_pooled": np.ones((2, 3), np.float16)},
        {"clip_id": "c", "label": 3, "has_video": False, "has_audio": True, "audio_tokens": np.ones((5, 5), np.float16)},
    ]
    batch = collate_clips(items)
    assert batch["video_tokens"].shape == (3, 2, 4, 3) and batch["audio_tokens"].shape == (3, 5, 5)
    assert batch["audio_mask"].sum(1).tolist() == [3, 0, 5]
    assert batch["frame_mask"].sum(1).tolist() == [2, 2, 0]
    assert batch["has_audio"].tolist() == [True, False, True] and batch["has_video"].tolist() == [True, True, False]
    assert batch["audio_tokens"][0, 3:].abs().sum() == 0 and batch["video_tokens"].dtype == torch.float16
    assert batch["clip_ids"] == ["a", "b", "c"] and batch["labels"].tolist() == [1, 2, 3]


def test_prefetch_yields_in_order_and_reraises():
    assert list(prefetch(iter(range(10)), depth=2)) == list(range(10))

    def broken():
        yield 1
        raise KeyError("clip x")

    with pytest.raises(KeyError, match="clip x"):
        list(prefetch(broken()))


def test_curriculum_grows_from_easiest_half():
    clip_ids = ["a", "b", "c", "d"]
    confidence = {"a": 0.1, "b": 0.9, "c": 0.5}
    first = epoch_subset(np.arange(4), clip_ids, confidence, epoch=0, curriculum_epochs=2)
    assert first.tolist() == [1, 2]
    assert sorted(epoch_subset(np.arange(4), clip_ids, confidence, epoch=2, curriculum_epochs=2).tolist()) == [0, 1, 2, 3]


def test_tiny_preset_keeps_explicit_values():
    cfg = train_config_with_preset({"preset": "tiny", "model.visual.out_dim": 96})
    assert cfg.model.visual.out_dim == 96 and cfg.model.audio.feature_dim == 128
    kept = train_config_with_preset({"preset": "tiny", "training.max_epochs": TrainConfig().training.max_epochs})
    assert kept.training.max_epochs == TrainConfig().training.max_epochs   # a value equal to the full default wins too
    assert cfg.model.fusion.use_pretrained is False


@pytest.mark.parametrize("capability, want", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_amp_dtype_is_bf16_only_where_the_chosen_gpu_has_it_natively(monkeypatch, capability, want):
    """V100 (7.0) and T4 (7.5) emulate bf16 (is_bf16_supported() says True): fp16 + GradScaler there. The
    encoders' autocast at extraction (policy auto) follows the same rule."""
    from mmfer.extract.encoders.siglip import encoder_autocast_dtype
    from mmfer.train.loop import autocast_dtype, dtype_name

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    assert autocast_dtype(torch.device("cuda:1"), True) == want
    assert asked == [torch.device("cuda:1")]                                  # the chosen device, not the current one
    assert autocast_dtype(torch.device("cuda:1"), False) is None
    assert autocast_dtype(torch.device("cpu"), True) is None
    assert dtype_name(want) == str(want).removeprefix("torch.") and dtype_name(None) == "float32"
    asked.clear()
    assert encoder_autocast_dtype(torch.device("cuda:1"), "auto") == want and asked == [torch.device("cuda:1")]
    assert encoder_autocast_dtype(torch.device("cpu"), "auto") is None
