"""A trained model plus the exact feature extraction it was trained on, for new video files.

`Predictor` takes a `ModelBundle` (pipeline/bundle.py), loads the encoders its FeatureSpec records through the
encoder registry, refuses other weights, and runs extract's featurizer (decode, encoders, token pooling, the
store's dtype cast), train's collate and the model, so a clip's inputs equal what training read from the cache.
The model runs in PyTorch or, from an export made with --onnx, in onnxruntime (pipeline/runtime.py).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mmfer.pipeline.bundle import ModelBundle, train_config
from mmfer.pipeline.encoder_lookup import describe, find_encoder, how_to_point
from mmfer.pipeline.runtime import OnnxRuntime, TorchRuntime, require_onnx
from mmfer.core.config import ExtractConfig
from mmfer.core.errors import BadInputError, MmferError
from mmfer.core.feature_spec import ENCODER_LOCATION_KEYS
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
    for key in sorted((set(recorded) | set(identity)) - set(ENCODER_LOCATION_KEYS)):   # where it was read from may differ
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
    from mmfer.extract.encoders.common import EncoderLoadError

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
                 decode_timeout_s: float = ExtractConfig().decode_timeout_s, runtime: str = "torch") -> None:
        from mmfer.extract.encoders import EncoderPair
        from mmfer.extract.featurize import Featurizer

        if runtime == "onnx" and len(bundle.onnx_files) != len(bundle.fold_names):   # before any encoder loads
            raise BadInputError(f"{bundle.source}: --runtime onnx needs a model folder exported with --onnx "
                                "(`mmfer export --run RUN --out DIR --onnx`)")
        if runtime == "onnx":
            require_onnx("--runtime onnx", "onnxruntime")
        self.bundle, self.decode_timeout_s = bundle, decode_timeout_s
        self.spec = bundle.feature_spec
        cfg = train_config(bundle.config)
        onnx_encoders = bundle.onnx_encoders if runtime == "onnx" else {}
        # torch only where something runs in PyTorch: an --onnx-encoders export under onnxruntime needs none
        self.device = None
        if runtime != "onnx" or set(self.spec.modalities()) - set(onnx_encoders):
            from mmfer.core.device import resolve_device
            from mmfer.extract.encoders import load_encoder

            self.device = resolve_device(device)
        flags = {"video": visual_encoder, "audio": audio_encoder}
        loaded, problems = {}, []
        for modality, spec in self.spec.modalities().items():
            record = bundle.features[modality]
            if modality in onnx_encoders:   # exported with --onnx-encoders
                loaded[modality] = onnx_encoder(modality, onnx_encoders[modality], record)
                continue
            # the encoder computes in the dtype the cache was made in, where this device has it
            policy = _DTYPE_POLICY.get(spec.preprocessing.get("autocast_dtype"), "auto")
            name = find_encoder(modality, record, bundle, flag=flags[modality], models_dir=models_dir)
            with _predict_advice(modality, record, bundle):
                encoder = load_encoder(modality, name, kind=spec.encoder.kind, revision=spec.encoder.revision,
                                       device=self.device, dtype_policy=policy)
            problems += compare_encoder(modality, record, encoder.identity, encoder.preprocessing)
            loaded[modality] = encoder
        if problems and not allow_encoder_mismatch:
            raise EncoderMismatchError(
                f"{bundle.source}: the encoders loaded here differ from those the model's features were made with:\n  "
                + "\n  ".join(problems) + "\nits predictions would not match its reported metrics. Point --visual-encoder/"
                "--audio-encoder (or --models-dir) at the original checkpoints, or pass --allow-encoder-mismatch to predict anyway")
        for problem in problems:
            log.warning("encoder mismatch allowed: %s", problem)
        self.featurizer = Featurizer(self.spec, EncoderPair(loaded.get("video"), loaded.get("audio")))
        self.processor = loaded["video"].processor if "video" in loaded else _NoImages()
        self.num_classes = cfg.model.num_classes
        self.label_names = tuple(bundle.config.get("label_names") or EMOTIONS)   # runs before label_names: RAVDESS's
        if runtime == "onnx":
            self.runtime = OnnxRuntime(bundle.onnx_files)
        else:
            self.runtime = self._torch_runtime(cfg)

    def _torch_runtime(self, cfg) -> TorchRuntime:
        """The fold models in PyTorch, run in the autocast dtype of the run's own test pass."""
        from mmfer.train.loop import autocast_dtype
        from mmfer.train.model.builder import build_model_from_spec, model_spec

        shape = self.video_shape or (1, 1, 1)
        spec = self.bundle.model_spec or model_spec(cfg.model, video_dim=shape[2], num_patches=shape[1],
                                                    audio_dim=self.audio_dim or 1, dropout=cfg.training.dropout)
        model = build_model_from_spec(spec, offline_overrides(cfg.model)).to(self.device).eval()
        amp_dtype = autocast_dtype(self.device, cfg.training.mixed_precision)
        return TorchRuntime(model, self.bundle.states, self.device, amp_dtype)

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
        from mmfer.extract.worker import decode_job

        (job,) = self.featurizer.decode_jobs(row, timeout_s=self.decode_timeout_s, other_face_crop=face_crop)
        decoded = decode_job(job, self.processor)   # extract's own job, decode + crop + image processor
        if decoded.error is not None:
            raise PredictError(decoded.error)
        return self.decoded_features(decoded, face_crop=job.face_crop)

    def track_features(self, path: str | Path, clip_id: str) -> list[tuple[object, tuple[float, float], dict]]:
        """`features` of each face track of a clip (predict --faces all): (extract.facecrop.TrackCrops, the
        timestamps of its first and last detection in s, model inputs) per track, its frames cropped from its own
        boxes; [] when no sampled frame has a face.

        Raises:
            DecodeError, FfmpegError: the file cannot be decoded. PredictError: it cannot be encoded.
        """
        import pandas as pd

        from mmfer.extract.worker import decode_tracks

        (job,) = self.featurizer.decode_jobs(pd.DataFrame({"clip_id": [clip_id], "path": [str(path)], "source": [""]}),
                                             timeout_s=self.decode_timeout_s)
        out = []
        for track, item in decode_tracks(job, self.processor):
            seen_s = item.timestamps_s[track.has_face]
            out.append((track, (round(float(seen_s.min()), 6), round(float(seen_s.max()), 6)),
                        self.decoded_features(item, face_crop="detect")))
        return out

    def decoded_features(self, decoded, *, face_crop: str) -> dict:
        """`features` of a clip already decoded, cropped and run through the image processor (a `DecodedItem`:
        `decode_job`'s, or a stream window's from extract/stream.py).

        Raises:
            PredictError: the clip cannot be encoded.
        """
        path = decoded.path
        if decoded.audio is None and self.spec.video is None:
            raise PredictError(f"{path}: no audio stream, and this model reads audio only")
        try:
            (clip,) = self.featurizer.encode([decoded])
            item = self.featurizer.model_inputs(clip)
        except ValueError as err:   # the encoders' output is not what the model's features hold
            raise PredictError(f"{path}: encoder-output: {err}") from err
        item["notes"] = []
        if self.spec.video is not None and face_crop == "detect" and not decoded.found_face:
            item["notes"].append(NO_FACE_NOTE)
        if decoded.audio is None:
            item["notes"].append("video only: no audio stream")
        elif self.spec.audio is not None and decoded.duration_s > self.spec.audio.settings["max_audio_s"] + 0.5:
            item["notes"].append(f"audio after {self.spec.audio.settings['max_audio_s']:g} s not used; see --window")
        return item

    def predict(self, items: list[dict]) -> np.ndarray:
        """Probabilities (N, C) float32: each clip alone (B = 1), averaged over the bundle's fold models."""
        from mmfer.train.batch import stack_clips

        batches = [stack_clips([item], video_shape=self.video_shape, audio_dim=self.audio_dim) for item in items]
        return self.runtime(batches).astype(np.float32)

    @property
    def video_shape(self) -> tuple[int, int, int] | None:
        return self.spec.video_shape

    @property
    def audio_dim(self) -> int | None:
        return self.spec.audio_dim


def onnx_encoder(modality: str, path: Path, record: dict):
    """The ONNX graph of an encoder written by `mmfer export --onnx-encoders` (made from the recorded weights,
    which export checked), with the registry's encoder interface."""
    from mmfer.extract.encoders.onnx_encoders import OnnxAudioEncoder, OnnxVisualEncoder

    return (OnnxVisualEncoder if modality == "video" else OnnxAudioEncoder)(path, record)


def offline_overrides(model_cfg) -> dict[str, object]:
    """The trained weights replace every weight, so LFM2 is built from its config alone (no download) when
    its config is known without the checkpoint: the built-in LFM2-700M config, or a local folder."""
    from mmfer.train.model.fusion import LFM2_700M_ID

    fusion = model_cfg.fusion
    if fusion.use_pretrained and (fusion.pretrained_model == LFM2_700M_ID or Path(fusion.pretrained_model).is_dir()):
        return {"fusion.use_pretrained": False, "fusion.pretrained_model": fusion.pretrained_model}
    return {}
