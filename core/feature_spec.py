"""What a clip becomes before the model sees it: one typed record, written by extract, read by everyone else.

A `FeatureSpec` holds, per modality, the encoder (kind, id, weights hash, revision, backend), the decoding
(frames and their sampling rule, sample rate, face crop), the stored layout (shapes, dtypes, token pooling,
int8, views) and the extractor version. Extract writes each modality's part as its store entry's attrs and
keys the entry by its fingerprint; train takes its dims from it; a run's checkpoints and an exported model
carry it beside `model_spec`; predict, evaluate and the bench build their featurizer from it. So a trained
model needs no feature store to say how to make its inputs.

`ModalitySpec.attrs()` is exactly the entry's attrs dict (cache_schema.md documents each key), so stores
made before this class existed keep their fingerprints and read back into the same spec.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from mmfer.core.store.layout import ENTRY_BOOKKEEPING, MODALITIES   # entry attrs the store adds itself; its modalities

# Where an encoder was read from and which registry kind read it, recorded in the entry but not fingerprinted:
# the weights hash (and the hub revision asked for) say what it is, so the same weights under another
# --models-dir or folder resume, and stores made before `kind` was recorded keep their fingerprints.
ENCODER_LOCATION_KEYS = ("name", "commit_hash", "location", "kind", "backend")


def _plain(value: Any) -> Any:
    """JSON-plain copy (tuples -> lists, numpy scalars -> numbers), as an entry's attrs read back."""
    return json.loads(json.dumps(value, default=str))


def fingerprint_parts(settings: Mapping) -> dict:
    """An entry's settings without the encoder's location (ENCODER_LOCATION_KEYS) or the store's bookkeeping."""
    encoder = {k: v for k, v in settings.get("encoder", {}).items() if k not in ENCODER_LOCATION_KEYS}
    return {**{k: v for k, v in settings.items() if k not in ENTRY_BOOKKEEPING}, "encoder": encoder}


