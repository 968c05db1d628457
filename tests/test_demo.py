"""Demo generator: real mp4 files that decode to the expected frames and samples, carry their labels,
and come out the same for a seed. Uses a small demo (2 actors x 8 emotions, 64 px, 1 s)."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from mmfer.data.demo import EMOTION_CODES, make_demo, render_demo_clip, write_demo_clip
from mmfer.data.ravdess import parse_ravdess_name
from mmfer.core.labels import EMOTIONS
from mmfer.core.media import FfmpegError, run_ffmpeg

SIZE_PX, DURATION_S, FPS, SAMPLE_RATE_HZ = 64, 1.0, 25, 16000
DEMO_ARGS = {"seed": 0, "overwrite": False, "num_actors": 2, "clips_per_emotion": 1, "size_px": SIZE_PX, "duration_s": DURATION_S}
AAC_TOLERANCE_SAMPLES = 1024        # one AAC frame of priming / padding


def _decode_frames(path, size_px=SIZE_PX):
    raw = run_ffmpeg(["-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], path=path, timeout_s=30)
    return np.frombuffer(raw, np.uint8).reshape(-1, size_px, size_px, 3)


def _decode_audio(path):
    raw = run_ffmpeg(["-i", str(path), "-vn", "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE_HZ), "pipe:1"],
                     path=path, timeout_s=30)
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768


def _raw(row, **overrides):
    kwargs = dict(emotion=row.emotion, actor=row.actor, duration_s=DURATION_S, size_px=SIZE_PX, fps=FPS, sample_rate_hz=SAMPLE_RATE_HZ,
                  intensity=row.intensity, statement=row.statement, repetition=row.repetition, seed=0)
    return render_demo_clip(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    return make_demo(out_dir, **DEMO_ARGS, fps=FPS)


def test_code_table_splits_the_information():
    pairs = list(EMOTION_CODES.values())
    assert set(EMOTION_CODES) == set(EMOTIONS) and len(set(pairs)) == len(EMOTIONS)   # the pair identifies
    assert len({face for face, _ in pairs}) == 4 and len({voice for _, voice in pairs}) == 3
    assert max(sum(f == face for f, _ in pairs) for face in range(4)) > 1             # face alone does not
    assert max(sum(v == voice for _, v in pairs) for voice in range(3)) > 1           # voice alone does not


def test_manifest_has_every_emotion_per_actor_with_valid_names(demo):
    assert len(demo) == 2 * 8
    assert sorted(zip(demo["actor"], demo["emotion"])) == sorted(itertools.product((1, 2), EMOTIONS))
    assert set(demo["modality"]) == {"av"} and set(demo["vocal_channel"]) == {"speech"}
    for row in demo.itertuples():
        assert parse_ravdess_name(row.path)["clip_id"] == row.clip_id
        assert f"Actor_{row.actor:02d}" in row.path


def test_files_decode_to_expected_frames_and_samples(demo):
    path = demo["path"].iloc[3]
    frames = _decode_frames(path)
    assert frames.shape == (int(DURATION_S * FPS), SIZE_PX, SIZE_PX, 3)
    audio = _decode_audio(path)
    assert abs(len(audio) - DURATION_S * SAMPLE_RATE_HZ) <= AAC_TOLERANCE_SAMPLES, len(audio)
    assert np.abs(audio).max() > 0.02                                                  # not silence


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_decoded_content_matches_the_label_in_the_name(demo):
    """Each file's last frame is nearest to the generator's drawing for its named emotion's face code,
    and its audio is the voice synthesized for that name."""
    for row in demo.itertuples():
        decoded = _decode_frames(row.path)[-1].astype(np.float32)
        drawn = {e: _raw(row, emotion=e, with_audio=False)[0][-1] for e in EMOTIONS}
        dist = {e: np.abs(decoded - frame).mean() for e, frame in drawn.items()}
        face_code = EMOTION_CODES[row.emotion][0]
        other = min(d for e, d in dist.items() if EMOTION_CODES[e][0] != face_code)
        assert dist[row.emotion] < 0.6 * other, f"{row.clip_id}: {row.emotion} drawing at {dist[row.emotion]:.2f}, another face code at {other:.2f}"
        audio, own_audio = _decode_audio(row.path), _raw(row)[1]
        n = min(len(audio), len(own_audio))
        corr = np.corrcoef(audio[:n], own_audio[:n])[0, 1]
        assert corr > 0.95, f"{row.clip_id}: decoded audio correlates {corr:.2f} with its synthesis"


def test_face_code_is_visible_in_the_mouth_and_develops_over_time():
    frames = {e: render_demo_clip(e, 3, duration_s=DURATION_S, size_px=SIZE_PX, fps=FPS, sample_rate_hz=SAMPLE_RATE_HZ,
                                  intensity=1, statement=1, repetition=1, seed=0, with_audio=False)[0].astype(np.float32)
              for e in ("neutral", "happy", "sad", "disgust", "surprised")}
    mouth = (slice(int(0.62 * SIZE_PX), int(0.9 * SIZE_PX)), slice(int(0.3 * SIZE_PX), int(0.7 * SIZE_PX)))

    def diff(a, b, t):
        return np.abs(frames[a][t][mouth] - frames[b][t][mouth]).mean()

    between = [diff(a, b, -1) for a, b in itertools.combinations(("neutral", "happy", "sad", "surprised"), 2)]
    within = diff("sad", "disgust", -1)                                  # same face code (frown)
    assert min(between) > 3 * within, (between, within)
    assert max(diff(a, b, 0) for a, b in itertools.combinations(frames, 2)) < min(between) / 2   # starts neutral


def test_voice_arousal_orders_loudness_and_is_speaker_relative():
    def rms(emotion, actor):
        audio = render_demo_clip(emotion, actor, duration_s=DURATION_S, size_px=16, fps=FPS, sample_rate_hz=SAMPLE_RATE_HZ,
                                 intensity=1, statement=1, repetition=1, seed=0)[1]
        return float(np.sqrt(np.mean(audio**2)))

    for actor in (1, 2):                                    # a male and a female voice
        assert rms("calm", actor) < rms("neutral", actor) < rms("angry", actor)


def test_generation_is_deterministic_for_a_seed(tmp_path):
    kwargs = dict(duration_s=0.6, size_px=32, fps=FPS, sample_rate_hz=SAMPLE_RATE_HZ, intensity=2, statement=2,
                  repetition=1, seed=7)
    frames_a, audio_a = render_demo_clip("fearful", 4, **kwargs)
    frames_b, audio_b = render_demo_clip("fearful", 4, **kwargs)
    assert np.array_equal(frames_a, frames_b) and np.array_equal(audio_a, audio_b)
    frames_c, _ = render_demo_clip("fearful", 4, **{**kwargs, "seed": 8})
    assert not np.array_equal(frames_a, frames_c)
    paths = [write_demo_clip(tmp_path / f"{i}.mp4", "fearful", 4, **kwargs) for i in range(2)]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1


def test_single_clip_any_duration_without_audio(tmp_path):
    path = write_demo_clip(tmp_path / "x" / "short.mp4", "sad", 2, duration_s=0.4, with_audio=False, size_px=32)
    assert _decode_frames(path, 32).shape == (10, 32, 32, 3)
    with pytest.raises(FfmpegError):                             # there is no audio stream to map
        run_ffmpeg(["-i", str(path), "-map", "0:a", "-f", "s16le", "pipe:1"], path=path, timeout_s=30)
    path = write_demo_clip(tmp_path / "long.mp4", 5, 2, duration_s=3.2, size_px=32)          # label 5 = fearful
    assert _decode_frames(path, 32).shape[0] == 80
    assert abs(len(_decode_audio(path)) - 3.2 * SAMPLE_RATE_HZ) <= AAC_TOLERANCE_SAMPLES


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="emotion"):
        write_demo_clip(tmp_path / "a.mp4", "bored", 1)
    with pytest.raises(ValueError, match="even"):
        write_demo_clip(tmp_path / "a.mp4", "sad", 1, size_px=63)
    with pytest.raises(ValueError, match="clips_per_emotion"):
        make_demo(tmp_path, **{**DEMO_ARGS, "clips_per_emotion": 5})
    with pytest.raises(ValueError, match="num_actors"):
        make_demo(tmp_path, **{**DEMO_ARGS, "num_actors": 25})
