"""Synthetic RAVDESS-format demo: real H.264 + AAC mp4 files whose emotion is carried by face and voice.

Each emotion is a (face code, voice arousal) pair; neither half alone separates the 8 emotions,
only the pair does (face alone: 4 groups, voice alone: 3 groups):

    emotion    face code       voice arousal
    neutral    0 flat          1 mid
    calm       0 flat          0 low
    happy      1 smile         2 high
    sad        2 frown         0 low
    angry      2 frown         2 high
    fearful    3 open          2 high
    disgust    2 frown         1 mid
    surprised  3 open          1 mid

`make_demo` writes `out_dir/Actor_XX/01-01-EE-II-SS-RR-AA.mp4` and returns `scan_ravdess` of it;
`write_demo_clip` writes one clip of any length, with or without audio (for fault tests).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import pandas as pd

from mmfer.data.demo_face import render_face_frames
from mmfer.data.demo_voice import synthesize_voice
from mmfer.data.ravdess import scan_ravdess
from mmfer.core.errors import BadInputError
from mmfer.core.labels import CREMA_D_ACTORS, CREMA_D_CODES, CREMA_D_EMOTIONS, EMOTIONS, RAVDESS_NUM_ACTORS
from mmfer.core.media import run_ffmpeg

log = logging.getLogger(__name__)

EMOTION_CODES: dict[str, tuple[int, int]] = {   # emotion -> (face code, voice arousal); see the table above
    "neutral": (0, 1), "calm": (0, 0), "happy": (1, 2), "sad": (2, 0),
    "angry": (2, 2), "fearful": (3, 2), "disgust": (2, 1), "surprised": (3, 1),
}
STRENGTH_BY_INTENSITY = {1: 0.75, 2: 1.0}
# (intensity, statement, repetition) of the k-th take of an emotion: intensities alternate, statements
# and repetitions vary; neutral has no strong intensity in RAVDESS, so it gets its own list.
_TAKES = [(1, 1, 1), (2, 2, 1), (1, 2, 2), (2, 1, 2)]
_NEUTRAL_TAKES = [(1, 1, 1), (1, 2, 1), (1, 2, 2), (1, 1, 2)]
MAX_CLIPS_PER_EMOTION = len(_NEUTRAL_TAKES)     # keeps the 8 classes balanced
ENCODE_TIMEOUT_S = 120.0


class DemoOutError(BadInputError, FileExistsError):
    """make-demo's --out is a file, or a folder that already holds something (and no --overwrite)."""


def ravdess_clip_name(emotion: str, actor: int, intensity: int, statement: int, repetition: int) -> str:
    """File stem of a full-AV speech clip, e.g. ("happy", 12, 2, 1, 1) -> "01-01-03-02-01-01-12"."""
    code = EMOTIONS.index(emotion) + 1
    return f"01-01-{code:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}"


def write_demo_clip(
    path: str | os.PathLike, emotion: str | int, actor: int, *, duration_s: float = 2.0,
    with_audio: bool = True, size_px: int = 112, fps: int = 25, sample_rate_hz: int = 16000,
    intensity: int = 1, statement: int = 1, repetition: int = 1, seed: int = 0,
) -> Path:
    """Write one demo clip (H.264 yuv420p video, AAC audio unless with_audio is False) to path.

    The frames are round(duration_s * fps); the audio is round(duration_s * sample_rate_hz) samples.

    Raises:
        ValueError: unknown emotion, odd size_px (yuv420p needs even sizes) or a non-positive duration.
        FfmpegError: ffmpeg failed (its stderr is in the message).
    """
    emotion = EMOTIONS[emotion] if isinstance(emotion, int) else emotion
    if emotion not in EMOTION_CODES:
        raise ValueError(f"{path}: unknown emotion {emotion!r}; choose from {EMOTIONS}")
    if size_px % 2 or size_px < 16:
        raise ValueError(f"{path}: size_px must be even and >= 16 (H.264 yuv420p), got {size_px}")
    num_frames = int(round(duration_s * fps))
    if num_frames < 1:
        raise ValueError(f"{path}: duration_s={duration_s} gives no frame at {fps} fps")
    frames, audio = render_demo_clip(
        emotion, actor, duration_s=duration_s, size_px=size_px, fps=fps, sample_rate_hz=sample_rate_hz,
        intensity=intensity, statement=statement, repetition=repetition, seed=seed, with_audio=with_audio,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video_in = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size_px}x{size_px}", "-r", str(fps), "-i", "pipe:0"]
    video_out = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1"]
    bitexact = ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]
    if audio is None:
        run_ffmpeg(["-y", *video_in, *video_out, "-an", *bitexact, str(path)],
                   path=path, timeout_s=ENCODE_TIMEOUT_S, input_bytes=frames.tobytes())
        return path
    with tempfile.TemporaryDirectory(prefix="mmfer-demo-") as tmp:
        wav_path = Path(tmp, "voice.wav")
        _write_wav(wav_path, audio, sample_rate_hz)
        run_ffmpeg(
            ["-y", *video_in, "-i", str(wav_path), "-map", "0:v", "-map", "1:a", *video_out,
             "-c:a", "aac", "-b:a", "96k", "-ar", str(sample_rate_hz), "-ac", "1", *bitexact, str(path)],
            path=path, timeout_s=ENCODE_TIMEOUT_S, input_bytes=frames.tobytes(),
        )
    return path


