"""The feature contract: FeatureSpec read from a real store, and the encoder registry that makes its records."""

from __future__ import annotations

import json
import types

import pytest
import torch

from mmfer.core.feature_spec import FeatureSpec, fingerprint
from mmfer.core.store import open_store


def entry_attrs(cache) -> dict[str, dict]:
    store = open_store(cache)
    return {m: json.loads(json.dumps(store.entry(m).attrs)) for m in ("video", "audio")}


def test_the_spec_of_a_store_keys_its_entries_and_round_trips(demo_cache):
    attrs = entry_attrs(demo_cache)
    spec = FeatureSpec.from_entries(attrs)
    assert spec.fingerprints() == {m: attrs[m]["fingerprint"] for m in ("video", "audio")}
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec   # as a checkpoint carries it
    assert spec.video_shape == tuple(attrs["video"]["arrays"]["tokens"]["shape"])
    assert spec.num_frames == attrs["video"]["num_frames"]
    assert (spec.max_audio_frames, spec.audio_dim) == tuple(attrs["audio"]["arrays"]["tokens"]["shape"])
    # what extract recorded: the registry kind and backend of each encoder
    assert (spec.video.encoder.kind, spec.video.encoder.backend) == ("siglip", "transformers")
    assert (spec.audio.encoder.kind, spec.audio.encoder.backend) == ("parakeet", "transformers")


def test_a_store_made_before_kinds_were_recorded_keeps_its_fingerprint_and_kind(demo_cache):
    """Neither the encoder's location nor its kind is part of the fingerprint, so older stores resume."""
    attrs = entry_attrs(demo_cache)
    for modality in ("video", "audio"):
        older = json.loads(json.dumps(attrs[modality]))
        for key in ("kind", "backend", "location"):
            older["encoder"].pop(key, None)
        old_spec = FeatureSpec.from_entries({modality: older})
        assert old_spec.modalities()[modality].fingerprint == attrs[modality]["fingerprint"]
        assert old_spec.modalities()[modality].encoder.kind == attrs[modality]["encoder"]["kind"]
    changed = json.loads(json.dumps(attrs["video"]))
    changed["num_frames"] += 1
    assert fingerprint(changed) != attrs["video"]["fingerprint"]


def test_the_registry_loads_each_kind_through_its_module_and_names_an_unknown_one(tiny_models):
    from mmfer.extract.encoders import REGISTRY, kind_of, load_encoder
    from mmfer.extract.encoders.common import EncoderLoadError

    visual, audio = tiny_models / "tiny-siglip-vision", tiny_models / "tiny-fastconformer-ctc"
    assert (kind_of("video", str(visual)), kind_of("audio", str(audio))) == ("siglip", "parakeet")
    assert kind_of("audio", str(tiny_models / "tiny-fastconformer-ctc.nemo")) == "nemo-fastconformer"   # by its name
    encoder = load_encoder("video", str(visual), device=torch.device("cpu"))
    assert encoder.kind_record == {"kind": "siglip", "backend": "transformers"}
    with pytest.raises(EncoderLoadError, match="encoder kind 'whisper' is not known"):
        load_encoder("audio", str(audio), kind="whisper", device=torch.device("cpu"))
    for module in REGISTRY.values():   # the interface every kind module keeps
        assert {"KIND", "MODALITY", "BACKEND", "claims", "load", "write_random", "is_complete", "find_local",
                "cached_copy"} <= set(vars(module))


def test_a_new_kind_is_one_module_and_one_registry_line(tiny_models, monkeypatch):
    """A kind registered in REGISTRY alone is found by `claims`, loaded through its own `load` and recorded."""
    from mmfer.extract import encoders
    from mmfer.extract.encoders import siglip

    marker = tiny_models / "tiny-siglip-vision"
    calls = []

    def load(name, **kwargs):
        calls.append(name)
        return siglip.load(name, **kwargs)

    other = types.SimpleNamespace(KIND="siglip-other", MODALITY="video", BACKEND="transformers",
                                  claims=lambda name: name == str(marker), load=load,
                                  write_random=siglip.write_random, is_complete=siglip.is_complete,
                                  find_local=siglip.find_local, cached_copy=siglip.cached_copy)
    monkeypatch.setattr(encoders, "REGISTRY", {other.KIND: other, **encoders.REGISTRY})
    encoder = encoders.load_encoder("video", str(marker), device=torch.device("cpu"))
    assert calls == [str(marker)] and encoder.kind_record == {"kind": "siglip-other", "backend": "transformers"}
