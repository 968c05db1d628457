"""End-to-end training on a small real feature store (tests/synthetic_store.py) with the real tiny model.

A few epochs learn and write every run-folder file; kill-and-resume gives the uninterrupted run's
metrics; spawned DataLoader workers finish after the parent read the store and no encoder is loaded;
a cache of another schema or fingerprint is refused with a message that says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import train_helpers
import yaml
from synthetic_store import AUDIO_FP, FAILED_VIDEO_CLIP, NO_AUDIO_CLIP, VIDEO_FP, make_store, write_fold_file

from mmfer.core.config import TrainConfig
from mmfer.core.labels import EMOTIONS
from mmfer.core.store import StoreError
from mmfer.train.dataset import open_cache
from mmfer.train.loop import train

EPOCHS = 3


def tiny_config(cache: Path, fold_file: Path, out: Path, **training) -> TrainConfig:
    """train_helpers.tiny_config with the preset's fusion and this file's training settings (short names)."""
    return train_helpers.tiny_config(cache, fold_file, out, variant=None, epochs=EPOCHS, warmup=1, preload="auto", **{
        f"training.{k}": v for k, v in {"gradient_accumulation_steps": 2, "class_weights": "auto", **training}.items()})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    return make_store(root / "cache", repetitions=1), write_fold_file(root / "folds.json")


@pytest.fixture(scope="module")
def full_run(cache, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "full"
    return out, train(tiny_config(*cache, out=out))


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_a_few_epochs_learn_and_write_every_output(full_run):
    out, summary = full_run
    for name in ("config.yaml", "predictions.csv", "summary.json", "confusion_matrix.png", "confusion_matrix.csv",
                 "fold1/metrics.jsonl", "fold1/checkpoints/best.pt", "fold1/checkpoints/last.pt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "fold1" / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "fold1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert records[-1]["loss"] < records[0]["loss"], [r["loss"] for r in records]
    assert {"val_f1_macro", "val_nll", "lr_classifier", "samples_per_s", "accuracy"} <= set(records[0])
    assert all(0 < r["val_nll"] < 10 for r in records)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["protocol"] == [{"name": "fold1", "train_actors": [5, 6, 7, 8], "val_actors": [3, 4], "test_actors": [1, 2]}]
    for key in ("accuracy", "uar", "f1_macro", "f1_weighted"):
        assert 0 <= on_disk["mean"][key] <= 1 and on_disk["std"][key] is None   # sample std: undefined for 1 fold
        assert on_disk["folds"]["fold1"][key] == pytest.approx(summary["folds"]["fold1"][key])
    assert on_disk["mean"]["accuracy"] > 0.5, "class-separable features should be learned in 3 epochs"

    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["clip_id", "fold", "label", "prediction", *[f"prob_{e}" for e in EMOTIONS]]
    assert len(predictions) == 16 and set(predictions["fold"]) == {"fold1"}   # actors 1-2 x 8 emotions
    assert predictions[[f"prob_{e}" for e in EMOTIONS]].sum(axis=1).round(4).eq(1).all()
    confusion = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert confusion.to_numpy().sum() == 16

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["audio"]["feature_dim"] == 128   # the tiny preset, resolved
    assert config["cache_fingerprints"] == {"video": VIDEO_FP, "audio": AUDIO_FP}


def test_usable_clips_follow_statuses(cache):
    info = open_cache(str(cache[0]), use_video=True, use_audio=True)
    clips = info.clips.set_index("clip_id")
    assert FAILED_VIDEO_CLIP not in clips.index                     # failed video: left out
    assert not clips.loc[NO_AUDIO_CLIP, "has_audio"] and clips.loc[NO_AUDIO_CLIP, "has_video"]


@pytest.mark.slow   # a killed run and its resume, on top of full_run (~60 s on 2 shared cores)
def test_kill_and_resume_gives_the_uninterrupted_metrics(cache, full_run, tmp_path):
    out = tmp_path / "resumed"
    train(tiny_config(*cache, out=out, max_epochs=EPOCHS - 1))       # "killed" after epoch 2
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(*cache, out=out))
    last = out / "fold1" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])   # a damaged last checkpoint: resume falls back to epoch 1's
    resumed = train(dataclasses.replace(tiny_config(*cache, out=out), resume=True))
    full_out, full = full_run
    for key in ("accuracy", "uar", "f1_macro", "f1_weighted", "best_epoch"):
        assert resumed["folds"]["fold1"][key] == full["folds"]["fold1"][key], key
    a = pd.read_csv(full_out / "predictions.csv")
    b = pd.read_csv(out / "predictions.csv")
    diff = (a.filter(like="prob_") - b.filter(like="prob_")).abs()
    assert diff.to_numpy().max() < 1e-5, f"max diff {diff.to_numpy().max()}, mean {diff.to_numpy().mean()}"
    losses = [json.loads(line)["loss"] for line in (out / "fold1" / "metrics.jsonl").read_text().splitlines()]
    full_losses = [json.loads(line)["loss"] for line in (full_out / "fold1" / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(full_losses, rel=1e-5)


@pytest.mark.slow
def test_spawned_workers_after_parent_read_and_no_encoder_loaded(cache, tmp_path):
    script = textwrap.dedent(f"""
        import sys, dataclasses
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train import tiny_config
        from mmfer.core.store import open_store
        from mmfer.train.loop import train
        store = open_store({str(cache[0])!r})
        store.entry("video").read_clip(store.clip_ids[0])          # the parent has used Zarr
        cfg = tiny_config({str(cache[0])!r}, {str(cache[1])!r}, {str(tmp_path / "w")!r}, max_epochs=1)
        train(dataclasses.replace(cfg, num_workers=2, preload="no"))
        loaded = [m for m in sys.modules if m == "nemo" or m.startswith(("nemo.", "transformers.models.siglip", "mmfer.extract"))]
        assert not loaded, loaded
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    assert (tmp_path / "w" / "summary.json").is_file()


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_train_fusion_opens_the_store_once_before_the_first_batch(cache, tmp_path, monkeypatch):
    """The command reads the cache once (core/cache_facts.py): its preset, class count, protocol, entries and the
    clips of the first batch all come through one open_store (the real function on the real store, counted)."""
    import mmfer.core.store
    import mmfer.train.fold
    from mmfer.pipeline.cli import main

    real, opens, at_first_batch = mmfer.core.store.open_store, [], []

    def counted(*args, **kwargs):
        opens.append(str(args[0]))
        return real(*args, **kwargs)

    for module in list(sys.modules.values()):   # every module that holds the function, and the store module itself
        if getattr(module, "__name__", "").startswith("mmfer") and getattr(module, "open_store", None) is real:
            monkeypatch.setattr(module, "open_store", counted)
    real_epoch = mmfer.train.fold.train_epoch

    def first_epoch(*args, **kwargs):
        at_first_batch.append(len(opens))
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(mmfer.train.fold, "train_epoch", first_epoch)
    argv = ["train-fusion", "--cache", str(cache[0]), "--out", str(tmp_path / "run"), "--preset", "tiny", "--device",
            "cpu", "--epochs", "1", "--folds", "1", "--batch-size", "8", "split.protocol=file",
            f"split.fold_file={cache[1]}", "model.visual.num_keep_tokens=8", "training.warmup_epochs=0",
            train_helpers.ONE_THREAD_ARG]
    assert main(argv) == 0
    assert at_first_batch[0] == 1, opens


