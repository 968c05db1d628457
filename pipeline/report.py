"""`mmfer report RUN [--out FILE.html]`: one self-contained HTML page of a train-fusion run (also written by
`train-fusion` itself, as RUN/report.html).

Reads only what the run folder records (summary.json, config.yaml, each fold's metrics.jsonl,
predictions.csv), the run's cache's clip table for paths and speakers, the clips' media for thumbnails, and the
outputs of `mmfer evaluate` / `--corrupt` / `mmfer ablate` that belong to the run. report_figures.py draws,
report_page.py writes the HTML; browser.py takes the optional screenshot.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

import pandas as pd
import yaml

from mmfer.core.errors import BadInputError
from mmfer.pipeline.command_config import ReportConfig
from mmfer.pipeline.report_page import SELECTIONS, render_page

log = logging.getLogger(__name__)

def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: not valid JSON ({err}); is the run folder damaged?") from None


def read_run(run_dir: Path, cfg: ReportConfig) -> dict:
    """Everything the page shows, as plain values (see report_page.render_page for the sections).

    Raises:
        BadInputError: no such run folder, or a run that never finished (no summary.json).
    """
    from mmfer.train.metrics import HEADLINE

    if not run_dir.is_dir():
        raise BadInputError(f"{run_dir}: no such run folder; pass the --out of train-fusion")
    if not (run_dir / "summary.json").is_file():
        raise BadInputError(f"{run_dir}: no summary.json; a run has one when train-fusion finishes (resume it with "
                            "`train-fusion --resume` and the same --out)")
    summary = read_json(run_dir / "summary.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("folds"), dict) or not summary["folds"]:
        raise BadInputError(f"{run_dir / 'summary.json'}: holds no per-fold results ('folds'); not a train-fusion summary")
    evaluations = [read_evaluation(p) for p in evaluation_folders(run_dir, cfg.evaluations)]   # a bad name: before any work
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    class_names = tuple(config.get("label_names") or _default_names())
    monitor = (config.get("training") or {}).get("monitor", "f1_macro")
    clips, store_note, dataset = _clip_table(config, run_dir)
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"clip_id": str}) \
        if (run_dir / "predictions.csv").is_file() else None
    cards = {c["fold"]: c for c in summary.get("protocol_card", [])}
    parts = {p["name"]: p for p in summary.get("protocol", [])}
    folds = []
    for name, metrics in summary["folds"].items():
        records = _records(run_dir / name / "metrics.jsonl")
        card, part = cards.get(name, {}), parts.get(name, {})
        oracle_epoch, oracle = oracle_selection(records, monitor, HEADLINE)
        folds.append({
            "fold": name, "seed": card.get("seed", config.get("seed")), "fold_number": card.get("fold_number"),
            "train_actors": part.get("train_actors", card.get("train_actors", [])),
            "val_actors": part.get("val_actors", card.get("val_actors", [])),
            "test_actors": part.get("test_actors", card.get("test_actors", [])),
            "val_clips_per_class": card.get("val_clips_per_class"),
            "num_test_clips": int((predictions["fold"] == name).sum()) if predictions is not None else metrics.get("num_clips"),
            "selected_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run"),
            "oracle_epoch": oracle_epoch, "records": records,
            "selections": {"validation": {k: metrics[k] for k in HEADLINE},
                           "last": metrics.get("last_epoch"), "oracle": oracle},
            "confusion_matrix": metrics.get("confusion_matrix"),
        })
    return {
        "run": str(run_dir.resolve()), "summary": summary, "config": config, "class_names": class_names, "monitor": monitor,
        "dataset": dataset, "store_note": store_note, "folds": folds,
        "aggregate": aggregate(folds, HEADLINE),
        "pooled": _pooled(predictions, class_names) if predictions is not None else None,
        "misclassified": misclassified(predictions, clips, class_names, max_clips=cfg.max_clips,
                                       thumbnails=cfg.thumbnails, store_note=store_note) if predictions is not None else None,
        "evaluations": evaluations,
        "ablation": read_ablation(run_dir),
    }


def _default_names() -> tuple[str, ...]:
    from mmfer.core.labels import EMOTIONS

    return EMOTIONS


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def oracle_selection(records: list[dict], monitor: str, headline: tuple[str, ...]) -> tuple[int | None, dict | None]:
    """(epoch, its test metrics) of the epoch with the best test `monitor` (the earliest of tied ones), from the
    per-epoch test scores metrics.jsonl records; (None, None) for a run that recorded none (trained before they were)."""
    if not records or not all(f"test_{monitor}" in r for r in records):
        return None, None
    best = max(records, key=lambda r: (r[f"test_{monitor}"], -r["epoch"]))
    return best["epoch"], {k: best[f"test_{k}"] for k in headline}


def aggregate(folds: list[dict], headline: tuple[str, ...]) -> dict:
    """{selection: {metric: mean, sample std and 95% t-interval}} over the folds, each fold the mean of its seeds
    (train-fusion's summary takes them so: a fold's seeds share its test clips); a selection that some row lacks
    is None."""
    from mmfer.train.metrics import per_fold_means
    from mmfer.train.studies.stats import mean_std_ci

    keys = [protocol_fold(f) for f in folds]
    out = {}
    for key in SELECTIONS:
        rows = [f["selections"][key] for f in folds]
        if not rows or any(r is None for r in rows):
            out[key] = None
            continue
        per_fold = per_fold_means(rows, keys, headline)
        out[key] = {k: mean_std_ci([r[k] for r in per_fold]) for k in headline}
    return out


def protocol_fold(row: dict) -> int | str:
    """The protocol fold a trained (fold, seed) row belongs to: the fold number its protocol card records (every
    seed of a fold carries it); a card without numbers: the row's own fold, one seed per fold."""
    return row["fold_number"] if row.get("fold_number") is not None else row["fold"]


