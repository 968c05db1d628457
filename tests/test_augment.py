"""Feature-space augmentation (train/augment.py): each one changes the training inputs as its config field
says, and a real tiny training run never changes the validation or test inputs.

Unit checks run on the random batches of tests/model_inputs.py; the run checks train the tiny preset on
the synthetic store (tests/synthetic_store.py) and record every batch the model sees with a torch hook.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from model_inputs import make_batch, make_model
from synthetic_store import make_store, write_fold_file
from train_helpers import tiny_config, train_recording_inputs

from mmfer.core.config import TrainingConfig
from mmfer.train.augment import augment_batch, cutmix_time


def _standardized(seed: int = 1) -> dict:
    return dict(make_batch(seed), is_standardized=True)


def _augment(batch: dict, seed: int = 0, **fields) -> dict:
    return augment_batch(batch, np.random.default_rng(seed), TrainingConfig(**fields))


def test_off_changes_nothing_and_raw_batches_are_refused():
    batch = _standardized()
    out = _augment(batch)
    for name, value in batch.items():
        assert torch.equal(out[name], value) if isinstance(value, torch.Tensor) else out[name] == value, name
    with pytest.raises(ValueError, match="standardize"):
        augment_batch(make_batch(), np.random.default_rng(0), TrainingConfig(patch_drop=0.5))


def test_frame_dropout_masks_frames_keeps_one_and_leaves_the_input_alone():
    batch = _standardized()
    before = batch["frame_mask"].clone()
    out = _augment(batch, video_frame_drop=0.6)
    assert torch.equal(batch["frame_mask"], before)                        # the caller's batch is not modified
    assert not (out["frame_mask"] & ~before).any()                          # no padded frame becomes real
    assert (out["frame_mask"].sum(1) >= 1).all() and out["frame_mask"].sum() < before.sum()
    assert torch.equal(out["video_tokens"], batch["video_tokens"])         # dropped by the mask, values kept


def test_time_masks_hide_one_contiguous_block_within_real_frames():
    batch = _standardized()
    out = _augment(batch, seed=3, video_time_mask=0.5, audio_time_mask=0.5)
    for name, axis_len in (("video_tokens", batch["video_tokens"].shape[1]), ("audio_tokens", None)):
        changed = (out[name] != batch[name]).flatten(2).any(2)                # (B, T) positions changed
        assert changed.any(), name
        for row in changed:
            hit = torch.nonzero(row).flatten()
            if len(hit):
                assert hit[-1] - hit[0] + 1 == len(hit), name               # one contiguous block
        assert (out[name][changed] == 0).all(), name                        # set to the training mean (0)
    padded = ~batch["audio_mask"]
    assert torch.equal(out["audio_tokens"][padded], batch["audio_tokens"][padded])   # padding untouched
    assert torch.equal(out["frame_mask"], batch["frame_mask"]) and torch.equal(out["audio_mask"], batch["audio_mask"])


def test_audio_channel_mask_and_patch_dropout():
    batch = _standardized()
    out = _augment(batch, seed=5, audio_channel_mask=0.5)
    hidden = (out["audio_tokens"] == 0).all(dim=1)                          # (B, Da) channels zero in all frames
    assert hidden.any() and hidden.sum() <= batch["audio_tokens"].shape[0] * round(0.5 * batch["audio_tokens"].shape[2])
    out = _augment(batch, seed=5, patch_drop=0.3)
    dropped = (out["video_tokens"] == 0).all(-1).float()                    # (B, Tv, P)
    assert 0.2 < dropped.mean() < 0.4
    kept = dropped == 0
    assert torch.equal(out["video_tokens"][kept], batch["video_tokens"][kept])


def test_modality_dropout_uses_the_learned_missing_embedding():
    batch = _standardized()
    out = _augment(batch, seed=2, modality_dropout=0.5)
    assert not (~out["has_audio"] & ~out["has_video"]).any()               # never both
    assert (~out["has_audio"]).any() or (~out["has_video"]).any()
    model = make_model("early").eval()
    dropped_audio = ~out["has_audio"]
    changed = dict(out, audio_tokens=out["audio_tokens"] + 5.0)            # the dropped clips' audio is not read
    with torch.no_grad():
        a, b = model(out), model(changed)
    assert torch.allclose(a["logits"][dropped_audio], b["logits"][dropped_audio])
    if dropped_audio.any():
        features = a["audio_features"][dropped_audio]
        assert torch.allclose(features, model.audio_missing.expand_as(features))


def test_feature_noise_has_the_stated_std_on_real_positions_only():
    batch = _standardized()
    out = _augment(batch, feature_noise=0.2)
    diff = out["video_tokens"] - batch["video_tokens"]
    assert abs(float(diff[batch["frame_mask"]].std()) - 0.2) < 0.02
    assert (diff[~batch["frame_mask"]] == 0).all()
    adiff = out["audio_tokens"] - batch["audio_tokens"]
    assert (adiff[~batch["audio_mask"]] == 0).all() and adiff[batch["audio_mask"]].abs().max() > 0


def test_cutmix_places_blocks_within_each_clips_real_length_and_weights_labels_by_real_shares():
    """Short clips padded in a batch: clip i's audio has length L_i of the batch's Ta and every real value i + 1.
    Each clip's block lies inside its own real frames, and lam[i] is the share of its real positions that stay
    its own (the partner's real positions only; partner padding stays the neutral 0)."""
    b, tv, ta = 6, 8, 40
    batch = _standardized()
    lengths_a = torch.tensor([40, 5, 12, 3, 25, 8])
    lengths_v = torch.tensor([8, 2, 4, 1, 6, 3])
    value = torch.arange(1.0, b + 1)
    frame_mask = torch.arange(tv)[None] < lengths_v[:, None]
    audio_mask = torch.arange(ta)[None] < lengths_a[:, None]
    batch.update(
        video_tokens=(value[:, None, None, None] * frame_mask[:, :, None, None]).expand(b, tv, 4, 8).clone(),
        video_pooled=(value[:, None, None] * frame_mask[:, :, None]).expand(b, tv, 8).clone(), frame_mask=frame_mask,
        audio_tokens=(value[:, None, None] * audio_mask[:, :, None]).expand(b, ta, 3).clone(), audio_mask=audio_mask,
        has_audio=torch.ones(b, dtype=torch.bool), has_video=torch.ones(b, dtype=torch.bool),
        labels=torch.arange(b))
    for seed in range(20):
        out, labels_b, lam = cutmix_time(batch, np.random.default_rng(seed), alpha=1.0)
        for name, mask in (("video_pooled", frame_mask), ("audio_tokens", audio_mask)):
            assert (out[name][..., 0][~mask] == 0).all(), (seed, name)         # padding stays padding: blocks lie within
        for i in range(b):
            j = int(labels_b[i])                                               # labels are 0..B-1: the partner
            shares = []
            for name, mask in (("video_pooled", frame_mask), ("audio_tokens", audio_mask)):
                x = out[name][i, :, 0]
                assert (x[~mask[i]] == 0).all(), (seed, i, name)              # padding stays padding
                assert torch.isin(x[mask[i]], torch.tensor([0.0, i + 1.0, j + 1.0])).all()
                if i != j:
                    shares.append(float((x[mask[i]] == j + 1).sum()) / int(mask[i].sum()))
            if i != j:
                assert abs((1 - sum(shares) / 2) - float(lam[i])) < 1e-6, (seed, i, shares, float(lam[i]))


def test_cutmix_takes_a_block_from_the_partner_and_mixes_labels_by_share():
    """Clip i's features all hold the value i + 1 (every frame real), so each position shows whose it is."""
    batch = _standardized()
    b, tv = batch["frame_mask"].shape
    value = torch.arange(1.0, b + 1)
    batch.update(video_tokens=value[:, None, None, None].expand_as(batch["video_tokens"]).clone(),
                 frame_mask=torch.ones(b, tv, dtype=torch.bool))
    for seed in range(5):
        out, labels_b, lam = cutmix_time(dict(batch, has_audio=torch.zeros(b, dtype=torch.bool)),
                                         np.random.default_rng(seed), alpha=1.0)   # video only: lam = its share
        own = out["video_tokens"][..., 0, 0] == value[:, None]                # (B, Tv)
        partner = out["video_tokens"][..., 0, 0] == (labels_b.float() + 1)[:, None]
        assert (own | partner).all()                                          # every frame is the clip's or its partner's
        for i in range(b):
            if labels_b[i] == batch["labels"][i]:
                continue                                                      # its own partner: any weight is right
            cols = torch.nonzero(~own[i]).flatten()
            if len(cols):
                assert cols[-1] - cols[0] + 1 == len(cols)                    # one contiguous block in time
            assert abs(1 - len(cols) / tv - float(lam[i])) < 1e-6              # label weight = own share of frames
        assert not out["has_audio"].any()
        assert sorted(labels_b.tolist()) == sorted(batch["labels"].tolist())


# ---------------------------------------------------------------------------------------------------
# A real tiny run: training batches change, validation and test batches never do
# ---------------------------------------------------------------------------------------------------

ALL_ON = {"training.video_frame_drop": 0.5, "training.video_time_mask": 0.3, "training.patch_drop": 0.2,
          "training.audio_time_mask": 0.3, "training.audio_channel_mask": 0.2, "training.modality_dropout": 0.3,
          "training.feature_noise": 0.1, "training.cutmix_prob": 0.5}


def _recorded_run(root, name: str, **overrides) -> dict:
    """Train 2 epochs and return {'train': [...], 'eval': [...]} of the batches the top model saw."""
    cfg = tiny_config(root / "cache", root / "folds.json", root / name, **overrides)
    return train_recording_inputs(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("augment")
    make_store(root / "cache", repetitions=1)
    write_fold_file(root / "folds.json")
    return {"off": _recorded_run(root, "off", **{"training.mixup_alpha": 0.0}),
            "on": _recorded_run(root, "on", **{"training.mixup_alpha": 0.0, **ALL_ON})}


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_training_batches_are_augmented(runs):
    off, on = runs["off"]["train"], runs["on"]["train"]
    assert off and len(on) == len(off)
    assert not any(b.get("is_standardized") for b in off)                   # off: the loader's raw batches
    assert all(b.get("is_standardized") for b in on)                        # on: augmented after FeatureNorm
    assert any((~b["frame_mask"]).any() for b in on)                         # frame dropout (all store frames are real)
    assert any((b["has_video"] != b["frame_mask"].any(1)).any() or (~b["has_audio"] & b["audio_mask"].any(1)).any()
               for b in on)                                                   # modality dropout


@pytest.mark.slow   # its module's fixture trains or exports a store: seconds on two shared cores
def test_validation_and_test_batches_are_never_augmented(runs):
    off, on = runs["off"]["eval"], runs["on"]["eval"]
    assert off and len(on) == len(off)
    for a, b in zip(off, on):
        assert a["clip_ids"] == b["clip_ids"] and "is_standardized" not in b
        for name, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[name]), name


def test_augmentation_fields_are_checked():
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainingConfig(modality_dropout=0.6)
    with pytest.raises(ValueError, match="patch_drop"):
        TrainingConfig(patch_drop=1.0)
    assert dataclasses.replace(TrainingConfig(), cutmix_prob=0.5).cutmix_prob == 0.5