def test_other_schema_or_fingerprint_is_refused(cache, tmp_path):
    with pytest.raises(StoreError, match="no video entry with fingerprint nope"):
        open_cache(str(cache[0]), use_video=True, use_audio=True, video_entry="nope")
    with pytest.raises(StoreError, match=f"trained on audio features {'b' * 12}.*--audio-entry"):
        open_cache(str(cache[0]), use_video=True, use_audio=True, expected={"video": VIDEO_FP, "audio": "b" * 12})
    import zarr  # tests may touch the layout directly to fake an old cache
    other = make_store(tmp_path / "old", repetitions=1)
    zarr.open_group(str(other), mode="r+").attrs["schema_version"] = 0
    with pytest.raises(StoreError, match="schema v0.*re-run extract"):
        open_cache(str(other), use_video=True, use_audio=True)


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_pretrained_branch_loads_per_fold_and_freezes(cache, tmp_path):
    from safetensors.torch import load_file
    stage1 = tmp_path / "stage1"
    train(dataclasses.replace(tiny_config(*cache, out=stage1, max_epochs=1), pretrain="audio"))
    weights = load_file(str(stage1 / "fold1" / "audio_branch.safetensors"))
    out = tmp_path / "stage2"
    train(dataclasses.replace(tiny_config(*cache, out=out, max_epochs=1), audio_branch=str(stage1), freeze_branches=True))
    import torch
    best = torch.load(out / "fold1" / "checkpoints" / "best.pt", weights_only=True)["model"]
    for key, value in weights.items():
        assert torch.equal(best[f"audio.{key}"], value), key   # frozen: unchanged by stage 2
