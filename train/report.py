"""Run-folder outputs: config.yaml, predictions.csv, confusion matrix (PNG + CSV), summary.json, the table.

Inputs are plain values (a config dict, per-clip predictions, per-fold metrics from metrics.py); nothing
here trains or reads the store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mmfer.train.metrics import HEADLINE, STD_LABEL


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(out: Path, config: dict) -> Path:
    """The resolved config as YAML (tuples become lists)."""
    path = out / "config.yaml"
    _write_text(path, yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
    return path


def predictions_frame(fold: str, clip_ids: list[str], labels: np.ndarray, probabilities: np.ndarray, *,
                      class_names: tuple[str, ...]) -> pd.DataFrame:
    """One row per test clip: clip_id, fold, label, prediction, prob_<emotion> x C (names, not ids, for labels)."""
    frame = pd.DataFrame({"clip_id": clip_ids, "fold": fold, "label": [class_names[i] for i in labels],
                          "prediction": [class_names[i] for i in probabilities.argmax(1)]})
    for i, name in enumerate(class_names):
        frame[f"prob_{name}"] = probabilities[:, i].round(6)
    return frame


def write_predictions(out: Path, frames: list[pd.DataFrame]) -> Path:
    path = out / "predictions.csv"
    _write_text(path, pd.concat(frames, ignore_index=True).to_csv(index=False))
    return path


def write_confusion(out: Path, matrix: np.ndarray, title: str, *, class_names: tuple[str, ...]) -> tuple[Path, Path]:
    """confusion_matrix.csv (rows true, columns predicted) and a PNG heat map of the same numbers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    csv_path, png_path = out / "confusion_matrix.csv", out / "confusion_matrix.png"
    frame = pd.DataFrame(matrix, index=[f"true_{e}" for e in class_names], columns=[f"pred_{e}" for e in class_names])
    _write_text(csv_path, frame.to_csv())
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


def build_summary(protocol: list[dict], folds: dict[str, dict], mean: dict, std: dict, extra: dict) -> dict:
    """summary.json's content: protocol (folds with actors), per-fold metrics, mean and sample std (labelled
    by `std_kind`), plus `extra`."""
    return {"protocol": protocol, "folds": folds, "mean": mean, "std": std, "std_kind": STD_LABEL, **extra}


def write_summary(out: Path, summary: dict) -> Path:
    path = out / "summary.json"
    _write_text(path, json.dumps(summary, indent=2))
    return path


def format_summary_table(summary: dict) -> str:
    """A plain-text table: one row per fold (test metrics at the selected epoch, then the last epoch's
    macro-F1), mean ± sample std, and the protocol card (actors, seeds, selection rule) under it."""
    has_last = all("last_epoch" in m for m in summary["folds"].values())
    width = max([10, *(len(name) + 2 for name in summary["folds"])])   # fold1-seed2 with --seeds
    header = f"{'fold':<{width}}" + "".join(f"{k:>14}" for k in HEADLINE) + (f"{'epoch':>8}{'last-ep F1':>12}" if has_last else "")
    lines = [header, "-" * len(header)]
    for name, metrics in summary["folds"].items():
        tail = f"{metrics['best_epoch']:>8}{metrics['last_epoch']['f1_macro']:>12.4f}" if has_last else ""
        lines.append(f"{name:<{width}}" + "".join(f"{metrics[k]:>14.4f}" for k in HEADLINE) + tail)
    lines.append("-" * len(header))
    lines.append(f"{'mean':<{width}}" + "".join(
        f"{summary['mean'][k]:>8.4f}±{_spread(summary['std'][k]):<5}" for k in HEADLINE)
        + (f"{'':>8}{summary['mean_last_epoch']['f1_macro']:>12.4f}" if has_last and "mean_last_epoch" in summary else ""))
    lines.append(f"± = {summary.get('std_kind', STD_LABEL)}" + ("" if len(summary["folds"]) > 1 else " (n/a: one fold)"))
    seeds = summary.get("seeds") or []
    if any(summary.get("ci95", {}).get(k) for k in HEADLINE):
        over = (f"{len(summary['folds']) // len(seeds)} folds (each the mean of its {len(seeds)} seeds)" if len(seeds) > 1
                else "folds")
        lines.append(f"95% t-interval of the mean over {over}: " + ", ".join(
            f"{k} [{low:.4f}, {high:.4f}]" for k in HEADLINE if summary["ci95"].get(k) for low, high in [summary["ci95"][k]]))
    if summary.get("optimistic"):   # a tuned config on its own tuning actors: said beside the scores, not only logged
        lines.append(f"WARNING {summary['optimistic']}")
    if summary.get("selection"):
        lines.append(f"selection: {summary['selection']}")
    for card in summary.get("protocol_card", []):
        per_class = card.get("val_clips_per_class")
        val = f"val actors {_short(card['val_actors'])}" + (
            f" ({sum(per_class.values())} clips: {', '.join(f'{k} {v}' for k, v in per_class.items())})" if per_class else "")
        lines.append(f"{card['fold']}: test actors {_short(card['test_actors'])}, {val}, seed "
                     f"{card['seed']} (fold number {card['fold_number']}), epoch {card['selected_epoch']} of "
                     f"{card['epochs_run']} by {card['selection']}")
    return "\n".join(lines)


def _short(actors: list[int]) -> str:
    """The list itself, or its count when long (clip-level data: one actor per clip)."""
    return str(actors) if len(actors) <= 12 else f"({len(actors)} actors)"


def _spread(std: float | None) -> str:
    return "n/a" if std is None else f"{std:.3f}"
