"""`mmfer evaluate`: a trained run's fold models (or their ensemble) on another dataset's cache, or on their
own test clips under corruptions.

Cross-corpus (--cache OTHER): a cache extracted with the same encoders and settings (same feature
fingerprints; any other is refused), an optional label map {cache label: run label} (default: the classes
both name alike). Clips made from media the run's fold models trained or validated on (matched by source
signature or path with the run's own cache) are refused unless --allow-overlap, which reports their count. Out: metrics.json, predictions.csv and the confusion matrix over the shared classes, in --out.
Robustness (--corrupt LIST): pipeline/robustness.py; robustness.csv/.md/.png in --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mmfer.pipeline.command_config import EvaluateConfig
from mmfer.core.errors import BadInputError, ConfigError
from mmfer.core.labels import EMOTIONS, common_label
from mmfer.core.overrides import read_yaml

log = logging.getLogger(__name__)


class EncoderMismatchError(BadInputError, RuntimeError):
    """The other cache holds no features made with the run's encoders and settings."""


def label_mapping(run_names: tuple[str, ...], cache_names: tuple[str, ...], label_map: str | None) -> dict[str, str]:
    """{cache label: run label} from the YAML file, else the classes both label sets name alike (`common_label`).

    Raises:
        ConfigError: a name the file gives is in neither label set, or no class is shared.
    """
    if label_map:
        given = read_yaml(label_map)
        if not isinstance(given, dict):
            raise ConfigError(f"{label_map}: a label map is a YAML mapping of cache label: run label")
        mapping = {str(k): str(v) for k, v in given.items()}
        unknown = [k for k in mapping if k not in cache_names] + [v for v in mapping.values() if v not in run_names]
        if unknown:
            raise ConfigError(f"{label_map}: {unknown} are not labels of the cache ({', '.join(cache_names)}) "
                              f"or of the run ({', '.join(run_names)}); fix the label map")
    else:   # the default map: same class, same name (core/labels.py LABEL_SYNONYMS reads fear as fearful, ...)
        run_by_common = {common_label(n): n for n in run_names}
        mapping = {n: run_by_common[common_label(n)] for n in cache_names if common_label(n) in run_by_common}
    if not mapping:
        raise ConfigError(f"the cache's classes ({', '.join(cache_names)}) and the run's ({', '.join(run_names)}) share "
                          "no name; give --label-map FILE.yaml (cache label: run label)")
    return mapping


