"""`mmfer ablate` and `mmfer tune` on a small real feature store (tests/synthetic_store.py), tiny model.

One subprocess runs both commands and reports any encoder module they imported; in-process runs then check
the ablation table, that a rerun trains nothing (same config hashes), branch pretraining -> load -> freeze with
the differential learning rates, and that the SQLite study resumes to the asked number of trials with a best
config that `--config` accepts and an objective read from validation actors only; tuning is nested (each outer
fold's study sees only its non-test actors) and a tuned config marks a run that tests its tuning actors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from synthetic_store import make_store, write_fold_file
from train_helpers import ONE_THREAD_ARG

from mmfer.pipeline.ablate import add_ablate_arguments
from mmfer.pipeline.flags import add_common_arguments, resolve_config
from mmfer.pipeline.tune import add_tune_arguments, cmd_tune
from mmfer.core.config import TrainConfig
from mmfer.train.loop import train
from mmfer.train.metrics import HEADLINE
from mmfer.train.studies.ablate import METRIC_NAMES, Entry, run_ablation

pytestmark = pytest.mark.slow   # a real ablation + Optuna study in a fresh process

ENTRIES = [{"name": "full", "overrides": {}}, {"name": "audio", "overrides": {"model.variant": "audio"}}]
COLUMNS = [f"{m}_{s}" for m in ("accuracy", "uar", "f1_macro", "f1_weighted")
           for s in ("mean", "std", "ci_low", "ci_high", "diff_mean", "diff_ci_low", "diff_ci_high")]


def tune_argv(study: dict, trials: int) -> list[str]:
    """The early-fusion variant keeps the trials fast (no LFM2); the search and objective code is the same."""
    return [*base_argv(study["cache"], study["folds"]), "--variant", "early", "--trials", str(trials),
            "--study-dir", str(study["root"] / "tune"), *base_overrides(study["folds"])]


def base_argv(cache: Path, folds: Path) -> list[str]:
    return ["--cache", str(cache), "--preset", "tiny", "--epochs", "1", "--device", "cpu", "--seed", "7",
            "--batch-size", "8"]


def base_overrides(folds: Path) -> list[str]:
    return ["split.protocol=file", f"split.fold_file={folds}", "model.visual.num_keep_tokens=8",
            "model.fusion.num_layers=2", "training.warmup_epochs=0", ONE_THREAD_ARG,
            "training.lr=1e-4", "training.lr_fusion=5e-5"]   # the design guide's rates (also the full defaults: explicit wins)


def parse(add, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    add_common_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A 2-entry x 2-seed ablation and a 2-trial tune study, run by the CLI functions in a fresh process."""
    root = tmp_path_factory.mktemp("ablate")
    cache, folds = make_store(root / "cache", repetitions=1), write_fold_file(root / "folds.json")
    (root / "entries.yaml").write_text(yaml.safe_dump(ENTRIES))
    ablate_argv = [*base_argv(cache, folds), "--out", str(root / "ablate"), "--seeds", "2",
                   "--entries", str(root / "entries.yaml"), *base_overrides(folds)]
    info = {"root": root, "cache": cache, "folds": folds, "ablate_argv": ablate_argv}
    script = textwrap.dedent(f"""
        import sys, argparse
        from mmfer.pipeline.flags import add_common_arguments
        from mmfer.pipeline.ablate import add_ablate_arguments, cmd_ablate
        from mmfer.pipeline.tune import add_tune_arguments, cmd_tune
        for add, cmd, argv in ((add_ablate_arguments, cmd_ablate, {ablate_argv!r}), (add_tune_arguments, cmd_tune, {tune_argv(info, trials=2)!r})):
            parser = argparse.ArgumentParser()
            add(parser)
            add_common_arguments(parser)
            assert cmd(parser.parse_args(argv)) == 0
        loaded = [m for m in sys.modules if m == "nemo" or m.startswith(("nemo.", "transformers.models.siglip", "mmfer.extract"))]
        print("LOADED", loaded)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return {**info, "stdout": result.stdout}


def test_no_encoder_is_imported_and_the_table_is_printed(study):
    assert "LOADED []" in study["stdout"], study["stdout"][-2000:]
    assert "| full | lfm2 |" in study["stdout"] and "| audio | audio |" in study["stdout"]


def test_ablation_table_has_one_sane_row_per_entry(study):
    out = study["root"] / "ablate"
    table = pd.read_csv(out / "ablation.csv")
    assert list(table["entry"]) == ["full", "audio"] and list(table["variant"]) == ["lfm2", "audio"]
    assert tuple(METRIC_NAMES) == HEADLINE
    assert set(COLUMNS + ["n", "num_seeds", "trainable_params", "epoch_s"]) <= set(table.columns)
    full, audio = table.iloc[0], table.iloc[1]
    assert full["n"] == 2 and full["num_seeds"] == 2          # 1 fold x 2 seeds
    for row in (full, audio):
        for m in ("accuracy", "uar", "f1_macro", "f1_weighted"):
            assert 0 <= row[f"{m}_mean"] <= 1 and row[f"{m}_std"] >= 0
            assert row[f"{m}_ci_low"] <= row[f"{m}_mean"] <= row[f"{m}_ci_high"]
        assert row["epoch_s"] > 0
    assert full["f1_macro_diff_mean"] == 0 and full["f1_macro_diff_ci_low"] == 0
    assert audio["f1_macro_diff_mean"] == pytest.approx(audio["f1_macro_mean"] - full["f1_macro_mean"])
    assert 0 < audio["trainable_params"] < full["trainable_params"]
    # the CSV's numbers are the runs' test metrics: recompute the audio mean from its summaries
    runs = sorted(out.glob("audio-*/summary.json"))
    assert len(runs) == 2 and len(list(out.glob("full-*/summary.json"))) == 2
    values = [json.loads(p.read_text())["folds"]["fold1"]["f1_macro"] for p in runs]
    assert audio["f1_macro_mean"] == pytest.approx(sum(values) / 2)
    md = (out / "ablation.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 3 and "Δ macro-F1 vs full" in md and "(reference)" in md
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*/fold1/checkpoints")), "checkpoints are deleted after each run by default"


def test_rerun_trains_nothing(study):
    base = resolve_config(TrainConfig, parse(add_ablate_arguments, study["ablate_argv"]))
    before = {p: p.stat().st_mtime_ns for p in (study["root"] / "ablate").glob("*/summary.json")}
    result = run_ablation(base, study["root"] / "ablate", entries=[Entry(e["name"], e["overrides"]) for e in ENTRIES],
                          reference="full", num_seeds=2, keep_checkpoints=False, workers=1, devices=None)
    assert result["ran"] == [] and len(result["skipped"]) == 4
    assert before == {p: p.stat().st_mtime_ns for p in (study["root"] / "ablate").glob("*/summary.json")}


def test_pretrain_then_load_then_freeze(study, tmp_path):
    base = resolve_config(TrainConfig, parse(add_ablate_arguments, study["ablate_argv"]))
    out = tmp_path / "ablate"
    entries = [Entry("pretrained", {"training.lr_branches": 1e-5}, pretrain=True)]
    result = run_ablation(base, out, entries=entries, reference="pretrained", num_seeds=1, keep_checkpoints=True,
                          workers=1, devices=None)
    assert len(result["ran"]) == 3   # audio branch, visual branch, then the full model loading both
    branches = {b: next((out / "pretrain").glob(f"{b}-branch-*")) for b in ("audio", "visual")}
    weights = {b: load_file(str(d / "fold1" / f"{b}_branch.safetensors")) for b, d in branches.items()}
    for b, d in branches.items():   # stage 1 saw fold 1's training actors only
        protocol = json.loads((d / "summary.json").read_text())["protocol"][0]
        assert not set(protocol["train_actors"]) & set(protocol["test_actors"] + protocol["val_actors"])

    # unfrozen: loaded, then trained at the branch rate (1e-5, a tenth of the classifier's; no warmup here)
    (loaded,) = out.glob("pretrained-*")
    model = torch.load(loaded / "fold1" / "checkpoints" / "best.pt", weights_only=True)["model"]
    for b in ("audio", "visual"):
        diffs = [float((model[f"{b}.{k}"] - v).abs().max()) for k, v in weights[b].items()]
        assert 0 < max(diffs) < 1e-3, (b, max(diffs))
    records = [json.loads(line) for line in (loaded / "fold1" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lr_branches"] / r["lr_classifier"] == pytest.approx(0.1) for r in records)

    # frozen: weights unchanged and out of the optimizer (only the missing-modality embeddings stay in the
    # branches group), fusion and heads keep their rates
    frozen = tmp_path / "frozen"
    cfg = resolve_config(TrainConfig, parse(add_ablate_arguments, study["ablate_argv"]))
    summary = train(dataclasses.replace(cfg, out=str(frozen), audio_branch=str(branches["audio"]),
                                        visual_branch=str(branches["visual"]), freeze_branches=True))
    model = torch.load(frozen / "fold1" / "checkpoints" / "best.pt", weights_only=True)["model"]
    for b in ("audio", "visual"):
        for key, value in weights[b].items():
            assert torch.equal(model[f"{b}.{key}"], value), f"{b}.{key} changed although frozen"
    records = [json.loads(line) for line in (frozen / "fold1" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lr_fusion"] / r["lr_classifier"] == pytest.approx(0.5) for r in records)
    full_params = json.loads(next((study["root"] / "ablate").glob("full-*/summary.json")).read_text())["folds"]["fold1"]["trainable_params"]
    branch_params = sum(v.numel() for w in weights.values() for v in w.values())
    assert summary["folds"]["fold1"]["trainable_params"] == full_params - branch_params


def test_tune_resumes_to_the_asked_trials_and_writes_a_usable_best_config(study):
    study_dir = study["root"] / "tune"
    storage = f"sqlite:///{study_dir / 'study.db'}"
    assert len(optuna.load_study(study_name="mmfer-fold1", storage=storage).trials) == 2   # one study per outer fold
    assert cmd_tune(parse(add_tune_arguments, tune_argv(study, trials=3))) == 0
    loaded = optuna.load_study(study_name="mmfer-fold1", storage=storage)
    assert len(loaded.trials) == 3
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in loaded.trials)

    best_yaml = study_dir / "best_config.yaml"
    cfg = resolve_config(TrainConfig, argparse.Namespace(config=str(best_yaml), overrides=[]))
    best = loaded.best_trial
    assert cfg.training.lr == pytest.approx(best.params["training.lr"])
    assert cfg.model.variant == "early" and cfg.preset == "tiny" and cfg.split.protocol == "file"
    assert cfg.tuned_on_actors == "3,4,5,6,7,8"   # fold 1's training + validation actors, never its test 1, 2
    assert (study_dir / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"

    # the objective is the validation actors' macro-F1 at each fold's best epoch, not the test score
    run = study_dir / "trials" / "fold1" / f"{best.number:04d}"
    fold = json.loads((run / "summary.json").read_text())["folds"]["fold1"]
    records = [json.loads(line) for line in (run / "fold1" / "metrics.jsonl").read_text().splitlines()]
    assert best.value == fold["val_f1_macro"] == records[fold["best_epoch"] - 1]["val_f1_macro"]
    assert not (run / "fold1" / "checkpoints").exists()


def test_tuning_is_nested_and_a_tuned_config_is_marked_on_its_tuning_actors(study, tmp_path, caplog):
    """Each outer fold's study sees only that fold's non-test actors; its test score is its best trial's;
    train-fusion with the tuned config on a split that tests tuning actors warns and says so in summary.json."""
    study_dir = study["root"] / "tune"
    summary = json.loads((study_dir / "tune_summary.json").read_text())
    (entry,) = summary["folds"]
    assert entry["fold"] == "fold1" and entry["test_actors"] == [1, 2]
    assert entry["tuning_actors"] == [3, 4, 5, 6, 7, 8] and not set(entry["tuning_actors"]) & set(entry["test_actors"])
    best = optuna.load_study(study_name="mmfer-fold1", storage=f"sqlite:///{study_dir / 'study.db'}").best_trial
    assert entry["best_params"] == best.params and entry["best_trial"] == best.number
    # every trial of the fold trained and validated only on its tuning actors
    for trial in (study_dir / "trials" / "fold1").glob("*/summary.json"):
        (protocol,) = json.loads(trial.read_text())["protocol"]
        assert set(protocol["train_actors"]) | set(protocol["val_actors"]) <= set(entry["tuning_actors"])
    run = json.loads((study_dir / "trials" / "fold1" / f"{best.number:04d}" / "summary.json").read_text())
    assert entry["test_metrics"] == {k: run["folds"]["fold1"][k] for k in HEADLINE}
    assert summary["test_mean"]["f1_macro"] == entry["test_metrics"]["f1_macro"] and summary["test_std"]["f1_macro"] is None
    assert "tuned_on_actors: 3,4,5,6,7,8" in (study_dir / "best_config_fold1.yaml").read_text()

    # the tuned config on the same split: no overlap; on a split testing actors 5, 6: warned and marked
    cfg = resolve_config(TrainConfig, argparse.Namespace(config=str(study_dir / "best_config.yaml"), overrides=[]))
    cfg = dataclasses.replace(cfg, cache=str(study["cache"]), device="cpu",
                              training=dataclasses.replace(cfg.training, max_epochs=1))
    same = train(dataclasses.replace(cfg, out=str(tmp_path / "same"), split=dataclasses.replace(
        cfg.split, fold_file=str(study["folds"]))))
    assert same["tuned_on_test_actors"] == []
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"name": "fold1", "test_actors": [5, 6], "val_actors": [3, 4]}]))
    with caplog.at_level("WARNING", logger="mmfer.train.cross_validation"):
        marked = train(dataclasses.replace(cfg, out=str(tmp_path / "other"), split=dataclasses.replace(
            cfg.split, fold_file=str(other))))
    assert marked["tuned_on_test_actors"] == [5, 6]
    assert json.loads((tmp_path / "other" / "summary.json").read_text())["tuned_on_test_actors"] == [5, 6]
    assert "tuned on actors [3, 4, 5, 6, 7, 8], and this run tests [5, 6]" in caplog.text
    # marked where the score is read, not only in the log: the printed table, summary.json, the model card
    from mmfer.pipeline.bundle import ModelBundle
    from mmfer.pipeline.export import model_card
    from mmfer.train.report import format_summary_table

    assert "optimistic" not in same and "WARNING" not in format_summary_table(same)
    assert marked["optimistic"].startswith("optimistic: this config was tuned on actors 3,4,5,6,7,8, and this run tests [5, 6]")
    assert f"WARNING {marked['optimistic']}" in format_summary_table(marked)
    bundle = ModelBundle(str(tmp_path / "other"), {"model": {"variant": "early"}}, {}, ["fold1"], [{}], marked)
    card = model_card("model", bundle, [], {"optimistic": marked["optimistic"]})   # export copies it from summary.json
    assert f"**Warning, {marked['optimistic']}.**" in card


def test_only_without_the_reference_entry_has_no_delta_columns(study, tmp_path, capsys):
    """`--only audio` leaves out `full`, the reference: the table is written without Δ columns (was a KeyError
    after every run had trained). The audio runs are copied in, so nothing trains here."""
    import shutil

    from mmfer.pipeline.ablate import cmd_ablate

    for run in (study["root"] / "ablate").glob("audio-*"):
        shutil.copytree(run, tmp_path / run.name)
    argv = [*study["ablate_argv"], "--only", "audio", "--out", str(tmp_path)]
    assert cmd_ablate(parse(add_ablate_arguments, argv)) == 0
    printed = capsys.readouterr().out
    assert "| audio | audio |" in printed and "Δ" not in printed.split("\n\n")[0]
    assert "0 run(s) trained, 2 already done" in printed
    table = pd.read_csv(tmp_path / "ablation.csv")
    assert list(table["entry"]) == ["audio"] and table["f1_macro_diff_mean"].isna().all()
