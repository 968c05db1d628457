"""`mmfer evaluate --corrupt`: corruptions of the cached test features, and the report of a real tiny run.

The run trains 2 epochs of the tiny preset on the synthetic store (tests/synthetic_store.py); the command
runs in-process through the CLI's entry function and error handler (tests/cli_helpers.py).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from cli_helpers import run_mmfer
from model_inputs import make_batch
from synthetic_store import make_store, write_fold_file
from train_helpers import tiny_config

from mmfer.train.loop import train
from mmfer.train.robustness import FEATURE_CORRUPTIONS, corrupt_batch, parse_corruptions


_mmfer = run_mmfer


def test_corruptions_change_what_they_name_and_leave_the_input_alone():
    batch = make_batch()
    kept = {k: v.clone() for k, v in batch.items()}
    gen = lambda: torch.Generator().manual_seed(0)   # noqa: E731
    out = corrupt_batch(batch, "no-audio", gen())
    assert not out["has_audio"].any() and not out["audio_mask"].any() and torch.equal(out["frame_mask"], batch["frame_mask"])
    out = corrupt_batch(batch, "no-video", gen())
    assert not out["has_video"].any() and not out["frame_mask"].any() and torch.equal(out["has_audio"], batch["has_audio"])
    out = corrupt_batch(batch, "frame-drop-50", gen())
    assert not out["frame_mask"][:, 1::2].any() and torch.equal(out["frame_mask"][:, 0::2], batch["frame_mask"][:, 0::2])
    for snr_db in (20, 10, 0):
        out = corrupt_batch(batch, f"audio-snr-{snr_db}", gen())
        real = batch["audio_mask"]
        noise = (out["audio_tokens"] - batch["audio_tokens"])[real]
        centred = batch["audio_tokens"] - (batch["audio_tokens"] * real[..., None]).sum(1, keepdim=True) / real.sum(1)[:, None, None]
        ratio_db = 10 * torch.log10((centred[real] ** 2).mean() / (noise ** 2).mean())
        assert abs(float(ratio_db) - snr_db) < 1.0, snr_db                    # the stated SNR, on the tokens
        assert (out["audio_tokens"][~real] == batch["audio_tokens"][~real]).all()   # padding untouched
    for name, value in kept.items():
        assert torch.equal(batch[name], value), name
    assert parse_corruptions("all") == list(FEATURE_CORRUPTIONS) and parse_corruptions("face-crop-off") == ["face-crop-off"]
    with pytest.raises(ValueError, match="unknown corruption"):
        parse_corruptions("no-audio,blur")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    make_store(root / "cache", repetitions=1)
    write_fold_file(root / "folds.json")
    train(tiny_config(root / "cache", root / "folds.json", root / "run"))
    return root / "run"


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_report_on_a_real_run_matches_its_clean_test_score(run_dir, tmp_path):
    out = tmp_path / "report"
    done = _mmfer("evaluate", "--run", str(run_dir), "--corrupt", "no-audio,no-video,audio-snr-10,frame-drop-50",
                  "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    scores = pd.read_csv(out / "robustness.csv")
    assert set(scores["corruption"]) == {"clean", "no-audio", "no-video", "audio-snr-10", "frame-drop-50"}
    assert set(scores["classifier"]) == {"fusion", "audio", "visual"}
    heads = scores.groupby("corruption")["classifier"].apply(set)
    assert heads["no-audio"] == {"fusion", "visual"} and heads["no-video"] == {"fusion", "audio"}
    summary = json.loads((run_dir / "summary.json").read_text())
    clean = scores[(scores["corruption"] == "clean") & (scores["classifier"] == "fusion")]["f1_macro"].item()
    assert clean == pytest.approx(summary["folds"]["fold1"]["f1_macro"], abs=1e-9)   # the run's own test pass
    table = (out / "robustness.md").read_text()
    assert "fusion gain over audio" in table and "| no-audio |" in table and "not on the recording" in table
    assert (out / "robustness.png").stat().st_size > 1000
    assert "| frame-drop-50 |" in done.stdout


@pytest.mark.slow   # its module's fixture trains or exports a store: seconds on two shared cores
def test_unknown_corruption_is_one_error_line_exit_2(run_dir, tmp_path):
    done = _mmfer("evaluate", "--run", str(run_dir), "--corrupt", "blur", "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --corrupt: unknown corruption")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow   # its module's fixture trains or exports a store: seconds on two shared cores
def test_robustness_is_evaluate_corrupt_all_and_one_fold_can_be_asked(run_dir, tmp_path):
    """`mmfer robustness` (the command's first name) = `mmfer evaluate --corrupt all`; --fold scores that fold only."""
    done = _mmfer("robustness", "--run", str(run_dir), "--out", str(tmp_path / "r"), "--device", "cpu", "--fold", "1")
    assert done.returncode == 0, done.stderr
    scores = pd.read_csv(tmp_path / "r" / "robustness.csv")
    assert set(scores["corruption"]) == {"clean", *FEATURE_CORRUPTIONS}
    assert set(scores["fold"]) == {"fold1"}


@pytest.mark.slow   # its module's fixture trains or exports a store: seconds on two shared cores
def test_face_crop_off_needs_a_face_cropped_cache(run_dir, tmp_path):
    """The synthetic store records no face crop: there is nothing to turn off, and no clip is re-extracted."""
    done = _mmfer("evaluate", "--run", str(run_dir), "--corrupt", "face-crop-off", "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "face-crop-off" in done.stderr.strip().splitlines()[-1] and "face_crop=none" in done.stderr
    assert not (tmp_path / "r").exists()


# ---- plots that do not mislead -----------------------------------------------------------------


def test_plots_label_aux_heads_mark_a_single_value_ci_na_and_number_trials_whole():
    import math

    import matplotlib.pyplot as plt
    import optuna

    from mmfer.pipeline.robustness import plot_figure, summary_table
    from mmfer.train.studies.ablate import METRIC_NAMES, bars_figure
    from mmfer.train.studies.tune import STUDY_NAME, history_figure

    # robustness: the "audio"/"visual" bars are the fused model's auxiliary heads, and say so
    frame = pd.DataFrame([{"fold": "fold1", "corruption": c, "classifier": h, "f1_macro": 0.5}
                          for c in ("clean", "no-audio") for h in ("fusion", "audio", "visual")])
    fig = plot_figure(frame, ["clean", "no-audio"], title="t")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert labels == ["fused model", "audio aux head of the fused model", "visual aux head of the fused model"]
    assert "audio aux head" in summary_table(frame, ["clean", "no-audio"])
    assert "not separately trained single-modality models" in summary_table(frame, ["clean", "no-audio"])

    # ablation: one fold x one seed has no 95% CI: no zero-width whisker, an "n/a" mark instead
    row = {"entry": "full", **{f"{m}_{k}": (0.5 if k == "mean" else math.nan) for m in METRIC_NAMES
                               for k in ("mean", "std", "ci_low", "ci_high")}}
    fig = bars_figure([row])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    plt.close(fig)
    assert texts.count("CI n/a") == len(METRIC_NAMES) and not ax.containers[len(METRIC_NAMES):], texts
    assert "n/a" in ax.get_ylabel()
    two = {**row, "entry": "two", **{f"{m}_ci_low": 0.4 for m in METRIC_NAMES}, **{f"{m}_ci_high": 0.6 for m in METRIC_NAMES}}
    fig = bars_figure([two])
    assert not fig.axes[0].texts and len(fig.axes[0].containers) == 2 * len(METRIC_NAMES)   # bars + error bars
    plt.close(fig)

    # tuning history: 3 trials give ticks on whole trial numbers only
    study = optuna.create_study(study_name=f"{STUDY_NAME}-fold1", direction="maximize")
    for value in (0.2, 0.5, 0.4):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    fig = history_figure([study])
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    plt.close(fig)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