def evaluate(cfg: EvaluateConfig) -> dict:
    """Score the run's model(s) on `cfg.cache`'s clips whose labels map to the run's; write --out.

    Raises:
        EncoderMismatchError: the cache lacks features with the run's fingerprints.
        ConfigError: a bad label map, or no clip of a shared class.
    """
    import torch

    from mmfer.pipeline.bundle import load_run_bundle, train_config
    from mmfer.pipeline.clip_overlap import seen_clips
    from mmfer.pipeline.predictor import offline_overrides
    from mmfer.core.device import resolve_device
    from mmfer.core.store import StoreError, open_store
    from mmfer.train.dataset import ClipDataset, collate_clips, open_cache
    from mmfer.train.loop import to_device
    from mmfer.train.metrics import compute_metrics
    from mmfer.train.model.builder import build_model_from_spec, model_spec
    from mmfer.train.report import write_confusion

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: --out is a file, not a folder; give a folder for the evaluation")
    try:   # the cache must hold features made with the run's encoders and settings (its fingerprints)
        bundle = load_run_bundle(cfg.run, fold=cfg.fold, ensemble=cfg.fold is None, cache=cfg.cache)
        train_cfg = train_config(bundle.config)
        fingerprints = bundle.config["cache_fingerprints"]
        cache = open_cache(cfg.cache, use_video=train_cfg.model.uses_video, use_audio=train_cfg.model.uses_audio,
                           video_entry=fingerprints.get("video"), audio_entry=fingerprints.get("audio"))
    except StoreError as err:
        store = open_store(cfg.cache)
        held = {m: [store.entry(m, fp).attrs.get("encoder", {}).get("name") for fp in store.fingerprints(m)]
                for m in ("video", "audio")}
        raise EncoderMismatchError(f"{cfg.cache}: holds no features made with run {cfg.run}'s encoders and settings "
                                   f"({err}); it holds video {held['video']}, audio {held['audio']}. Extract it with the "
                                   "run's encoders and settings (same --preset, encoders, num_frames, face_crop)") from None
    run_names = tuple(bundle.config.get("label_names") or EMOTIONS)
    mapping = label_mapping(run_names, cache.label_names, cfg.label_map)
    shared = [n for n in run_names if n in mapping.values()]          # the scored classes, in the run's order
    cache_label = cache.clips["label"].map(lambda i: cache.label_names[int(i)])
    clips = cache.clips[cache_label.isin(mapping)].reset_index(drop=True)
    if clips.empty:
        raise ConfigError(f"{cfg.cache}: no usable clip of the mapped classes {sorted(mapping)}")
    truth = np.array([shared.index(mapping[cache.label_names[int(i)]]) for i in clips["label"]])
    overlap, unchecked = seen_clips(bundle, clips)
    if unchecked:
        log.warning("%s: cannot check which clips the run trained on: %s", cfg.cache, unchecked)
    if overlap and not cfg.allow_overlap:
        raise ConfigError(f"{cfg.cache}: {len(overlap)} of its {len(clips)} scored clips (e.g. {', '.join(overlap[:3])}) "
                          f"are made from the media run {cfg.run}'s fold models trained or validated on, so their score "
                          "is not cross-corpus; evaluate on another dataset's cache, or pass --allow-overlap to score "
                          "anyway (the overlap is reported beside the score)")

    device = resolve_device(cfg.device)
    video_shape = tuple(cache.video_shape) if train_cfg.model.uses_video else None
    audio_dim = cache.audio_shape[1] if train_cfg.model.uses_audio else None
    spec = bundle.model_spec or model_spec(train_cfg.model, video_dim=cache.video_shape[2], num_patches=cache.video_shape[1],
                                           audio_dim=cache.audio_shape[1], dropout=train_cfg.training.dropout)
    model = build_model_from_spec(spec, offline_overrides(train_cfg.model)).to(device).eval()
    dataset = ClipDataset(cache, list(clips["clip_id"]), preload=False)
    columns = [run_names.index(n) for n in shared]
    per_model: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for name, state in zip(bundle.fold_names, bundle.states):
            model.load_state_dict(state)
            parts = []
            for start in range(0, len(dataset), cfg.batch_size):
                items = [dataset[i] for i in range(start, min(start + cfg.batch_size, len(dataset)))]
                batch = to_device(collate_clips(items, video_shape=video_shape, audio_dim=audio_dim), device)
                parts.append(model(batch)["probabilities"].float().cpu().numpy())
            probs = np.concatenate(parts)[:, columns]
            per_model[name] = probs / probs.sum(1, keepdims=True)   # renormalised over the shared classes
    ensemble = np.mean(list(per_model.values()), axis=0)
    metrics = compute_metrics(truth, ensemble.argmax(1), class_names=tuple(shared))
    folds = {n: {k: v for k, v in compute_metrics(truth, p.argmax(1), class_names=tuple(shared)).items()
                 if not isinstance(v, (dict, list))} for n, p in per_model.items()}
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"clip_id": clips["clip_id"], "label": [shared[i] for i in truth],
                          "prediction": [shared[i] for i in ensemble.argmax(1)]})
    for i, n in enumerate(shared):
        frame[f"prob_{n}"] = ensemble[:, i].round(6)
    frame.to_csv(out / "predictions.csv", index=False)
    write_confusion(out, np.asarray(metrics["confusion_matrix"]), f"{Path(cfg.run).name} on {Path(cfg.cache).name}",
                    class_names=tuple(shared))
    result = {"run": str(cfg.run), "cache": str(cfg.cache), "dataset": cache.dataset, "label_map": mapping,
              "classes": shared, "models": list(per_model), "num_clips": int(len(clips)),
              "num_left_out": int(len(cache.clips) - len(clips)), "metrics": metrics, "folds": folds,
              "num_overlap": None if unchecked else len(overlap)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def format_evaluation(result: dict) -> str:
    m = result["metrics"]
    models = "ensemble of " + ", ".join(result["models"]) if len(result["models"]) > 1 else result["models"][0]
    return (f"{result['run']} ({models}) on {result['cache']}: {result['num_clips']} clips of {len(result['classes'])} "
            f"shared classes ({', '.join(result['classes'])}; {result['num_left_out']} clips of other classes left out)\n"
            f"accuracy {m['accuracy']:.3f}  uar {m['uar']:.3f}  f1_macro {m['f1_macro']:.3f}  f1_weighted {m['f1_weighted']:.3f}"
            + (f"  (overlap: {result['num_overlap']} of these clips were trained or validated on by the run, "
               "--allow-overlap)" if result.get("num_overlap") else ""))


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.flags import add_config_flags

    parser.description = ("Cross-corpus evaluation: a run's fold models (default: their ensemble) on another dataset's "
                          "cache, through a label map, on the classes the two share. With --corrupt: robustness, each "
                          "fold model on its own test clips with a modality missing or degraded.")
    add_config_flags(parser, EvaluateConfig, layered=False)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmfer.pipeline.flags import resolve_config

    cfg: EvaluateConfig = resolve_config(EvaluateConfig, args, layered=False)
    check_out_folder(cfg)
    if cfg.corrupt:
        return _robustness(cfg)
    if not cfg.run or not cfg.cache:
        raise ConfigError("evaluate needs --run RUN_DIR and --cache OTHER_CACHE (cross-corpus) or --corrupt LIST (robustness)")
    result = evaluate(cfg)
    print(format_evaluation(result))
    print(f"wrote {Path(cfg.out) / 'metrics.json'}, predictions.csv and confusion_matrix.csv/png")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    """`mmfer robustness` (the first name of `mmfer evaluate --corrupt`, kept for scripts): --corrupt defaults to all."""
    from mmfer.pipeline.flags import resolve_config

    cfg: EvaluateConfig = resolve_config(EvaluateConfig, args, layered=False)
    check_out_folder(cfg)
    return _robustness(cfg if cfg.corrupt else dataclasses.replace(cfg, corrupt="all"))


class OutNotEmptyError(BadInputError, FileExistsError):
    """evaluate's --out already holds files and --overwrite was not given."""


def check_out_folder(cfg: EvaluateConfig) -> None:
    """--out must be a folder that is new or empty, unless --overwrite (as export, make-demo and extract ask);
    checked before any model loads, so an earlier evaluation is never replaced by accident."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: --out is a file, not a folder; give a folder for the evaluation")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not cfg.overwrite:
        raise OutNotEmptyError(f"{out}: not empty (holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
                               "choose a new --out, or pass --overwrite to replace an earlier evaluation")


def _robustness(cfg: EvaluateConfig) -> int:
    from mmfer.pipeline.robustness import robustness_report

    if not cfg.run:
        raise ConfigError("--corrupt needs --run RUN_DIR: a train-fusion run folder")
    result = robustness_report(cfg)
    print(result["table"])
    print(f"\nwrote {result['out'] / 'robustness.csv'}, robustness.md, robustness.png")
    return 0