def _clip_table(config: dict, run_dir: Path) -> tuple[pd.DataFrame | None, str, str | None]:
    """(the run's cache's clip table, "" or why it is not there, the cache's dataset)."""
    from mmfer.core.store import StoreError, open_store
    from mmfer.pipeline.bundle import recorded_store

    if not config.get("cache"):
        return None, "the run records no cache", None
    path, tried = recorded_store(config, run_dir)
    try:
        store = open_store(path, mode="r")
    except (StoreError, FileNotFoundError, OSError) as err:
        log.warning("%s: the run's cache is not readable (%s); clip paths and speakers left out", path, err)
        return None, f"the run's cache is gone (looked at {', '.join(map(str, tried))})", None
    return store.clip_table, "", store.attrs.get("dataset")


def _pooled(predictions: pd.DataFrame, class_names: tuple[str, ...]) -> dict:
    """compute_metrics over every fold's test clips together (each clip once, by its own fold's model)."""
    from mmfer.train.metrics import compute_metrics

    index = {n: i for i, n in enumerate(class_names)}
    return compute_metrics(predictions["label"].map(index).to_numpy(), predictions["prediction"].map(index).to_numpy(),
                           class_names=class_names)


def misclassified(predictions: pd.DataFrame, clips: pd.DataFrame | None, class_names: tuple[str, ...], *,
                  max_clips: int, thumbnails: bool, store_note: str) -> dict:
    """The wrongly predicted test clips, most confident first, the first `max_clips` with path, speaker and a
    thumbnail (or why there is none)."""
    from mmfer.pipeline.report_figures import thumbnail_uri

    wrong = predictions[predictions["label"] != predictions["prediction"]].copy()
    wrong["confidence"] = [row[f"prob_{row['prediction']}"] for _, row in wrong.iterrows()]
    wrong = wrong.sort_values("confidence", ascending=False, kind="stable")
    by_clip = clips.set_index(clips["clip_id"].astype(str)) if clips is not None else None
    rows = []
    for _, row in wrong.head(max_clips).iterrows():
        info = by_clip.loc[row["clip_id"]] if by_clip is not None and row["clip_id"] in by_clip.index else None
        path = str(info["path"]) if info is not None and pd.notna(info.get("path")) else None
        uri, why = thumbnail_uri(path) if thumbnails else (None, "thumbnails off (--no-thumbnails)")
        rows.append({"clip_id": row["clip_id"], "fold": row["fold"], "path": path or store_note or "not in the cache's clip table",
                     "speaker": _speaker(info), "label": row["label"], "prediction": row["prediction"],
                     "confidence": float(row["confidence"]), "thumbnail": uri,
                     "thumbnail_note": why if path or not thumbnails else "no media path: " + (store_note or "clip not in the cache")})
    return {"rows": rows, "num_wrong": len(wrong), "num_clips": len(predictions)}


def _speaker(info) -> str:
    if info is None:
        return "?"
    for key in ("speaker", "actor"):
        value = info.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return str(value)
    return "?"


