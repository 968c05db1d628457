"""`mmfer export`: a self-contained model folder that `mmfer predict --model DIR` reads.

It holds the fold weights (safetensors), the resolved config, the feature records (encoder identities,
preprocessing and decode parameters, copied from the cache entries), the label names, the protocol and
metrics from summary.json, a model card and, with --include-encoders, the encoders themselves (else predict
finds them by weights hash, pipeline/encoder_lookup.py); with --onnx each fold model as ONNX too (onnx/<fold>.onnx),
with --onnx-encoders the encoders as well (onnx/encoders/). Neither the cache nor the run is needed afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from mmfer.pipeline.command_config import ExportConfig
from mmfer.core.errors import ConfigError
from mmfer.core.labels import EMOTIONS

log = logging.getLogger(__name__)

def export_model(run_dir: str | Path, out: str | Path, *, fold: str | None = None, ensemble: bool = False,
                 cache: str | None = None, include_encoders: bool = False, onnx: bool = False,
                 onnx_encoders: bool = False) -> Path:
    """Write the export folder `out` (staged, then renamed into place) and return it.

    Raises:
        FileExistsError: `out` exists and is not empty.
        FileNotFoundError: see `load_run_bundle`.
    """
    from safetensors.torch import save_file

    from mmfer.pipeline.bundle import (EXPORT_FORMAT, EXPORT_MANIFEST, MODEL_SPEC_KEY, fold_number, load_run_bundle,
                                           run_fold_numbers)

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose another --out")
    if onnx or onnx_encoders:   # before any work: the exporter's and the runtime's packages
        from mmfer.pipeline.runtime import require_onnx

        for module in ("onnx", "onnxscript", "onnxruntime"):
            require_onnx("--onnx", module)
    bundle = load_run_bundle(run_dir, fold=fold, ensemble=ensemble, cache=cache)
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    (staging / "weights").mkdir(parents=True)
    try:
        folds = []
        summary = bundle.evaluation
        protocol = {f["name"]: f for f in summary.get("protocol", [])}
        for name, state in zip(bundle.fold_names, bundle.states):
            weights = f"weights/{name}.safetensors"
            metadata = {MODEL_SPEC_KEY: json.dumps(bundle.model_spec)} if bundle.model_spec else None
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(staging / weights),
                      metadata=metadata)   # the weights file alone rebuilds its model (build_model_from_spec)
            number = fold_number(name, run_fold_numbers(summary))   # predict --model DIR --fold N: protocol fold N
            folds.append({"name": name, "weights": weights, **({"fold_number": number} if number is not None else {}),
                          **{k: v for k, v in protocol.get(name, {}).items() if k != "name"},
                          "metrics": {k: v for k, v in summary.get("folds", {}).get(name, {}).items()
                                      if not isinstance(v, (dict, list))}})   # per class + confusion: evaluation.json
            if onnx or onnx_encoders:
                folds[-1]["onnx"] = _export_fold_onnx(bundle, state, staging / f"onnx/{name}.onnx").relative_to(staging).as_posix()
        evaluation = {"protocol": [protocol[n] for n in bundle.fold_names if n in protocol],
                      "folds": {n: summary.get("folds", {}).get(n, {}) for n in bundle.fold_names},
                      "run_mean": summary.get("mean", {}), "run_std": summary.get("std", {}),
                      "run_protocol": summary.get("protocol", []), "variant": summary.get("variant"),
                      **({"optimistic": summary["optimistic"]} if summary.get("optimistic") else {})}
        _write_json(staging / "config.json", bundle.config)
        _write_json(staging / "features.json", bundle.features)
        _write_json(staging / "evaluation.json", evaluation)
        _copy_lfm2_config(bundle.config, staging)
        encoders = _copy_encoders(bundle, staging) if include_encoders else {}
        onnx_encoder_files = _export_encoders_onnx(bundle, staging) if onnx_encoders else {}
        label_names = list(bundle.config.get("label_names") or EMOTIONS)   # runs before label_names: RAVDESS's
        manifest = {"format": EXPORT_FORMAT, "label_names": label_names, "folds": folds,
                    "ensemble": bundle.is_ensemble, "config": "config.json", "features": "features.json",
                    "evaluation": "evaluation.json", "source_run": str(Path(run_dir).resolve()),
                    "cache_fingerprints": bundle.config.get("cache_fingerprints"),
                    **({"encoders": encoders} if encoders else {}),
                    **({"onnx_encoders": onnx_encoder_files} if onnx_encoder_files else {}),
                    **({"unfinished": bundle.unfinished} if bundle.unfinished else {})}
        _write_json(staging / EXPORT_MANIFEST, manifest)
        (staging / "README.md").write_text(model_card(out.name, bundle, folds, evaluation, encoders))
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s (%s) to %s", run_dir, bundle.describe(), out)
    return out


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, default=str))


def _copy_encoders(bundle, staging: Path) -> dict[str, str]:
    """Copy each encoder the model reads into `encoders/` (the SigLIP2 folder's files, the .nemo file; hub-cache
    links are followed) and return {modality: its name inside the export}.

    Raises:
        EncoderNotFoundError: an encoder is not on this machine (the message says how to point at it).
    """
    from mmfer.pipeline.encoder_lookup import EncoderNotFoundError, describe, encoder_source, how_to_point

    copied = {}
    for modality, record in bundle.features.items():
        source = encoder_source(modality, record, bundle)
        if source is None:
            raise EncoderNotFoundError(f"--include-encoders: the {modality} encoder {describe(record)} is not on this "
                                       f"machine where the run recorded it; {how_to_point(modality)}")
        name = f"encoders/{modality}/{source.name}"
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, staging / name, symlinks=False)
        else:
            shutil.copy2(source, staging / name)
        copied[modality] = name
        log.info("copied the %s encoder %s into the export (%s)", modality, source, name)
    return copied


def _export_fold_onnx(bundle, state: dict, path: Path) -> Path:
    """One fold model as ONNX (pipeline/onnx_export.py), built from its model_spec as predict builds it."""
    from mmfer.pipeline.bundle import train_config
    from mmfer.pipeline.onnx_export import export_fusion
    from mmfer.pipeline.predictor import offline_overrides
    from mmfer.train.model.builder import build_model_from_spec

    if not bundle.model_spec:
        raise ConfigError(f"{bundle.source}: its checkpoints carry no model_spec (trained by an older mmfer); "
                          "--onnx needs one: train the run again")
    model = build_model_from_spec(bundle.model_spec, offline_overrides(train_config(bundle.config).model))
    model.load_state_dict(state)
    return export_fusion(model.eval(), path)


def _export_encoders_onnx(bundle, staging: Path) -> dict[str, str]:
    """Each encoder the model reads, loaded as predict loads it (weights checked against the run's record), as ONNX
    under onnx/encoders/ (extract/encoders/onnx_encoders.py); returns {modality: its graph's name in the export}.

    Raises:
        EncoderNotFoundError: an encoder is not on this machine. EncoderMismatchError: other weights than the run's.
    """
    import torch

    from mmfer.extract.encoders import load_encoder
    from mmfer.extract.encoders.onnx_graphs import export_encoder_onnx
    from mmfer.pipeline.encoder_lookup import find_encoder
    from mmfer.pipeline.predictor import EncoderMismatchError, compare_encoder

    written = {}
    for modality, spec in bundle.feature_spec.modalities().items():
        record = bundle.features[modality]
        name = find_encoder(modality, record, bundle, flag=None, models_dir=None)
        encoder = load_encoder(modality, name, kind=spec.encoder.kind, revision=spec.encoder.revision,
                               device=torch.device("cpu"), dtype_policy="fp32")
        problems = compare_encoder(modality, record, encoder.identity, encoder.preprocessing)
        if problems:
            raise EncoderMismatchError(f"--onnx-encoders: {'; '.join(problems)}")
        path = export_encoder_onnx(modality, encoder, staging / "onnx" / "encoders")
        written[modality] = path.relative_to(staging).as_posix()
    return written


def _copy_lfm2_config(config: dict, staging: Path) -> None:
    """A pretrained LFM2 other than the built-in LFM2-700M config: keep its config.json, so predict can
    build the architecture offline (the exported weights replace every weight)."""
    model = config["model"]
    fusion = model["fusion"]
    if model["variant"] != "lfm2" or fusion["tiny_hidden_size"] > 0:
        return
    # imported here, past the cheap checks: it loads transformers' LFM2 modelling (seconds in a fresh process)
    from mmfer.train.model.fusion import LFM2_700M_ID, CheckpointNotFoundError, resolve_checkpoint

    if fusion["pretrained_model"] == LFM2_700M_ID:
        return
    try:
        source = resolve_checkpoint(fusion["pretrained_model"]) / "config.json"
    except CheckpointNotFoundError as err:
        log.warning("LFM2 config not copied (%s); predict --model will need %s", err, fusion["pretrained_model"])
        return
    (staging / "lfm2").mkdir()
    shutil.copy2(source, staging / "lfm2" / "config.json")


def model_card(title: str, bundle, folds: list[dict], evaluation: dict, encoders: dict[str, str] | None = None) -> str:
    """A short README.md: what the model is, what it needs, how it was evaluated, how to use it."""
    from mmfer.train.metrics import HEADLINE

    model = bundle.config["model"]
    names = bundle.config.get("label_names") or EMOTIONS
    video, audio = bundle.features.get("video"), bundle.features.get("audio")
    lines = [f"# {title}", "",
             f"Audio-visual emotion recognition model exported by `mmfer export` from run `{bundle.source}`: "
             f"variant `{model['variant']}`, {bundle.describe()}.", "",
             *([f"**Unfinished run:** {bundle.unfinished}.", ""] if bundle.unfinished else []),
             f"Labels (C = {len(names)}, in this order): {', '.join(names)}.", "",
             "## Use", "", "```bash", f"mmfer predict --model {title} clip.mp4 [more.mp4 or folders] --out predictions.csv",
             f"mmfer predict --model {title} long.mp4 --window 3 --hop 1      # emotion timeline (CSV + PNG)", "```", "",
             "## Inputs (must match; `predict` checks the encoder weights)", ""]
    if video:
        enc = video["encoder"]
        lines.append(f"- video: {video['num_frames']} frames sampled uniformly, face crop `{video['face_crop']}`, "
                     f"encoder `{enc['name']}` (revision {enc.get('revision')}, weights sha256 {str(enc.get('weights_sha256'))[:16]}…), "
                     f"tokens stored as {video['dtype']}")
    if audio:
        enc = audio["encoder"]
        lines.append(f"- audio: mono {audio['sample_rate_hz']} Hz, at most {audio['max_audio_s']:g} s, encoder `{enc['name']}` "
                     f"(weights sha256 {str(enc.get('weights_sha256'))[:16]}…), {audio.get('frame_shift_s')} s per frame; "
                     "a clip without audio is predicted from video alone")
    if encoders:
        lines += ["", "The encoders are inside this folder (" + ", ".join(f"`{n}`" for n in encoders.values())
                  + "): `predict --model` needs nothing else. A .nemo file is NeMo's own format, which may hold "
                  "pickled data: trust this folder as you would the encoder itself."]
    else:
        lines += ["", "The encoders are **not** inside this folder. A colleague needs the same weights (checked by their "
                  "sha256 above): a local copy found with `--models-dir DIR` or `$MMFER_MODELS` (SigLIP2 folders are "
                  "matched by weights hash, .nemo files by name), or `--visual-encoder PATH` / `--audio-encoder PATH`; "
                  "hub ids load from the Hugging Face cache. `mmfer export --include-encoders` copies them in."]
    lines += ["", "Full records: `features.json`. Resolved training config: `config.json`.", "",
              "## Evaluation (speaker-independent: test actors never seen in training)", "",
              *([f"**Warning, {evaluation['optimistic']}.**", ""] if evaluation.get("optimistic") else []),
              "| fold | test actors | " + " | ".join(HEADLINE) + " |", "|---|---|" + "---|" * len(HEADLINE)]
    for fold in folds:
        metrics = fold.get("metrics", {})
        values = " | ".join(f"{metrics[k]:.4f}" if k in metrics else "-" for k in HEADLINE)
        lines.append(f"| {fold['name']} | {fold.get('test_actors', '-')} | {values} |")
    mean, std = evaluation.get("run_mean", {}), evaluation.get("run_std", {})
    if mean:
        lines.append(f"| run mean ± sample std ({len(evaluation.get('run_protocol', []))} folds) | | "   # std None: one fold
                     + " | ".join(f"{mean[k]:.4f} ± " + ("n/a" if std.get(k) is None else f"{std[k]:.4f}")
                                  for k in HEADLINE) + " |")
    lines += ["", "An ensemble's own test score is not measured: each fold model was tested on its own test actors, "
              "whom the other folds trained on.", "",
              "## Limits", "", "Trained on the clips of one feature store (acted emotions, few speakers); expect lower "
              "accuracy on spontaneous speech, other languages, other camera setups. Per-fold metrics: `evaluation.json`.", ""]
    return "\n".join(lines)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.flags import add_config_flags

    parser.description = ("Write a self-contained model folder (weights, config, encoder records, labels, metrics, "
                          "model card) that `mmfer predict --model DIR` reads without the cache or the run.")
    add_config_flags(parser, ExportConfig, layered=False)


def cmd_export(args: argparse.Namespace) -> int:
    from mmfer.pipeline.flags import resolve_config

    cfg: ExportConfig = resolve_config(ExportConfig, args, layered=False)
    if not cfg.run or not cfg.out:
        raise ConfigError("export needs --run RUN_DIR and --out DIR")
    if cfg.fold is not None and cfg.ensemble:
        raise ConfigError("give --fold K or --ensemble, not both")
    out = export_model(cfg.run, cfg.out, fold=cfg.fold, ensemble=cfg.ensemble, cache=cfg.cache,
                       include_encoders=cfg.include_encoders, onnx=cfg.onnx, onnx_encoders=cfg.onnx_encoders)
    print(f"exported {cfg.run} to {out} (see {out / 'README.md'})")
    return 0
