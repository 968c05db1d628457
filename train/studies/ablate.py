"""`mmfer ablate`: train variants of one base config from one cache, with the same folds and seeds, and compare.

Each entry (a name plus dotted-key overrides, optionally `pretrain: true`) x seed is one `train()` run in
`<out>/<name>-<hash>/`, where hash is the sha256 of the resolved config including the seed. A run folder that
holds summary.json is skipped, so an interrupted study resumes. Each entry x seed is a job, claimed in
`<out>/.claims/` (claims.py) before it trains: `--workers N` processes on one machine and `mmfer ablate`
processes on several machines sharing `--out` run every job once. Writes ablation.csv, ablation.md and
ablation.png (intervals from stats.py). Reads only the cache: it never extracts or builds a frozen encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from mmfer.core.config import ModelConfig, TrainConfig
from mmfer.core.errors import ConfigError
from mmfer.core.overrides import apply_overrides, flatten, to_dict
from mmfer.train.studies.claims import try_claim

log = logging.getLogger(__name__)

POLL_S = 5.0        # how often a process whose remaining jobs are all claimed by others looks again
REFERENCE = "full"   # the entry every other one is compared with (paired differences)
# The default study: the design guide's four models, then one change at a time to the full model.
# Overrides are dotted TrainConfig keys on top of the user's base config. `pretrain: true` first trains
# the audio and visual branches alone (--pretrain, same seed, each fold on its own training actors) and
# then the full run loads them; the pretraining runs take the entry's `model.*` overrides only.
DEFAULT_ENTRIES: tuple[dict, ...] = (
    {"name": "audio", "overrides": {"model.variant": "audio"}},                      # audio only
    {"name": "visual", "overrides": {"model.variant": "visual"}},                    # visual only
    {"name": "early", "overrides": {"model.variant": "early"}},                      # concat -> MLP, no LFM2
    {"name": REFERENCE, "overrides": {}},                                            # LFM2 fusion, as configured
    {"name": "lfm2-frozen", "overrides": {"model.fusion.mode": "frozen"}},
    {"name": "lfm2-lora", "overrides": {"model.fusion.mode": "lora"}},
    {"name": "lfm2-2-layers", "overrides": {"model.fusion.num_layers": 2}},         # vs the base's 6
    {"name": "pretrained-branches", "pretrain": True, "overrides": {"training.lr_branches": 1e-5}},
    {"name": "no-aux-losses", "overrides": {"training.loss_weight_audio": 0, "training.loss_weight_visual": 0}},
    {"name": "contrastive", "overrides": {"training.contrastive_weight": 0.1}},     # the base has none
)
# metrics.HEADLINE with display names (not imported from metrics.py: sklearn would load with the CLI parser)
METRIC_NAMES = {"accuracy": "accuracy", "uar": "UAR", "f1_macro": "macro-F1", "f1_weighted": "weighted-F1"}


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    overrides: dict
    pretrain: bool = False


def load_entries(path: str | Path | None) -> tuple[list[Entry], str]:
    """(entries, reference name) from a YAML list of {name, overrides, pretrain}, or a mapping with
    `entries:` and `reference:`; DEFAULT_ENTRIES when path is None."""
    data, reference = list(DEFAULT_ENTRIES), REFERENCE
    if path is not None:
        data = yaml.safe_load(Path(path).read_text())
        if isinstance(data, dict):
            reference, data = data.get("reference", REFERENCE), data.get("entries")
        if not isinstance(data, list) or not data:
            raise ConfigError(f"{path}: want a list of entries ({{name, overrides}}) or a mapping with `entries:`")
    entries = []
    for item in data:
        if not isinstance(item, dict) or "name" not in item or set(item) - {"name", "overrides", "pretrain"}:
            raise ConfigError(f"{path}: each entry needs `name` and may have `overrides`, `pretrain`; got {item!r}")
        entries.append(Entry(str(item["name"]), flatten(item.get("overrides") or {}), bool(item.get("pretrain", False))))
    names = [e.name for e in entries]
    if len(set(names)) != len(names) or reference not in names:
        raise ConfigError(f"{path or 'DEFAULT_ENTRIES'}: entry names must be unique and include the reference "
                          f"{reference!r}; got {names}")
    return entries, reference


def config_hash(cfg: TrainConfig) -> str:
    """sha256 of the resolved config (preset applied; out and resume left out, seed kept)."""
    cfg = dataclasses.replace(cfg, out="", resume=False)
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def run_ablation(base: TrainConfig, out: str | Path, *, entries: list[Entry], reference: str | None,
                 num_seeds: int, keep_checkpoints: bool, workers: int, devices: list[str] | None) -> dict:
    """Train every entry for seeds base.seed .. base.seed+num_seeds-1 (seed-major, so an early stop still has
    every entry at the first seed), then write the table and the plot. Without the reference entry among
    `entries` (or with reference None) the table has no Δ columns. `workers` processes (devices taken in
    turn from `devices`) claim the jobs; other processes sharing `out` claim from the same list.

    Returns {"rows": [one dict per entry], "ran": [run dirs trained by this call], "skipped": [run dirs done
    before or by another process], "table": ablation.md's text}.
    """
    for entry in entries:   # a typo in an entry fails now, not hours into the study
        apply_overrides(base, entry.overrides)
    if reference not in {e.name for e in entries}:   # e.g. --only audio: no Δ columns, decided before training
        log.warning("ablation: the reference entry %r is not selected; the table has no Δ columns "
                    "(add %s to --only to compare with it)", reference, reference)
        reference = None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, entry) for seed in range(base.seed, base.seed + num_seeds) for entry in entries]
    if workers == 1:
        ran = work_through(base, out, jobs, keep_checkpoints)
    else:
        cfgs = [dataclasses.replace(base, device=(devices or [base.device])[i % len(devices or [base.device])])
                for i in range(workers)]
        with multiprocessing.get_context("spawn").Pool(workers) as pool:   # spawned: never fork a torch process
            ran = [d for done in pool.starmap(work_through, [(cfg, out, jobs, keep_checkpoints) for cfg in cfgs])
                   for d in done]
    summaries: dict[str, list[tuple[int, dict]]] = {e.name: [] for e in entries}
    every = []
    for seed, entry in jobs:
        branch_dirs, run_dir, _ = job_plan(base, out, seed, entry)
        every += [*branch_dirs.values(), run_dir]
        summaries[entry.name].append((seed, json.loads((run_dir / "summary.json").read_text())))
    skipped = [str(d) for d in every if str(d) not in ran]
    rows = summarize(summaries, reference)
    table = format_markdown(rows, reference)
    write_outputs(rows, table, out)
    log.info("ablation: %d run(s) trained, %d already done; %s", len(ran), len(skipped), out / "ablation.md")
    return {"rows": rows, "ran": ran, "skipped": skipped, "table": table}


def _branches(model: ModelConfig) -> list[str]:
    return [b for b, used in (("audio", model.uses_audio), ("visual", model.uses_video)) if used]


def job_plan(base: TrainConfig, out: Path, seed: int, entry: Entry) -> tuple[dict, Path, dict]:
    """One job's run folders: ({branch: pretraining run dir}, the entry's run dir, {dir: its config})."""
    cfg = apply_overrides(dataclasses.replace(base, seed=seed), entry.overrides)
    configs, branch_dirs = {}, {}
    if entry.pretrain:
        branch_cfg = apply_overrides(dataclasses.replace(base, seed=seed),
                                     {k: v for k, v in entry.overrides.items() if k.startswith("model.")})
        for b in _branches(cfg.model):
            b_cfg = dataclasses.replace(branch_cfg, pretrain=b)
            branch_dirs[b] = out / "pretrain" / f"{b}-branch-{config_hash(b_cfg)[:12]}"
            configs[branch_dirs[b]] = b_cfg
        cfg = dataclasses.replace(cfg, audio_branch=str(branch_dirs["audio"]) if "audio" in branch_dirs else cfg.audio_branch,
                                  visual_branch=str(branch_dirs["visual"]) if "visual" in branch_dirs else cfg.visual_branch)
    run_dir = out / f"{entry.name}-{config_hash(cfg)[:12]}"
    configs[run_dir] = cfg
    return branch_dirs, run_dir, configs


def work_through(base: TrainConfig, out: Path, jobs: list[tuple[int, Entry]], keep_checkpoints: bool) -> list[str]:
    """Claim and train jobs until every one is done (by this process or another); returns the run dirs trained here.

    A job done before (summary.json) is skipped; one claimed by a live process is left to it and looked at
    again every POLL_S seconds, so a claimant that dies is taken over (claims.py)."""
    ran: list[str] = []
    pending = list(jobs)
    while pending:
        for seed, entry in list(pending):
            _, run_dir, configs = job_plan(base, out, seed, entry)
            if (run_dir / "summary.json").is_file():
                pending.remove((seed, entry))
                continue
            claim = try_claim(out / ".claims" / f"{entry.name}-seed{seed}.claim")
            if claim is None:
                continue
            with claim:
                for folder, cfg in configs.items():   # pretraining runs first, then the entry's run
                    if _run(cfg, folder, keep_checkpoints):
                        ran.append(str(folder))
            pending.remove((seed, entry))
        if pending:
            time.sleep(POLL_S)
    return ran


def _run(cfg: TrainConfig, run_dir: Path, keep_checkpoints: bool) -> bool:
    """Train cfg in run_dir unless its summary.json exists (an unfinished folder is resumed); True if trained."""
    from mmfer.train.cross_validation import train  # here: building the parser must not import torch

    if (run_dir / "summary.json").is_file():
        log.info("ablation: %s done before, skipped", run_dir)
        return False
    log.info("ablation: training %s (seed %d) in %s", run_dir.name, cfg.seed, run_dir)
    train(dataclasses.replace(cfg, out=str(run_dir), resume=True))
    if not keep_checkpoints:   # the summary and branch weights are what the study reads; checkpoints are large
        for folder in run_dir.glob("*/checkpoints"):
            shutil.rmtree(folder)
    return True


def summarize(summaries: dict[str, list[tuple[int, dict]]], reference: str | None) -> list[dict]:
    """One row per entry: per metric mean/std/CI over folds x seeds and the paired difference to reference
    (NaN when reference is None)."""
    from mmfer.train.studies.stats import mean_std_ci, paired_difference  # scipy: only when a study runs

    def values(name: str, metric: str) -> dict[tuple, float]:
        return {(fold, seed): m[metric] for seed, s in summaries[name] for fold, m in s["folds"].items()}

    rows = []
    for name, runs in summaries.items():
        row: dict = {"entry": name, "variant": runs[0][1]["variant"], "num_seeds": len(runs)}
        for metric in METRIC_NAMES:
            stats = mean_std_ci(list(values(name, metric).values()))
            diff = (paired_difference(values(name, metric), values(reference, metric)) if reference is not None
                    else {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan})
            row["n"] = stats["n"]
            row.update({f"{metric}_{k}": stats[k] for k in ("mean", "std", "ci_low", "ci_high")})
            row.update({f"{metric}_diff_{k}": diff[k] for k in ("mean", "ci_low", "ci_high")})
        params = [m.get("trainable_params") for _, s in runs for m in s["folds"].values()]
        row["trainable_params"] = int(params[0]) if params and params[0] is not None else None
        epoch_s = [s["epoch_s_mean"] for _, s in runs if s.get("epoch_s_mean") is not None]
        row["epoch_s"] = sum(epoch_s) / len(epoch_s) if epoch_s else math.nan
        rows.append(row)
    return rows


def _cell(row: dict, metric: str) -> str:
    ci = (f" [{row[f'{metric}_ci_low']:.3f}, {row[f'{metric}_ci_high']:.3f}]"
          if not math.isnan(row[f"{metric}_ci_low"]) else "")
    std = row[f"{metric}_std"]
    return f"{row[f'{metric}_mean']:.3f} ± " + ("n/a" if math.isnan(std) else f"{std:.3f}") + ci


def _diff(row: dict, metric: str, reference: str) -> str:
    if row["entry"] == reference:
        return "(reference)"
    low, high = row[f"{metric}_diff_ci_low"], row[f"{metric}_diff_ci_high"]
    return f"{row[f'{metric}_diff_mean']:+.3f}" + (f" [{low:+.3f}, {high:+.3f}]" if not math.isnan(low) else "")


def format_markdown(rows: list[dict], reference: str | None) -> str:
    """The comparison as a Markdown table: mean ± std [95% CI] per metric, paired differences to reference
    (no Δ columns when reference is None)."""
    n = rows[0]["n"] if rows else 0
    deltas = [] if reference is None else [f"Δ accuracy vs {reference}", f"Δ macro-F1 vs {reference}"]
    head = ["entry", "variant"] + list(METRIC_NAMES.values()) + deltas + ["trainable params", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        params = f"{row['trainable_params']:,}" if row["trainable_params"] is not None else "?"
        diffs = [] if reference is None else [_diff(row, "accuracy", reference), _diff(row, "f1_macro", reference)]
        cells = [row["entry"], row["variant"]] + [_cell(row, m) for m in METRIC_NAMES] + diffs + [params, f"{row['epoch_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nTest actors of each fold; mean ± sample std (ddof=1) [95% t-interval] over {n} fold x seed values; "
                 + (f"Δ = mean paired difference to `{reference}` over the same (fold, seed) [95% t-interval]."
                    if reference is not None else "no Δ columns: the reference entry was not run."))
    return "\n".join(lines)


def write_outputs(rows: list[dict], table: str, out: Path) -> None:
    """ablation.csv (every number), ablation.md (the table) and ablation.png (bars with 95% CI whiskers, n/a for one value)."""
    import pandas as pd

    # each file is written aside and renamed: processes sharing --out write the same table at the end
    with tempfile.TemporaryDirectory(dir=out, prefix=".write-") as tmp:
        pd.DataFrame(rows).to_csv(Path(tmp) / "ablation.csv", index=False)
        (Path(tmp) / "ablation.md").write_text(table + "\n")
        plot_bars(rows, Path(tmp) / "ablation.png")
        for name in ("ablation.csv", "ablation.md", "ablation.png"):
            os.replace(Path(tmp) / name, out / name)


def plot_bars(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = bars_figure(rows)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bars_figure(rows: list[dict]):
    """The ablation bars: mean per metric, whiskers the 95% t-interval; an entry with a single value (one fold,
    one seed) has no interval, so it gets no whisker and an "n/a" mark instead of a whisker of zero width."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    width = 0.8 / len(METRIC_NAMES)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    for i, (metric, label) in enumerate(METRIC_NAMES.items()):
        means = np.array([r[f"{metric}_mean"] for r in rows])
        has_ci = np.array([not math.isnan(r[f"{metric}_ci_low"]) for r in rows])
        half = np.array([(r[f"{metric}_ci_high"] - r[f"{metric}_ci_low"]) / 2 if ok else 0.0
                         for r, ok in zip(rows, has_ci)])
        xs = x + (i - 1.5) * width
        ax.bar(xs, means, width, label=label)
        if has_ci.any():
            ax.errorbar(xs[has_ci], means[has_ci], yerr=half[has_ci], fmt="none", ecolor="black", capsize=3)
        for xi, mean in zip(xs[~has_ci], means[~has_ci]):
            ax.text(xi, min(mean, 0.93) + 0.01, "CI n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [r["entry"] for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    single = all(math.isnan(r[f"{m}_ci_low"]) for r in rows for m in METRIC_NAMES)
    ax.set_ylabel("test score (mean; one value: no 95% CI, n/a)" if single else "test score (mean, 95% CI; n/a: one value)")
    ax.set_title("ablation over folds x seeds")
    ax.legend(ncols=4, fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
