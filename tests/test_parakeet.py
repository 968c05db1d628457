"""The transformers FastConformer kind (extract/encoders/parakeet.py) and `mmfer convert-encoder`.

Parity (`nemo` marker): speech spoken by espeak-ng (0.3 s to 20 s, resampled to 16 kHz by ffmpeg) through the tiny
random .nemo (NeMo kind, NeMo's saver) and its conversion (parakeet kind): log-mel features, valid-frame counts and
encoder outputs agree within 1e-4 in fp32. The conversion and its refusals need no NeMo: they read a .nemo-layout
file written here (tar of model_config.yaml + model_weights.ckpt, as NeMo writes it).
"""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmfer.core.media import ffmpeg_exe
from mmfer.extract.encoders.nemo_convert import convert_nemo

SPEECH = ("The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore, and the shells she "
          "sells are surely sea shells. Peter Piper picked a peck of pickled peppers. How much wood would a "
          "woodchuck chuck if a woodchuck could chuck wood? Happy people laugh, angry people shout, sad people sigh.")
CLIP_SAMPLES = [4800, 4807, 16000, 16093, 37_517, 112_000, 320_000]   # 0.3 s to 20 s; odd counts off the 160 hop
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """espeak-ng's speech of SPEECH, resampled to 16 kHz mono float32 by ffmpeg; at least 20 s."""
    folder = tmp_path_factory.mktemp("speech")
    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "120", "-w", str(wav), SPEECH], check=True, capture_output=True)
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(wav), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"],
                         check=True, capture_output=True).stdout
    wave = np.frombuffer(raw, dtype=np.float32)
    assert len(wave) >= max(CLIP_SAMPLES), f"espeak-ng spoke {len(wave) / 16000:.1f} s, want >= 20 s"
    return wave


@pytest.fixture(scope="module")
def nemo_layout(tiny_models, tmp_path_factory) -> Path:
    """The tiny stand-in as a .nemo-layout file written without NeMo: the random writer's NeMo config and the tiny
    folder's weights under NeMo names (what `ensure_nemo_audio` gives NeMo's saver)."""
    import torch
    from safetensors.torch import load_file

    from mmfer.extract.encoders.nemo_convert import nemo_encoder_state_dict
    from mmfer.extract.encoders.nemo_fastconformer import random_model_config
    from mmfer.extract.random_encoders import SIZES

    folder = tmp_path_factory.mktemp("nemo-layout")
    weights = load_file(tiny_models / "tiny-fastconformer-ctc" / "model.safetensors")
    (folder / "model_config.yaml").write_text(yaml.safe_dump(random_model_config(SIZES["tiny"]["audio"])))
    torch.save({f"encoder.{k}": v for k, v in nemo_encoder_state_dict(weights).items()}, folder / "model_weights.ckpt")
    path = folder / "tiny.nemo"
    with tarfile.open(path, "w") as tar:
        for name in ("model_config.yaml", "model_weights.ckpt"):
            tar.add(folder / name, arcname=f"./{name}")
    return path


@pytest.fixture(scope="module")
def converted(tiny_nemo, tmp_path_factory) -> Path:
    """The tiny .nemo (NeMo's saver) converted by `convert_nemo`."""
    return convert_nemo(tiny_nemo, tmp_path_factory.mktemp("converted") / "fc")


def _worst(a, b) -> str:
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return f"max diff {diff.max():.3g}, mean {diff.mean():.3g}"


