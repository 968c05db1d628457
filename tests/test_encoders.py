"""Frozen encoders: tiny SigLIP + FastConformer stand-ins built, saved and loaded through the real code paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mmfer.extract.encoders.parakeet import load_audio_encoder
from mmfer.extract.random_encoders import TINY_AUDIO_DIM, TINY_VISUAL_DIM, ensure_tiny_encoders
from mmfer.extract.encoders.siglip import EncoderLoadError, load_visual_encoder

SAMPLE_RATE_HZ = 16_000


@pytest.fixture(scope="session")
def tiny_models(tiny_models):
    """(visual folder, FastConformer folder) of the session's tiny encoders (conftest writes them once for every
    test file); the tiny .nemo (NeMo kind) is `tiny_nemo`."""
    return ensure_tiny_encoders(tiny_models)


@pytest.fixture(scope="session")
def tiny_nemo(tiny_models):
    """conftest's tiny .nemo, from this file's (visual, audio) pair."""
    from mmfer.extract.random_encoders import ensure_nemo_audio

    return ensure_nemo_audio(tiny_models[0].parent, size="tiny")


@pytest.fixture(scope="session")
def visual(tiny_models):
    return load_visual_encoder(str(tiny_models[0]))


@pytest.fixture(scope="session")
def audio(tiny_models):
    return load_audio_encoder(str(tiny_models[1]))


def _frames(num_frames: int, height: int = 180, width: int = 240, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients plus a little noise: image-like, and every frame differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(num_frames):
        rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 20.0 + t)], axis=-1) * 255
        frames.append(np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255))
    return np.asarray(frames, dtype=np.uint8)


def _waves(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    """Harmonic tones with a moving pitch plus noise, like voiced speech at 16 kHz."""
    rng = np.random.default_rng(seed)
    waves = []
    for i, num_samples in enumerate(lengths):
        t = np.arange(num_samples) / SAMPLE_RATE_HZ
        f0 = 120 + 40 * i + 30 * np.sin(2 * np.pi * 1.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ
        wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2 + rng.normal(0, 0.01, num_samples)
        waves.append(wave.astype(np.float32))
    return waves


def _diff(a, b) -> str:
    d = (torch.as_tensor(a) - torch.as_tensor(b)).abs()
    return f"max diff {d.max().item():.3g}, mean diff {d.mean().item():.3g}"


def test_tiny_encoders_are_written_once_and_seeded(tiny_models, tmp_path):
    visual_dir, audio_dir = tiny_models
    stamps = [p.stat().st_mtime_ns for p in (visual_dir / "model.safetensors", audio_dir / "model.safetensors")]
    assert ensure_tiny_encoders(visual_dir.parent) == (visual_dir, audio_dir)
    assert [p.stat().st_mtime_ns for p in (visual_dir / "model.safetensors", audio_dir / "model.safetensors")] == stamps
    assert not [p.name for p in visual_dir.parent.iterdir() if ".tmp-" in p.name]

    # A second copy written elsewhere holds the very same weights.
    other_visual, other_audio = ensure_tiny_encoders(tmp_path)
    assert load_visual_encoder(str(other_visual)).identity["weights_sha256"] == \
        load_visual_encoder(str(visual_dir)).identity["weights_sha256"]
    assert load_audio_encoder(str(other_audio)).identity["weights_sha256"] == \
        load_audio_encoder(str(audio_dir)).identity["weights_sha256"]


def test_visual_shapes_and_determinism(visual):
    frames = _frames(16)
    tokens, pooled = visual.encode(frames)
    assert tokens.shape == (16, 196, TINY_VISUAL_DIM) and tokens.dtype == torch.float32
    assert pooled.shape == (16, TINY_VISUAL_DIM) and pooled.dtype == torch.float32
    assert torch.isfinite(tokens).all() and torch.isfinite(pooled).all()
    assert tokens[0].sub(tokens[1]).abs().max() > 1e-3, "different frames gave the same tokens"
    tokens2, pooled2 = visual.encode(frames)
    assert torch.equal(tokens, tokens2) and torch.equal(pooled, pooled2)


def test_visual_preprocess_is_siglip_normalization(visual):
    frames = _frames(2, height=224, width=224)  # already 224x224: the resize keeps the pixels
    pixels = torch.from_numpy(visual.preprocess(frames)["pixel_values"])   # numpy: decode workers and ONNX need no torch
    expected = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0  # mean = std = 0.5
    assert pixels.shape == (2, 3, 224, 224)
    assert torch.allclose(pixels, expected, atol=1e-5), _diff(pixels, expected)
    assert visual.preprocessing["size"] == {"height": 224, "width": 224}
    assert visual.preprocessing["image_mean"] == [0.5, 0.5, 0.5]
    assert visual.preprocessing["rescale_factor"] == pytest.approx(1 / 255)


@pytest.mark.parity
def test_visual_matches_direct_transformers_call(visual, tiny_models):
    from transformers import SiglipVisionModel

    frames = _frames(4, seed=1)
    reference_model = SiglipVisionModel.from_pretrained(str(tiny_models[0])).eval()
    with torch.no_grad():
        out = reference_model(**{k: torch.from_numpy(v) for k, v in visual.preprocess(frames).items()})
    tokens, pooled = visual.encode(frames)
    assert torch.allclose(tokens, out.last_hidden_state, atol=1e-5), _diff(tokens, out.last_hidden_state)
    assert torch.allclose(pooled, out.pooler_output, atol=1e-5), _diff(pooled, out.pooler_output)


def test_visual_batch_invariance(visual):
    frames = _frames(8, seed=2)
    tokens, pooled = visual.encode(frames)
    alone_tokens, alone_pooled = visual.encode(frames[5:6])
    assert torch.allclose(alone_tokens[0], tokens[5], atol=1e-5), _diff(alone_tokens[0], tokens[5])
    assert torch.allclose(alone_pooled[0], pooled[5], atol=1e-5), _diff(alone_pooled[0], pooled[5])


def test_visual_rejects_bad_frames(visual):
    with pytest.raises(ValueError, match=r"uint8 frames \(N, H, W, 3\)"):
        visual.encode(np.zeros((2, 64, 64), dtype=np.uint8))


def test_audio_shapes_frame_shift_and_determinism(audio):
    assert audio.frame_shift_s == pytest.approx(0.08)
    (tokens,) = audio.encode(_waves([56_000]))  # 3.5 s
    assert tokens.dtype == np.float32 and tokens.shape == (44, TINY_AUDIO_DIM)  # ceil(3.5 / 0.08)
    assert np.isfinite(tokens).all()
    (again,) = audio.encode(_waves([56_000]))
    assert np.array_equal(tokens, again)


@pytest.mark.parity
@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
@pytest.mark.nemo
def test_nemo_kind_matches_direct_nemo_call(tiny_nemo):
    from nemo.collections.asr.models import EncDecCTCModel

    from mmfer.extract.encoders.nemo_fastconformer import load_audio_encoder as load_nemo_encoder

    reference = EncDecCTCModel.restore_from(str(tiny_nemo), map_location="cpu").eval()
    assert reference.preprocessor.featurizer.dither == 0.0
    (wave,) = _waves([40_000], seed=3)
    with torch.no_grad():
        feats, feat_len = reference.preprocessor(input_signal=torch.from_numpy(wave)[None],
                                                 length=torch.tensor([len(wave)]))
        encoded, enc_len = reference.encoder(audio_signal=feats, length=feat_len)
    expected = encoded[0, :, : enc_len[0]].T  # (Ta, Da)
    (tokens,) = load_nemo_encoder(str(tiny_nemo)).encode([wave])
    assert tokens.shape == tuple(expected.shape)
    assert torch.allclose(torch.from_numpy(tokens), expected, atol=1e-5), _diff(tokens, expected)


@pytest.mark.nemo
@pytest.mark.slow   # the dynamo ONNX export of NeMo's preprocessor + encoder: ~55 s on a busy 2-core CPU
def test_nemo_kind_exports_to_an_onnx_graph_that_onnxruntime_runs_alike(tiny_nemo, tmp_path):
    """`export --onnx-encoders` of the default audio kind (a .nemo): NeMo's preprocessor and encoder joined into one
    wave-in graph; onnxruntime's frames equal NeMo's within 1e-4 at three lengths, clip by clip and batched."""
    from mmfer.extract.encoders import load_encoder
    from mmfer.extract.encoders.onnx_encoders import OnnxAudioEncoder
    from mmfer.extract.encoders.onnx_graphs import export_encoder_onnx

    encoder = load_encoder("audio", str(tiny_nemo), device=torch.device("cpu"))
    assert encoder.kind_record["kind"] == "nemo-fastconformer"
    graph = OnnxAudioEncoder(export_encoder_onnx("audio", encoder, tmp_path), {"encoder": encoder.identity,
                                                                                "frame_shift_s": encoder.frame_shift_s})
    waves = _waves([4_800, 16_000, 56_000], seed=5)
    for want, got in [*zip(encoder.encode(waves), graph.encode(waves)),
                      *((encoder.encode([w])[0], graph.encode([w])[0]) for w in waves)]:
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4, _diff(got, want)


def test_audio_batch_invariance(audio):
    lengths = [56_000, 40_001, 17_000, 33_333, 8_000]
    waves = _waves(lengths, seed=4)
    batched = audio.encode(waves)
    for wave, in_batch in zip(waves, batched):
        (alone,) = audio.encode([wave])
        assert alone.shape == in_batch.shape
        assert abs(alone.shape[0] - len(wave) / SAMPLE_RATE_HZ / 0.08) <= 1.0
        assert np.allclose(alone, in_batch, atol=1e-4), f"clip of {len(wave)} samples: " + _diff(alone, in_batch)


def test_identity_and_preprocessing_are_stable_across_loads(visual, audio, tiny_models):
    again_visual = load_visual_encoder(str(tiny_models[0]))
    again_audio = load_audio_encoder(str(tiny_models[1]))
    assert again_visual.identity == visual.identity and again_visual.preprocessing == visual.preprocessing
    assert again_audio.identity == audio.identity and again_audio.preprocessing == audio.preprocessing
    assert visual.identity["num_patches"] == 196 and visual.identity["hidden_size"] == TINY_VISUAL_DIM
    assert audio.identity["d_model"] == TINY_AUDIO_DIM and audio.identity["subsampling_factor"] == 8
    assert audio.preprocessing["dither"] == 0.0
    json.dumps([visual.identity, visual.preprocessing, audio.identity, audio.preprocessing])  # cache attrs


def test_missing_local_paths_name_the_path(tmp_path):
    from mmfer.extract.encoders.nemo_fastconformer import load_audio_encoder as load_nemo_encoder

    with pytest.raises(EncoderLoadError, match="no such model folder"):
        load_visual_encoder(str(tmp_path / "nope"))
    with pytest.raises(EncoderLoadError, match="no such .nemo file"):
        load_nemo_encoder(str(tmp_path / "nope.nemo"))   # refused before NeMo is imported
    with pytest.raises(EncoderLoadError, match="no such transformers FastConformer folder"):
        load_audio_encoder(str(tmp_path / "nope"))


_GUARD = '''
import socket
def _blocked(*args, **kwargs):
    with open(__import__("os").environ["NET_ATTEMPTS_LOG"], "a") as f:
        f.write(repr(args[1:2]) + "\\n")
    raise OSError("network blocked by the mmfer test guard")
socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked
'''

_OFFLINE_SCRIPT = '''
import json, sys, numpy as np
from mmfer.extract.random_encoders import ensure_tiny_encoders
from mmfer.extract.encoders.siglip import EncoderLoadError, load_visual_encoder
from mmfer.extract.encoders.parakeet import load_audio_encoder
visual_dir, audio_dir = ensure_tiny_encoders(sys.argv[1])
tokens, pooled = load_visual_encoder(str(visual_dir)).encode(np.zeros((2, 64, 64, 3), np.uint8))
(audio,) = load_audio_encoder(str(audio_dir)).encode([np.zeros(16000, np.float32)])
errors = {}
for kind, load in (("visual", load_visual_encoder), ("audio", load_audio_encoder)):
    try:
        load("no-such-org/no-such-model-xyz")
    except EncoderLoadError as err:
        errors[kind] = str(err)
print(json.dumps({"visual": list(tokens.shape), "audio": list(audio.shape), "errors": errors}))
'''


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory):
    """Create, load and use the tiny encoders in a fresh process with HF offline and sockets blocked."""
    root = tmp_path_factory.mktemp("blocked")
    (root / "guard").mkdir()
    (root / "guard" / "sitecustomize.py").write_text(textwrap.dedent(_GUARD))
    attempts = root / "net_attempts.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NET_ATTEMPTS_LOG": str(attempts),
           "PYTHONPATH": os.pathsep.join([str(root / "guard"), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, str(root / "models")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["attempts"] = attempts.read_text() if attempts.exists() else ""
    return result


@pytest.mark.slow
def test_tiny_encoders_work_with_network_blocked(blocked_run):
    assert blocked_run["visual"] == [2, 196, TINY_VISUAL_DIM]
    assert blocked_run["audio"] == [13, TINY_AUDIO_DIM]  # 1 s -> ceil(100 mel frames / 8)
    assert blocked_run["attempts"] == "", f"tried the network: {blocked_run['attempts']}"


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_unknown_hub_id_offline_gives_advice(blocked_run):
    for kind in ("visual", "audio"):
        message = blocked_run["errors"].get(kind, "")
        assert "no-such-org/no-such-model-xyz" in message, f"{kind}: {message!r}"
        for advice in ("hf download no-such-org/no-such-model-xyz", "local path", "--preset tiny"):
            assert advice in message, f"{kind} error lacks {advice!r}: {message!r}"


def test_image_processor_backend_is_pinned_to_pil(tiny_models):
    """Left to itself transformers picks torchvision when it is installed and PIL otherwise; the pinned
    backend (recorded, hence fingerprinted) makes pixels and fingerprint the same on every machine."""
    loaded = load_visual_encoder(str(tiny_models[0]))
    assert loaded.processor.backend == "pil" and loaded.preprocessing["processor_backend"] == "pil"
    assert loaded.preprocessing["processor_class"] == "SiglipImageProcessorPil"


def test_full_size_random_fastconformer_has_the_real_models_parameter_count():
    """nvidia/stt_en_fastconformer_ctc_large: about 115M parameters (model card), a 463 MB fp32 .nemo; our
    character CTC head is 0.5M smaller than its 1024-token one, so the encoder alone must be ~115M (counted on the
    transformers twin the random writer saves; NeMo's ConformerEncoder of this config has the same weights)."""
    from transformers import ParakeetEncoder, ParakeetEncoderConfig

    from mmfer.extract.encoders.nemo_convert import encoder_config
    from mmfer.extract.encoders.nemo_fastconformer import random_model_config
    from mmfer.extract.random_encoders import SIZES

    config = ParakeetEncoderConfig(**encoder_config(random_model_config(SIZES["full"]["audio"])))
    num_params = sum(p.numel() for p in ParakeetEncoder(config).parameters())
    assert 113e6 < num_params < 117e6, f"{num_params / 1e6:.1f}M encoder parameters, the real model has ~115M"
