"""`mmfer robustness`: how a trained run holds up when a modality is missing or degraded.

Each fold model of the run is scored on its own test clips, clean and under each corruption of the cached
features (train/robustness.py says what each does; they act on encoder tokens, not on media). Writes
robustness.csv (one row per fold, corruption and classifier), robustness.md (mean macro-F1 per corruption
beside the clean score, with the fusion gain over each single-modality classifier) and robustness.png.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from mmfer.pipeline.app.flags import add_config_flags, resolve_config
from mmfer.pipeline.config import RobustnessConfig
from mmfer.pipeline.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = "cfg:"


def add_robustness_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Score a run's fold models on their test clips with a modality missing or degraded (on the "
                          "cached features): macro-F1 per corruption beside the clean score, the fusion gain over each "
                          "single modality; writes robustness.csv/.md/.png.")
    add_config_flags(parser, RobustnessConfig, prefix=STAGES, layered=False)


def cmd_robustness(args: argparse.Namespace) -> int:
    cfg: RobustnessConfig = resolve_config(RobustnessConfig, args, prefix=STAGES, layered=False)
    if not cfg.run:
        raise ConfigError("--run is required: a train-fusion run folder")
    result = robustness_report(cfg)
    print(result["table"])
    print(f"\nwrote {result['out'] / 'robustness.csv'}, robustness.md, robustness.png")
    return 0


def robustness_report(cfg: RobustnessConfig) -> dict:
    """Score every fold model; write the three files into cfg.out (default <run>/robustness); return
    {'scores': DataFrame, 'table': markdown text, 'out': Path}."""
    import torch

    from mmfer.pipeline.app.bundle import load_run_bundle, train_config
    from mmfer.pipeline.app.predictor import offline_overrides
    from mmfer.pipeline.device import resolve_device
    from mmfer.pipeline.splits import Fold, assign_parts
    from mmfer.train.dataset import ClipDataset, EpochSampler, make_loader, open_cache
    from mmfer.train.loop import to_device
    from mmfer.train.model.builder import build_model_from_spec
    from mmfer.train.robustness import evaluate_fold, parse_corruptions

    try:
        corruptions = parse_corruptions(cfg.corrupt)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "robustness"
    bundle = load_run_bundle(cfg.run, ensemble=True, cache=cfg.cache)
    if bundle.model_spec is None:
        raise ConfigError(f"{cfg.run}: its checkpoints carry no model_spec (trained by an older mmfer); retrain to score it")
    run_cfg = train_config(bundle.config)
    fingerprints = bundle.config["cache_fingerprints"]
    cache = open_cache(cfg.cache or run_cfg.cache, use_video=run_cfg.model.uses_video, use_audio=run_cfg.model.uses_audio,
                       video_entry=fingerprints.get("video"), audio_entry=fingerprints.get("audio"), expected=fingerprints)
    device = resolve_device(cfg.device)
    dataset = ClipDataset(cache, list(cache.clips["clip_id"]), preload=False)
    protocol = {f["name"]: f for f in bundle.evaluation.get("protocol", [])}
    rows = []
    for name, state in zip(bundle.fold_names, bundle.states):
        if name not in protocol:
            raise ConfigError(f"{cfg.run}: summary.json lists no actors for {name}; let the run finish first")
        p = protocol[name]
        fold = Fold(name, tuple(p["train_actors"]), tuple(p["val_actors"]), tuple(p["test_actors"]))
        test_pos = (assign_parts(cache.clips, fold).to_numpy() == "test").nonzero()[0]
        loader = make_loader(dataset, EpochSampler(test_pos), batch_size=run_cfg.training.batch_size, num_workers=0,
                             seed=cfg.seed, pin_memory=device.type == "cuda")
        batches = [to_device(b, device) for b in loader]
        model = build_model_from_spec(bundle.model_spec, offline_overrides(run_cfg.model))
        model.load_state_dict(state)
        model.to(device)
        with torch.autocast(device.type, enabled=False):
            scores = evaluate_fold(model, batches, corruptions, seed=cfg.seed, class_names=cache.label_names)
        for corruption, heads in scores.items():
            for head, f1 in heads.items():
                rows.append({"fold": name, "corruption": corruption, "classifier": head, "f1_macro": f1})
        log.info("%s: %s", name, ", ".join(f"{c} {s['fusion']:.3f}" for c, s in scores.items()))
    frame = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "robustness.csv", index=False)
    table = summary_table(frame, ["clean", *corruptions])
    (out / "robustness.md").write_text(table + "\n")
    write_plot(frame, ["clean", *corruptions], out / "robustness.png", title=f"{cfg.run}: {len(bundle.fold_names)} fold(s)")
    return {"scores": frame, "table": table, "out": out}


def summary_table(frame: pd.DataFrame, order: list[str]) -> str:
    """Markdown: per corruption the mean macro-F1 over folds of each classifier, the change from clean, and
    the fusion gain over the audio and the visual classifier (fused minus single; n/a without that head)."""
    mean = frame.groupby(["corruption", "classifier"])["f1_macro"].mean().unstack()
    clean = mean.loc["clean", "fusion"]
    lines = ["| corruption (on cached features) | fusion macro-F1 | vs clean | audio-only head | visual-only head "
             "| fusion gain over audio | fusion gain over visual |", "|---|---|---|---|---|---|---|"]
    for name in order:
        row = mean.loc[name]
        cell = lambda head: f"{row[head]:.4f}" if head in row and pd.notna(row[head]) else "n/a"   # noqa: E731
        gain = lambda head: f"{row['fusion'] - row[head]:+.4f}" if head in row and pd.notna(row[head]) else "n/a"   # noqa: E731
        lines.append(f"| {name} | {row['fusion']:.4f} | {row['fusion'] - clean:+.4f} | {cell('audio')} | "
                     f"{cell('visual')} | {gain('audio')} | {gain('visual')} |")
    lines.append(f"\nmean over {frame['fold'].nunique()} fold(s), each fold model on its own test actors; "
                 "audio-snr-X = noise on the cached audio tokens at X dB SNR, not on the recording")
    return "\n".join(lines)


def write_plot(frame: pd.DataFrame, order: list[str], path: Path, *, title: str) -> Path:
    """Grouped bars: mean macro-F1 per corruption for the fused and each single-modality classifier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = frame.groupby(["corruption", "classifier"])["f1_macro"].mean().unstack().reindex(order)
    heads = [h for h in ("fusion", "audio", "visual") if h in mean.columns]
    fig, ax = plt.subplots(figsize=(1.3 * len(order) + 2, 3.5))
    width = 0.8 / len(heads)
    for i, head in enumerate(heads):
        ax.bar([x + i * width for x in range(len(order))], mean[head].to_numpy(), width, label=head)
    ax.set_xticks([x + width * (len(heads) - 1) / 2 for x in range(len(order))], order, rotation=20)
    ax.set_ylabel("macro-F1 (test actors)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