@pytest.mark.parity
@pytest.mark.slow   # NeMo's import and a .nemo save: ~12 s on two shared cores
@pytest.mark.nemo
def test_transformers_kind_equals_nemo_on_speech(tiny_nemo, converted, speech):
    """Features, valid-frame counts and tokens of every clip, one batch of all lengths and each clip alone."""
    import torch

    from mmfer.extract.encoders import kind_of, load_encoder

    assert kind_of("audio", str(converted)) == "parakeet"
    nemo = load_encoder("audio", str(tiny_nemo), device=torch.device("cpu"))
    hf = load_encoder("audio", str(converted), device=torch.device("cpu"))
    assert (nemo.kind_record, hf.kind_record) == ({"kind": "nemo-fastconformer", "backend": "nemo"},
                                                  {"kind": "parakeet", "backend": "transformers"})
    waves = [speech[:n].copy() for n in CLIP_SAMPLES]

    lengths = torch.tensor(CLIP_SAMPLES)
    signal = torch.zeros(len(waves), max(CLIP_SAMPLES))
    for i, wave in enumerate(waves):
        signal[i, : len(wave)] = torch.from_numpy(wave)
    with torch.inference_mode():
        nemo_feats, nemo_counts = nemo.model.preprocessor(input_signal=signal, length=lengths)   # (B, 80, T_mel)
    hf_feats, hf_counts = hf.features(waves)
    # transformers' own extractor, as the folder configures it (our torch twin of it is what encode runs)
    theirs = hf.feature_extractor(waves, sampling_rate=16_000, return_tensors="pt", return_attention_mask=True)
    # Measured with nemo_toolkit 3.0 and transformers 5.25: no off-by-one, all count floor(S / 160) valid frames.
    assert hf_counts.tolist() == nemo_counts.tolist() == theirs.attention_mask.sum(-1).tolist() == [
        n // 160 for n in CLIP_SAMPLES]
    assert hf_feats.shape == nemo_feats.shape
    assert np.allclose(hf_feats, nemo_feats, atol=TOLERANCE), _worst(hf_feats, nemo_feats)
    assert np.allclose(theirs.input_features.transpose(1, 2), nemo_feats, atol=TOLERANCE), _worst(
        theirs.input_features.transpose(1, 2), nemo_feats)

    for batch in (waves, *[[w] for w in waves]):
        nemo_tokens, hf_tokens = nemo.encode(batch), hf.encode(batch)
        for n, a, b in zip([len(w) for w in batch], nemo_tokens, hf_tokens):
            assert a.shape == b.shape and b.dtype == np.float32, f"{n} samples: NeMo {a.shape}, transformers {b.shape}"
            assert np.allclose(a, b, atol=TOLERANCE), f"{n} samples: {_worst(a, b)}"


@pytest.mark.slow   # a child process importing torch and transformers: ~10 s
def test_convert_reads_the_nemo_without_nemo(nemo_layout, tiny_models, tmp_path):
    """The conversion in a fresh process: nemo is never imported; the folder is the parakeet kind's and holds the
    weights the .nemo was written from."""
    from safetensors.torch import load_file

    out = tmp_path / "converted"
    code = ("import sys\nfrom mmfer.extract.encoders.nemo_convert import convert_nemo\n"
            f"convert_nemo({str(nemo_layout)!r}, {str(out)!r})\n"
            "loaded = [m for m in sys.modules if m == 'nemo' or m.startswith('nemo.')]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    from mmfer.extract.encoders import kind_of

    assert kind_of("audio", str(out)) == "parakeet"
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 64
    got, wanted = load_file(out / "model.safetensors"), load_file(tiny_models / "tiny-fastconformer-ctc" / "model.safetensors")
    assert got.keys() == wanted.keys() and all((got[k] == wanted[k]).all() for k in got)


def _nemo_with(source: Path, dest: Path, section: str, key: str, value) -> Path:
    """A copy of the .nemo `source` whose model_config.yaml sets `section.key` to `value`."""
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(dest, "w") as out:
        for member, data in members:
            if Path(member.name).name == "model_config.yaml":
                config = yaml.safe_load(data)
                config[section][key] = value
                data = yaml.safe_dump(config).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


@pytest.mark.parametrize("section, key, value, words", [
    ("encoder", "att_context_size", [70, 13], "encoder.att_context_size is [70, 13] (limited attention context)"),
    ("encoder", "subsampling", "striding", "encoder.subsampling is 'striding'"),
    ("encoder", "subsampling_factor", 6, "encoder.subsampling_factor is 6"),
    ("encoder", "self_attention_model", "abs_pos", "encoder.self_attention_model is 'abs_pos'"),
    ("encoder", "causal_downsampling", True, "encoder.causal_downsampling is True"),
    ("preprocessor", "normalize", "all_features", "preprocessor.normalize is 'all_features'"),
    ("preprocessor", "frame_splicing", 3, "preprocessor.frame_splicing is 3"),
])
def test_convert_encoder_refuses_what_it_cannot_represent(nemo_layout, tmp_path, capsys, section, key, value, words):
    from mmfer.pipeline.cli import main

    bad = _nemo_with(nemo_layout, tmp_path / "bad.nemo", section, key, value)
    assert main(["convert-encoder", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and words in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.staging-*"))


def test_convert_encoder_command_writes_a_loadable_folder(nemo_layout, tmp_path, capsys):
    import torch

    from mmfer.extract.encoders import load_encoder
    from mmfer.pipeline.cli import main

    out = tmp_path / "fc"
    assert main(["convert-encoder", str(nemo_layout), "--out", str(out)]) == 0
    assert f"--audio-encoder {out}" in capsys.readouterr().out
    encoder = load_encoder("audio", str(out), device=torch.device("cpu"))
    (tokens,) = encoder.encode([np.zeros(16000, np.float32)])
    assert tokens.shape == (13, 64) and encoder.frame_shift_s == 0.08
    assert main(["convert-encoder", str(nemo_layout), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_convert_follows_the_references_nemo_configs_keep(nemo_layout, tmp_path):
    """Saved NeMo configs keep OmegaConf references (`feat_in: ${model.preprocessor.features}`); NeMo is not here
    to resolve them, so the converter does."""
    linked = _nemo_with(nemo_layout, tmp_path / "linked.nemo", "encoder", "feat_in", "${model.preprocessor.features}")
    out = convert_nemo(linked, tmp_path / "fc")
    assert json.loads((out / "config.json").read_text())["num_mel_bins"] == 80


def test_the_nemo_kind_without_nemo_says_how_to_go_on(nemo_layout, monkeypatch):
    """A .nemo asked of the NeMo kind where nemo_toolkit is missing: one line, the extra and the conversion."""
    import torch

    from mmfer.extract.encoders import load_encoder
    from mmfer.extract.encoders.common import EncoderLoadError

    monkeypatch.setitem(sys.modules, "nemo.collections.asr.models", None)   # what an install without NeMo has
    with pytest.raises(EncoderLoadError) as err:
        load_encoder("audio", str(nemo_layout), device=torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message and str(nemo_layout) in message
    assert "pip install 'mmfer[nemo]'" in message and f"mmfer convert-encoder {nemo_layout} --out DIR" in message