def evaluation_folders(run_dir: Path, given: str | None) -> list[Path]:
    """`mmfer evaluate` outputs (robustness.csv or a cross-corpus metrics.json): the folders named by
    --evaluations, then those inside the run folder.

    Raises:
        BadInputError: a named folder that does not exist or holds neither file.
    """
    named = [Path(p.strip()) for p in (given or "").split(",") if p.strip()]
    for folder in named:
        if not folder.is_dir():
            raise BadInputError(f"{folder}: no such folder (--evaluations)")
        if not _is_evaluation(folder):
            raise BadInputError(f"{folder}: holds neither robustness.csv nor metrics.json; --evaluations takes "
                                "folders written by `mmfer evaluate --out`")
    inside = sorted(d for d in run_dir.iterdir() if d.is_dir() and _is_evaluation(d))
    seen = {p.resolve() for p in named}
    return named + [d for d in inside if d.resolve() not in seen]


def _is_evaluation(folder: Path) -> bool:
    return (folder / "robustness.csv").is_file() or (folder / "metrics.json").is_file()


def read_evaluation(folder: Path) -> dict:
    """One evaluate output: kind robustness (its markdown table and plot) or cross-corpus (metrics.json)."""
    from mmfer.pipeline.report_figures import file_uri

    if (folder / "robustness.csv").is_file():
        table = (folder / "robustness.md").read_text() if (folder / "robustness.md").is_file() else ""
        return {"kind": "robustness", "folder": str(folder), "table": table, "plot": file_uri(folder / "robustness.png")}
    return {"kind": "cross-corpus", "folder": str(folder), "result": read_json(folder / "metrics.json"),
            "plot": file_uri(folder / "confusion_matrix.png")}


def read_ablation(run_dir: Path) -> dict | None:
    """The ablation table of the `mmfer ablate` study this run is an entry of (its folder's parent holds
    ablation.md), else None."""
    from mmfer.pipeline.report_figures import file_uri

    study = run_dir.resolve().parent
    if not (study / "ablation.md").is_file():
        return None
    return {"folder": str(study), "entry": run_dir.name.rsplit("-", 1)[0], "table": (study / "ablation.md").read_text(),
            "plot": file_uri(study / "ablation.png")}


def write_report(cfg: ReportConfig) -> tuple[Path, str]:
    """Write the page (default RUN/report.html) and, with cfg.screenshot, its screenshot; return the page's
    path and the three selections' line (`selections_line`)."""
    run_dir = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else run_dir / "report.html"
    if cfg.screenshot:   # refused before any work when there is no browser to take it
        from mmfer.pipeline.browser import find_chromium

        find_chromium()
    if out.is_dir():
        raise BadInputError(f"{out}: --out is a folder; give the HTML file to write (e.g. {out / 'report.html'})")
    report = read_run(run_dir, cfg)
    page = render_page(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    if cfg.screenshot:
        from mmfer.pipeline.browser import screenshot

        screenshot(out, Path(cfg.screenshot))
    return out, selections_line(report)


def selections_line(report: dict) -> str:
    """The monitored metric's mean ± sample std [95% interval] under each selection, one line (printed by
    `mmfer report` and train-fusion, for a results table)."""
    from mmfer.pipeline.report_page import spread

    monitor = report["monitor"]
    return f"{monitor} over {len(report['folds'])} fold row(s): " + " | ".join(
        f"{title} {spread(report['aggregate'][key][monitor] if report['aggregate'][key] else None)}"
        for key, (title, _) in SELECTIONS.items())


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfer.core.overrides import leaf_fields
    from mmfer.pipeline.flags import add_config_flags

    parser.description = ("One self-contained HTML page of a train-fusion run (no network, images inline): the "
                          "protocol, the headline under three selections (validation-selected, last epoch, "
                          "test-selected as an oracle), per-fold spread with 95% intervals, curves, confusion matrix, "
                          "per-class scores, misclassified clips with thumbnails, and the run's robustness, "
                          "cross-corpus and ablation tables.")
    doc = next(d for key, _, _, d in leaf_fields(ReportConfig) if key == "run")
    parser.add_argument("cfg:run", metavar="RUN", help=doc)
    add_config_flags(parser, ReportConfig, skip=("run",), layered=False)


def cmd_report(args: argparse.Namespace) -> int:
    from mmfer.pipeline.flags import resolve_config

    cfg: ReportConfig = resolve_config(ReportConfig, args, layered=False)
    out, selections = write_report(cfg)
    print(selections)
    print(f"wrote {out}" + (f" and {cfg.screenshot}" if cfg.screenshot else ""))
    return 0
