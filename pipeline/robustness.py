"""`mmfer evaluate --run RUN --corrupt LIST`: how a trained run holds up when a modality is missing or degraded.

Each fold model of the run is scored on its own test clips, clean and under each corruption. Most act on the
cached features (train/robustness.py says what each does; they change encoder tokens, not media);
face-crop-off extracts the test clips' frames again without the face crop, through the predictor's copy of
extract's steps. Writes robustness.csv (one row per fold, corruption and classifier), robustness.md (mean
macro-F1 per corruption beside the clean score, with the fusion gain over the fused model's audio and
visual auxiliary heads)
and robustness.png.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mmfer.pipeline.command_config import EvaluateConfig
from mmfer.core.errors import ConfigError

log = logging.getLogger(__name__)


def robustness_report(cfg: EvaluateConfig) -> dict:
    """Score every fold model on its test clips, clean and under each of cfg.corrupt; write the three files
    into cfg.out; return {'scores': DataFrame, 'table': markdown text, 'out': Path}.

    Raises:
        ConfigError: an unknown corruption, a run without model_spec or protocol, or face-crop-off on a cache
            whose frames were not face-cropped.
    """
    import torch

    from mmfer.pipeline.bundle import load_run_bundle, train_config
    from mmfer.pipeline.predictor import offline_overrides
    from mmfer.core.device import resolve_device
    from mmfer.core.splits import Fold, assign_parts
    from mmfer.train.dataset import ClipDataset, EpochSampler, make_loader, open_cache
    from mmfer.train.loop import to_device
    from mmfer.train.model.builder import build_model_from_spec
    from mmfer.train.robustness import MEDIA_CORRUPTIONS, evaluate_fold, parse_corruptions

    try:
        corruptions = parse_corruptions(cfg.corrupt)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    out = Path(cfg.out)
    if cfg.label_map:
        raise ConfigError("--label-map is for a cross-corpus evaluation (--cache OTHER); --corrupt scores the run's own classes")
    bundle = load_run_bundle(cfg.run, fold=cfg.fold, ensemble=cfg.fold is None, cache=cfg.cache)
    if bundle.model_spec is None:
        raise ConfigError(f"{cfg.run}: its checkpoints carry no model_spec (trained by an older mmfer); retrain to score it")
    run_cfg = train_config(bundle.config)
    fingerprints = bundle.config["cache_fingerprints"]
    cache = open_cache(cfg.cache or bundle.store_path, use_video=run_cfg.model.uses_video, use_audio=run_cfg.model.uses_audio,
                       video_entry=fingerprints.get("video"), audio_entry=fingerprints.get("audio"), expected=fingerprints)
    device = resolve_device(cfg.device)
    dataset = ClipDataset(cache, list(cache.clips["clip_id"]), preload=False)
    protocol = {f["name"]: f for f in bundle.evaluation.get("protocol", [])}
    predictor = media_predictor(bundle, corruptions, device=cfg.device, encoders={
        "visual_encoder": cfg.visual_encoder, "audio_encoder": cfg.audio_encoder, "models_dir": cfg.models_dir})
    rows = []
    for name, state in zip(bundle.fold_names, bundle.states):
        if name not in protocol:
            raise ConfigError(f"{cfg.run}: summary.json lists no actors for {name}; let the run finish first")
        p = protocol[name]
        fold = Fold(name, tuple(p["train_actors"]), tuple(p["val_actors"]), tuple(p["test_actors"]))
        test_pos = (assign_parts(cache.clips, fold).to_numpy() == "test").nonzero()[0]
        if cfg.cache:   # another store than the run's own: its actor numbers must mean the run's test clips
            check_test_clips(cfg, name, list(cache.clips["clip_id"].iloc[test_pos]), cache.clips.iloc[test_pos], bundle)
        loader = make_loader(dataset, EpochSampler(test_pos), batch_size=run_cfg.training.batch_size, num_workers=0,
                             seed=cfg.seed, pin_memory=device.type == "cuda")
        batches = [to_device(b, device) for b in loader]
        replaced = {c: media_batches(predictor, cache, test_pos, c, batch_size=run_cfg.training.batch_size, device=device)
                    for c in corruptions if c in MEDIA_CORRUPTIONS}
        model = build_model_from_spec(bundle.model_spec, offline_overrides(run_cfg.model))
        model.load_state_dict(state)
        model.to(device)
        with torch.autocast(device.type, enabled=False):
            scores = evaluate_fold(model, batches, corruptions, seed=cfg.seed, class_names=cache.label_names, replaced=replaced)
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


def check_test_clips(cfg: EvaluateConfig, fold: str, clip_ids: list[str], scored: pd.DataFrame, bundle) -> None:
    """Refuse scoring fold `fold` on --cache clips that are not the run's test clips of that fold: the clip ids
    must be those of the run's predictions.csv, and, where the run's own cache can be read, each made from the
    same media (`clip_keys`: source signature or path).

    Raises:
        ConfigError: naming how many clips differ and an example.
    """
    from mmfer.pipeline.clip_overlap import clip_keys
    from mmfer.pipeline.bundle import own_store_path
    from mmfer.core.store import StoreError, open_store

    predictions = Path(cfg.run) / "predictions.csv"
    if not predictions.exists():
        log.warning("%s: no predictions.csv; cannot check that %s holds %s's test clips", cfg.run, cfg.cache, fold)
        return
    table = pd.read_csv(predictions, dtype={"clip_id": str})
    expected = set(table.loc[table["fold"] == fold, "clip_id"])
    extra, missing = sorted(set(clip_ids) - expected), sorted(expected - set(clip_ids))
    if extra or missing:
        raise ConfigError(f"{cfg.cache}: the clips it holds for {fold}'s test actors are not the run's test clips of "
                          f"{fold} ({len(extra)} not among them, e.g. {extra[:3]}; {len(missing)} of them absent, e.g. "
                          f"{missing[:3]}); --corrupt --cache takes the run's own store (moved), not another dataset's")
    try:
        own = open_store(own_store_path(bundle), mode="r").clip_table
    except (StoreError, FileNotFoundError, OSError):
        return   # moved: the clip ids are what can be checked
    own_keys = dict(zip(own["clip_id"].astype(str), clip_keys(own)))
    differ = [c for c, keys in zip(clip_ids, clip_keys(scored)) if keys and own_keys.get(c) and not keys & own_keys[c]]
    if differ:
        raise ConfigError(f"{cfg.cache}: {len(differ)} of {fold}'s test clips (e.g. {differ[:3]}) are made from other "
                          f"media than the run's own cache {own_store_path(bundle)} records; --corrupt --cache takes "
                          "the run's own store (moved), not another one")


def media_predictor(bundle, corruptions: list[str], *, device: str, encoders: dict | None = None):
    """The recorded encoders for a media corruption (None when none is asked for); `encoders`: the
    visual_encoder / audio_encoder / models_dir flags, as predict takes them.

    Raises:
        ConfigError: face-crop-off on a run without video, or on a cache whose frames were not face-cropped.
    """
    from mmfer.pipeline.predictor import Predictor
    from mmfer.train.robustness import MEDIA_CORRUPTIONS

    if not any(name in MEDIA_CORRUPTIONS for name in corruptions):
        return None
    video = bundle.features.get("video")
    if video is None:
        raise ConfigError(f"face-crop-off: run {bundle.source} reads no video")
    if video.get("face_crop", "none") == "none":
        raise ConfigError("face-crop-off: the run's frames were encoded without a face crop (face_crop=none); "
                          "there is no crop to turn off")
    encoders = encoders or {}
    return Predictor(bundle, device=device, visual_encoder=encoders.get("visual_encoder"),
                     audio_encoder=encoders.get("audio_encoder"), models_dir=encoders.get("models_dir"))


def media_batches(predictor, cache, positions, name: str, *, batch_size: int, device) -> list[dict]:
    """The test clips at `positions` of cache.clips extracted again under the media corruption `name`, as
    device batches in the order the loader gives them (labels from the cache)."""
    from mmfer.train.dataset import collate_clips, to_device

    assert name == "face-crop-off", name
    items = []
    for pos in positions:
        row = cache.clips.iloc[[pos]]
        item = predictor.row_features(row, face_crop="none")
        item["label"] = int(row["label"].iloc[0])
        items.append(item)
    return [to_device(collate_clips(items[i:i + batch_size], video_shape=predictor.video_shape,
                                    audio_dim=predictor.audio_dim), device) for i in range(0, len(items), batch_size)]


def summary_table(frame: pd.DataFrame, order: list[str]) -> str:
    """Markdown: per corruption the mean macro-F1 over folds of each classifier, the change from clean, and
    the fusion gain over the audio and the visual classifier (fused minus single; n/a without that head)."""
    mean = frame.groupby(["corruption", "classifier"])["f1_macro"].mean().unstack()
    clean = mean.loc["clean", "fusion"]
    lines = ["| corruption (on cached features) | fusion macro-F1 | vs clean | audio aux head | visual aux head "
             "| fusion gain over audio head | fusion gain over visual head |", "|---|---|---|---|---|---|---|"]
    for name in order:
        row = mean.loc[name]
        cell = lambda head: f"{row[head]:.4f}" if head in row and pd.notna(row[head]) else "n/a"   # noqa: E731
        gain = lambda head: f"{row['fusion'] - row[head]:+.4f}" if head in row and pd.notna(row[head]) else "n/a"   # noqa: E731
        lines.append(f"| {name} | {row['fusion']:.4f} | {row['fusion'] - clean:+.4f} | {cell('audio')} | "
                     f"{cell('visual')} | {gain('audio')} | {gain('visual')} |")
    lines.append(f"\nmean over {frame['fold'].nunique()} fold(s), each fold model on its own test actors; "
                 "audio-snr-X = noise on the cached audio tokens at X dB SNR, not on the recording; the audio and "
                 "visual aux heads are the fused model's own auxiliary classifiers (trained with it), not separately "
                 "trained single-modality models")
    return "\n".join(lines)


HEAD_LABELS = {"fusion": "fused model", "audio": "audio aux head of the fused model",
               "visual": "visual aux head of the fused model"}   # not separately trained single-modality runs


def write_plot(frame: pd.DataFrame, order: list[str], path: Path, *, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig = plot_figure(frame, order, title=title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_figure(frame: pd.DataFrame, order: list[str], *, title: str):
    """Grouped bars: mean macro-F1 per corruption for the fused classifier and the fused model's auxiliary
    audio and visual heads (labelled as such: they are not single-modality models trained on their own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = frame.groupby(["corruption", "classifier"])["f1_macro"].mean().unstack().reindex(order)
    heads = [h for h in ("fusion", "audio", "visual") if h in mean.columns]
    fig, ax = plt.subplots(figsize=(1.3 * len(order) + 2, 3.5))
    width = 0.8 / len(heads)
    for i, head in enumerate(heads):
        ax.bar([x + i * width for x in range(len(order))], mean[head].to_numpy(), width, label=HEAD_LABELS[head])
    ax.set_xticks([x + width * (len(heads) - 1) / 2 for x in range(len(order))], order, rotation=20)
    ax.set_ylabel("macro-F1 (test actors)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
