"""A trained model plus the exact feature extraction it was trained on, for new video files.

`Predictor` takes a `ModelBundle` (pipeline/bundle.py), loads the encoders its cache recorded, refuses
other weights, and runs extract's own decode/encode functions, the store's float16 cast, train's collate
and the model, so a clip's inputs equal what training read from the cache.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mmfer.pipeline.bundle import ModelBundle, train_config
from mmfer.pipeline.encoder_lookup import describe, find_encoder, how_to_point
from mmfer.core.config import ExtractConfig
from mmfer.core.errors import BadInputError, MmferError
from mmfer.core.labels import EMOTIONS

log = logging.getLogger(__name__)

NO_FACE_NOTE = "no face found: centre crop"   # face_crop "detect" fell back, as extract does
_DTYPE_POLICY = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}   # recorded autocast -> loader policy


class PredictError(MmferError, RuntimeError):
    """One input file could not be predicted (the message names it); the other files go on."""


class EncoderMismatchError(BadInputError, RuntimeError):
    """The encoders this machine would load are not the ones the model's features were made with."""


def compare_encoder(modality: str, record: dict, identity: dict, preprocessing: dict) -> list[str]:
    """Differences between a recorded encoder (entry attrs) and a loaded one; the name (path) may differ."""
    identity, preprocessing = json.loads(json.dumps(identity, default=str)), json.loads(json.dumps(preprocessing, default=str))
    problems = []
    recorded = record.get("encoder", {})
    for key in sorted((set(recorded) | set(identity)) - {"name", "location"}):   # where it was read from may differ
        want, got = recorded.get(key), identity.get(key)
        if key == "commit_hash" and (want is None or got is None):
            continue   # a local copy of a hub snapshot has no commit; the weights hash decides
        if want != got:
            problems.append(f"{modality} encoder {key}: recorded {want!r}, loaded {got!r}")
    recorded_pre = record.get("preprocessing", {})
    for key in sorted(set(recorded_pre) | set(preprocessing)):
        want, got = recorded_pre.get(key), preprocessing.get(key)
        if want == got:
            continue
        if key == "autocast_dtype":   # e.g. extracted on a GPU in bf16, predicted on a CPU in fp32: tiny differences
            log.warning("%s encoder computes in %s here, the cache was made in %s; probabilities may differ slightly",
                        modality, got, want)
        else:
            problems.append(f"{modality} preprocessing {key}: recorded {want!r}, loaded {got!r}")
    return problems


@contextmanager
def _predict_advice(modality: str, record: dict, bundle: ModelBundle):
    """An encoder that will not load is reported with the ways predict and evaluate take to point at it (the
    loader's own advice names extract's --preset, which these commands do not have)."""
    from mmfer.extract.visual import EncoderLoadError

    try:
        yield
    except EncoderLoadError as err:
        reason = str(err).split(". To fix it")[0].splitlines()[0]
        raise EncoderLoadError(f"{bundle.source}: cannot load the {modality} encoder the model was trained with, "
                               f"{describe(record)}: {reason}. To fix it, {how_to_point(modality)}") from err


class _NoImages:
    """Stands in for the image processor when the model reads no video (decode_job still decodes frames)."""

    def __call__(self, images, return_tensors=None) -> dict:
        return {}