def render_demo_clip(
    emotion: str, actor: int, *, duration_s: float, size_px: int, fps: int, sample_rate_hz: int,
    intensity: int, statement: int, repetition: int, seed: int, with_audio: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw generator output before encoding: frames uint8 [Tv, H, W, 3] RGB, audio float32 [S] or None."""
    face_code, arousal = EMOTION_CODES[emotion]
    strength = STRENGTH_BY_INTENSITY[intensity]
    clip_seed = (actor, EMOTIONS.index(emotion), intensity, statement, repetition)
    frames = render_face_frames(
        face_code, actor, num_frames=int(round(duration_s * fps)), size_px=size_px, strength=strength,
        seed=seed, clip_seed=clip_seed, fps=fps,
    )
    audio = None
    if with_audio:
        audio = synthesize_voice(
            arousal, actor, duration_s=duration_s, sample_rate_hz=sample_rate_hz, strength=strength,
            statement=statement, seed=seed, clip_seed=clip_seed,
        )
    return frames, audio


def make_demo(
    out_dir: str | os.PathLike, *, seed: int, num_actors: int, clips_per_emotion: int,
    size_px: int, duration_s: float, overwrite: bool, fps: int = 25, sample_rate_hz: int = 16000,
) -> pd.DataFrame:
    """Write a RAVDESS-format demo tree (num_actors x 8 emotions x clips_per_emotion clips) and scan it.

    `out_dir` must be absent or empty unless `overwrite` (then demo clips replace files of the same
    names; other files stay): pointed at a real dataset, it must not write over real clips.

    Returns:
        the manifest of exactly the clips written (scan_ravdess columns), sorted by clip_id.

    Raises:
        ValueError: num_actors outside 1..24 or clips_per_emotion outside 1..4.
        DemoOutError: out_dir is a file, or a non-empty folder and not `overwrite`.
    """
    if not 1 <= num_actors <= RAVDESS_NUM_ACTORS:
        raise ValueError(f"make_demo: num_actors must be 1..{RAVDESS_NUM_ACTORS} (RAVDESS actor ids), got {num_actors}")
    if not 1 <= clips_per_emotion <= MAX_CLIPS_PER_EMOTION:
        raise ValueError(
            f"make_demo: clips_per_emotion must be 1..{MAX_CLIPS_PER_EMOTION} (neutral has only "
            f"{MAX_CLIPS_PER_EMOTION} valid RAVDESS takes per actor), got {clips_per_emotion}"
        )
    out_dir = _check_out(Path(out_dir), overwrite=overwrite)
    start = time.perf_counter()
    written = []
    for actor in range(1, num_actors + 1):
        for emotion in EMOTIONS:
            takes = _NEUTRAL_TAKES if emotion == "neutral" else _TAKES
            for intensity, statement, repetition in takes[:clips_per_emotion]:
                name = ravdess_clip_name(emotion, actor, intensity, statement, repetition)
                write_demo_clip(
                    out_dir / f"Actor_{actor:02d}" / f"{name}.mp4", emotion, actor, duration_s=duration_s,
                    size_px=size_px, fps=fps, sample_rate_hz=sample_rate_hz, intensity=intensity,
                    statement=statement, repetition=repetition, seed=seed,
                )
                written.append(name)
    manifest = scan_ravdess(out_dir)
    manifest = manifest[manifest["clip_id"].isin(written)].reset_index(drop=True)
    if len(manifest) != len(written):
        missing = sorted(set(written) - set(manifest["clip_id"]))
        raise RuntimeError(f"{out_dir}: wrote {len(written)} clips but the scan found {len(manifest)}; missing e.g. {missing[:3]}")
    log.info("%s: wrote %d demo clips in %.1f s", out_dir, len(written), time.perf_counter() - start)
    return manifest


CREMA_D_WAV_RATE_HZ = 16000   # CREMA-D's AudioWAV files are 16 kHz mono


def make_crema_d_demo(
    out_dir: str | os.PathLike, *, seed: int, num_actors: int, clips_per_emotion: int,
    size_px: int, duration_s: float, overwrite: bool,
) -> pd.DataFrame:
    """Write the demo in CREMA-D's layout: VideoFlash/<actor>_<sentence>_<EMO>_XX.flv (H.264 + AAC), the same
    sound as AudioWAV/*.wav (16 kHz mono) and VideoDemographics.csv, for `crema_d_demo_actors` and the 6 CREMA-D
    emotions; returns scan_crema_d's manifest of the clips written.

    Raises:
        ValueError: num_actors outside 1..91 or clips_per_emotion outside 1..12 (the sentences).
        DemoOutError: out_dir is a file, or a non-empty folder and not `overwrite`.
    """
    from mmfer.data.crema_d import SENTENCES, scan_crema_d

    if not 1 <= num_actors <= len(CREMA_D_ACTORS) or not 1 <= clips_per_emotion <= len(SENTENCES):
        raise ValueError(f"make_demo --layout crema-d: num_actors must be 1..{len(CREMA_D_ACTORS)} and clips_per_emotion "
                         f"1..{len(SENTENCES)}, got {num_actors} and {clips_per_emotion}")
    out_dir = _check_out(Path(out_dir), overwrite=overwrite)
    (out_dir / "AudioWAV").mkdir(parents=True, exist_ok=True)
    rows = ["ActorID,Age,Sex,Race,Ethnicity"]
    for i, actor in enumerate(crema_d_demo_actors(num_actors)):   # alternate sexes (the ids are mostly odd)
        rows.append(f"{actor},30,{'Female' if i % 2 else 'Male'},Unknown,Not Hispanic")
        for code, emotion in zip(CREMA_D_CODES, CREMA_D_EMOTIONS):
            for sentence in SENTENCES[:clips_per_emotion]:
                name = f"{actor}_{sentence}_{code}_XX"
                flv = write_demo_clip(out_dir / "VideoFlash" / f"{name}.flv", emotion, actor, duration_s=duration_s,
                                      size_px=size_px, statement=1 + SENTENCES.index(sentence) % 2, seed=seed)
                run_ffmpeg(["-y", "-i", str(flv), "-vn", "-ac", "1", "-ar", str(CREMA_D_WAV_RATE_HZ), "-c:a", "pcm_s16le",
                            "-map_metadata", "-1", "-fflags", "+bitexact", str(out_dir / "AudioWAV" / f"{name}.wav")],
                           path=flv, timeout_s=ENCODE_TIMEOUT_S)
    (out_dir / "VideoDemographics.csv").write_text("\n".join(rows) + "\n")
    return scan_crema_d(str(out_dir))


def crema_d_demo_actors(num_actors: int) -> list[int]:
    """CREMA-D actor ids for a demo of `num_actors`, taken in turn from the 5 actor blocks of CREMA-D's own
    5-fold protocol (1001, 1019, 1037, 1055, 1073, 1002, ...), so that from 5 actors on every fold of the
    default `crema-d-5fold` split has test, validation and training actors (the first ids alone fill one block)."""
    from mmfer.core.splits import block_folds

    blocks = [fold.test_actors for fold in block_folds(list(CREMA_D_ACTORS), num_folds=5, num_val_actors=0)]
    spread = [block[i] for i in range(max(map(len, blocks))) for block in blocks if i < len(block)]
    return sorted(spread[:num_actors])


def _check_out(out_dir: Path, *, overwrite: bool) -> Path:
    """`out_dir` when it is absent, empty or `overwrite`; else DemoOutError (it must not write over real clips)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoOutError(f"{out_dir}: --out is a file, not a folder; choose a new folder for the demo clips")
    if out_dir.is_dir() and not overwrite:
        held = sorted(p.name for p in out_dir.iterdir())
        if held:
            raise DemoOutError(f"{out_dir}: not empty (holds {len(held)} entries, e.g. {', '.join(held[:3])}); the demo "
                               "would write over clips of the same names: choose a new --out, or pass --overwrite")
    return out_dir


def _write_wav(path: Path, audio: np.ndarray, sample_rate_hz: int) -> None:
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate_hz)
        f.writeframes(pcm.tobytes())