def fingerprint(settings: Mapping) -> str:
    """16 hex digits of the SHA-256 of everything that decides a modality's features (see fingerprint_parts)."""
    return hashlib.sha256(json.dumps(fingerprint_parts(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EncoderSpec:
    """One frozen encoder as its entry records it. `record` is the full identity dict (model class, sizes,
    where it was read from); the typed fields are the ones every caller asks for."""

    kind: str                 # the encoder registry's key (extract/encoders/): "siglip", "nemo-fastconformer", ...
    name: str                 # hub id, folder or file it was loaded from
    weights_sha256: str
    revision: str | None
    backend: str              # the library that runs it: "transformers", "nemo"
    record: Mapping = field(default_factory=dict, compare=False)

    @classmethod
    def from_record(cls, record: Mapping) -> "EncoderSpec":
        kind = record.get("kind") or _kind_of(record)
        return cls(kind=kind, name=str(record.get("name", "")), weights_sha256=str(record.get("weights_sha256", "")),
                   revision=record.get("revision"), backend=record.get("backend") or _BACKENDS.get(kind, ""),
                   record=_plain(dict(record)))


# Stores written before `kind` and `backend` were recorded: known from the model class.
_KINDS_BY_CLASS = {"SiglipVisionModel": "siglip", "Siglip2VisionModel": "siglip", "SiglipModel": "siglip",
                   "Siglip2Model": "siglip", "EncDecCTCModel": "nemo-fastconformer",
                   "EncDecCTCModelBPE": "nemo-fastconformer", "EncDecRNNTBPEModel": "nemo-fastconformer",
                   "EncDecHybridRNNTCTCBPEModel": "nemo-fastconformer", "ParakeetEncoder": "parakeet"}
_BACKENDS = {"siglip": "transformers", "nemo-fastconformer": "nemo", "parakeet": "transformers"}


def _kind_of(record: Mapping) -> str:
    """The kind of a record made before kinds were recorded; "" when its model class says nothing."""
    return _KINDS_BY_CLASS.get(str(record.get("model_class", "")), "")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality's features: encoder, preprocessing, decoding settings and stored arrays.

    `settings` holds the decoding and layout keys as the entry records them (num_frames, face_crop, frame_sampling,
    token_pool, token_dtype, sample_rate_hz, max_audio_s, audio_mix, dtype, extractor_version, views, ...);
    `arrays` the stored per-clip arrays, name -> (shape, dtype).
    """

    modality: str
    encoder: EncoderSpec
    preprocessing: Mapping
    settings: Mapping
    arrays: Mapping[str, tuple[tuple[int, ...], str]]

    @classmethod
    def from_attrs(cls, modality: str, attrs: Mapping) -> "ModalitySpec":
        """From a store entry's attrs (or the same dict a checkpoint carries)."""
        attrs = _plain(dict(attrs))
        arrays = {name: (tuple(spec["shape"]), spec["dtype"]) for name, spec in attrs.get("arrays", {}).items()}
        settings = {k: v for k, v in attrs.items() if k not in ("encoder", "preprocessing", *ENTRY_BOOKKEEPING)}
        return cls(modality, EncoderSpec.from_record(attrs.get("encoder", {})), attrs.get("preprocessing", {}),
                   settings, arrays)

    def attrs(self) -> dict:
        """The entry's attrs: encoder record, preprocessing, settings and arrays (what `from_attrs` reads)."""
        return {"encoder": dict(self.encoder.record), "preprocessing": dict(self.preprocessing), **self.settings,
                "modality": self.modality, "fingerprint": self.fingerprint,
                "arrays": {n: {"shape": list(s), "dtype": d} for n, (s, d) in self.arrays.items()}}

    @property
    def fingerprint(self) -> str:
        """The key of this modality's store entry (the location of the encoder is not part of it)."""
        return fingerprint({"encoder": self.encoder.record, "preprocessing": self.preprocessing, **self.settings})

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.arrays[name][0]

    def dtype(self, name: str) -> str:
        return self.arrays[name][1]


@dataclass(frozen=True)
class FeatureSpec:
    """Both modalities' specs; a model that reads one modality only carries that one."""

    video: ModalitySpec | None = None
    audio: ModalitySpec | None = None

    @classmethod
    def from_entries(cls, entries: Mapping[str, Mapping | None]) -> "FeatureSpec":
        """modality -> entry attrs (None or absent: the model does not read it)."""
        return cls(**{m: ModalitySpec.from_attrs(m, a) for m, a in entries.items() if a is not None and m in MODALITIES})

    @classmethod
    def from_dict(cls, data: Mapping) -> "FeatureSpec":
        """From `to_dict()`'s output (a checkpoint's or an exported model's `feature_spec`)."""
        return cls.from_entries({m: data.get(m) for m in MODALITIES})

    def to_dict(self) -> dict:
        return {m: spec.attrs() for m, spec in self.modalities().items()}

    def modalities(self) -> dict[str, ModalitySpec]:
        return {m: s for m, s in (("video", self.video), ("audio", self.audio)) if s is not None}

    def fingerprints(self) -> dict[str, str | None]:
        return {m: (s.fingerprint if s is not None else None) for m, s in (("video", self.video), ("audio", self.audio))}

    # The model's input dims, read in one place (train's model builder, predict, the dry-run).
    @property
    def video_shape(self) -> tuple[int, int, int] | None:
        """(Tv, P, Dv): frames, stored tokens per frame, visual width."""
        return tuple(self.video.shape("tokens")) if self.video is not None else None

    @property
    def num_frames(self) -> int | None:
        return self.video_shape[0] if self.video is not None else None

    @property
    def max_audio_frames(self) -> int | None:
        return self.audio.shape("tokens")[0] if self.audio is not None else None

    @property
    def audio_dim(self) -> int | None:
        return self.audio.shape("tokens")[1] if self.audio is not None else None