class Predictor:
    """The recorded encoders + the trained model(s); `features` then `predict` per clip."""

    def __init__(self, bundle: ModelBundle, *, device: str = "auto", visual_encoder: str | None = None,
                 audio_encoder: str | None = None, models_dir: str | None = None, allow_encoder_mismatch: bool = False,
                 decode_timeout_s: float = ExtractConfig().decode_timeout_s) -> None:
        from mmfer.extract.encoders import EncoderPair
        from mmfer.core.device import resolve_device
        from mmfer.train.loop import autocast_dtype
        from mmfer.train.model.builder import build_model_from_spec, model_spec

        self.bundle, self.decode_timeout_s = bundle, decode_timeout_s
        self.device = resolve_device(device)
        cfg = train_config(bundle.config)
        self.amp_dtype = autocast_dtype(self.device, cfg.training.mixed_precision)   # as the run's test pass
        self.video, self.audio = bundle.features.get("video"), bundle.features.get("audio")
        visual = audio = None
        problems = []
        if self.video is not None:
            from mmfer.extract.visual import load_visual_encoder

            record = self.video["encoder"]
            policy = _DTYPE_POLICY.get(self.video.get("preprocessing", {}).get("autocast_dtype"), "auto")
            name = find_encoder("video", self.video, bundle, flag=visual_encoder, models_dir=models_dir)
            with _predict_advice("video", self.video, bundle):
                visual = load_visual_encoder(name, revision=record.get("revision"), device=self.device, dtype_policy=policy)
            problems += compare_encoder("video", self.video, visual.identity, visual.preprocessing)
        if self.audio is not None:
            from mmfer.extract.audio import load_audio_encoder

            name = find_encoder("audio", self.audio, bundle, flag=audio_encoder, models_dir=models_dir)
            with _predict_advice("audio", self.audio, bundle):
                audio = load_audio_encoder(name, device=self.device)
            problems += compare_encoder("audio", self.audio, audio.identity, audio.preprocessing)
        if problems and not allow_encoder_mismatch:
            raise EncoderMismatchError(
                f"{bundle.source}: the encoders loaded here differ from those the model's features were made with:\n  "
                + "\n  ".join(problems) + "\nits predictions would not match its reported metrics. Point --visual-encoder/"
                "--audio-encoder (or --models-dir) at the original checkpoints, or pass --allow-encoder-mismatch to predict anyway")
        for problem in problems:
            log.warning("encoder mismatch allowed: %s", problem)
        self.encoders = EncoderPair(visual, audio)
        self.processor = visual.processor if visual is not None else _NoImages()
        video_shape = tuple(self.video["arrays"]["tokens"]["shape"]) if self.video else (1, 1, 1)
        audio_shape = tuple(self.audio["arrays"]["tokens"]["shape"]) if self.audio else (1, 1)
        spec = bundle.model_spec or model_spec(cfg.model, video_dim=video_shape[2], num_patches=video_shape[1],
                                               audio_dim=audio_shape[1], dropout=cfg.training.dropout)
        self.model = build_model_from_spec(spec, offline_overrides(cfg.model)).to(self.device).eval()
        self.num_classes = cfg.model.num_classes
        self.label_names = tuple(bundle.config.get("label_names") or EMOTIONS)   # runs before label_names: RAVDESS's
        video_record, audio_record, defaults = self.video or {}, self.audio or {}, ExtractConfig()
        self.decode_cfg = ExtractConfig(   # the decode settings the model's features were extracted with
            num_frames=video_record.get("num_frames", defaults.num_frames),
            sample_rate_hz=audio_record.get("sample_rate_hz", defaults.sample_rate_hz),
            max_audio_s=audio_record.get("max_audio_s", defaults.max_audio_s),
            face_crop=video_record.get("face_crop", "none"), decode_timeout_s=decode_timeout_s)
        if len(bundle.states) == 1:
            self.model.load_state_dict(bundle.states[0])

    def features(self, path: str | Path, clip_id: str) -> dict:
        """One clip's model inputs, as `ClipDataset` items (tokens in the store dtype), plus notes.

        Raises:
            PredictError: the file cannot be decoded or encoded.
        """
        import pandas as pd

        return self.row_features(pd.DataFrame({"clip_id": [clip_id], "path": [str(path)], "source": [""]}))

    def row_features(self, row, *, face_crop: str | None = None) -> dict:
        """`features` of one clip-table row (a one-row DataFrame: clip_id, path, source and, when present, start_s,
        end_s, audio_path), optionally with another face crop than the recorded one (the face-crop-off check of
        `mmfer evaluate --corrupt`).

        Raises:
            PredictError: the file cannot be decoded or encoded.
        """
        import dataclasses

        from mmfer.extract.run import decode_jobs
        from mmfer.extract.worker import decode_job

        video, audio = self.video or {}, self.audio or {}
        path = row["path"].iloc[0]
        decode_cfg = self.decode_cfg if face_crop is None else dataclasses.replace(self.decode_cfg, face_crop=face_crop)
        (job,) = decode_jobs(row, decode_cfg)
        decoded = decode_job(job, self.processor)   # extract's own job, decode + crop + image processor
        if decoded.error is not None:
            raise PredictError(decoded.error)
        item = {"clip_id": job.clip_id, "label": 0, "has_video": self.video is not None, "has_audio": False,
                "duration_s": decoded.duration_s, "notes": []}
        if video.get("face_crop") == "detect" and not decoded.found_face:
            item["notes"].append(NO_FACE_NOTE)
        if self.video is not None:
            from mmfer.extract.shrink import pool_tokens

            tokens, pooled = self.encoders.encode_visual([decoded.pixel_inputs])
            clip_tokens = pool_tokens(tokens[0], int(self.video.get("token_pool", 1)))   # as extract stored them
            item["video_tokens"] = _as_stored(clip_tokens, self.video, "tokens", path)
            item["video_pooled"] = _as_stored(pooled[0], self.video, "pooled", path)
        if decoded.audio is None:
            item["notes"].append("video only: no audio stream")
            if self.video is None:
                raise PredictError(f"{path}: no audio stream, and this model reads audio only")
        elif self.audio is not None:
            (frames,) = self.encoders.encode_audio([decoded.audio])
            max_frames = self.audio["arrays"]["tokens"]["shape"][0]   # extract pads/cuts to Ta_max, training reads [:length]
            item["audio_tokens"] = _as_stored(frames[:max_frames], self.audio, "tokens", path, time_axis=True)
            item["has_audio"] = True
            if decoded.duration_s > audio.get("max_audio_s", np.inf) + 0.5:
                item["notes"].append(f"audio after {audio['max_audio_s']:g} s not used; see --window")
        return item

    @torch.inference_mode()
    def predict(self, items: list[dict]) -> np.ndarray:
        """Probabilities (N, C) float32: each clip alone (B = 1), averaged over the bundle's fold models."""
        from mmfer.train.dataset import collate_clips, to_device

        total = np.zeros((len(items), self.num_classes), dtype=np.float64)
        for state in self.bundle.states:
            if len(self.bundle.states) > 1:
                self.model.load_state_dict(state)
            for i, item in enumerate(items):
                batch = to_device(collate_clips([item], video_shape=self.video_shape, audio_dim=self.audio_dim), self.device)
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                    probs = self.model(batch)["probabilities"]
                total[i] += probs.float().cpu().numpy()[0]
        return (total / len(self.bundle.states)).astype(np.float32)

    @property
    def video_shape(self) -> tuple[int, int, int] | None:
        return tuple(self.video["arrays"]["tokens"]["shape"]) if self.video is not None else None

    @property
    def audio_dim(self) -> int | None:
        return self.audio["arrays"]["tokens"]["shape"][1] if self.audio is not None else None


def _as_stored(value: np.ndarray, record: dict, name: str, path, time_axis: bool = False) -> np.ndarray:
    """The store's write conversion: shape check, refuse NaN/Inf, cast to the entry dtype (float16; int8 tokens
    quantized and read back)."""
    spec = record["arrays"][name]
    want = tuple(spec["shape"])
    value = np.asarray(value)
    if (value.shape[1:] != want[1:]) if time_axis else (value.shape != want):
        raise PredictError(f"{path}: {name} has shape {value.shape}, the model's features have {want}")
    if not np.isfinite(value).all():
        raise PredictError(f"{path}: encoder-output: {name} contains NaN or Inf")
    if spec["dtype"] == "int8":   # --token-dtype int8: the store's round trip, float16 as training read it
        from mmfer.core.store import dequantize_tokens, quantize_tokens

        return dequantize_tokens(*quantize_tokens(value.astype(np.float32)))
    return value.astype(spec["dtype"], copy=False)


def offline_overrides(model_cfg) -> dict[str, object]:
    """The trained weights replace every weight, so LFM2 is built from its config alone (no download) when
    its config is known without the checkpoint: the built-in LFM2-700M config, or a local folder."""
    from mmfer.train.model.fusion import LFM2_700M_ID

    fusion = model_cfg.fusion
    if fusion.use_pretrained and (fusion.pretrained_model == LFM2_700M_ID or Path(fusion.pretrained_model).is_dir()):
        return {"fusion.use_pretrained": False, "fusion.pretrained_model": fusion.pretrained_model}
    return {}
