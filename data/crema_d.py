"""CREMA-D adapter: `VideoFlash/*.flv` (+ `AudioWAV/*.wav`, `VideoDemographics.csv`) -> the manifest.

Names are `ActorID_Sentence_Emotion_Level` (e.g. `1001_DFA_ANG_XX`): actors 1001-1091, 12 sentences,
emotions ANG DIS FEA HAP NEU SAD (class ids in that order), levels LO MD HI XX. A clip is its FLV; its audio
comes from AudioWAV/<name>.wav when that exists (`audio_path`), else from the FLV's own stream (`audio_path`
""). A WAV without its FLV is skipped (counted in one warning). The clips published work
drops as broken (BROKEN_CLIPS) are left out. Sex comes from VideoDemographics.csv when present.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pandas as pd

from mmfer.data.manifest import with_sources
from mmfer.core.errors import BadInputError
from mmfer.core.labels import CREMA_D_ACTORS, CREMA_D_CODES, CREMA_D_EMOTIONS

log = logging.getLogger(__name__)

SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")
BROKEN_CLIPS = ("1076_MTI_NEU_XX", "1076_MTI_SAD_XX", "1064_TIE_SAD_XX", "1064_IEO_DIS_MD")
"""Left out as published work does (HiCMAE preprocess/creamd_av.py)."""
NUM_NAMES_IN_WARNING = 5


class CremaDError(BadInputError, FileNotFoundError):
    """--root is not a CREMA-D folder (no VideoFlash/*.flv)."""


def parse_crema_d_name(name: str) -> dict | None:
    """The fields of a CREMA-D stem, or None when it is not a CREMA-D name."""
    parts = Path(name).stem.split("_")
    if len(parts) != 4 or not parts[0].isascii() or not parts[0].isdigit():
        return None
    actor, sentence, code, level = int(parts[0]), *parts[1:]
    if actor not in CREMA_D_ACTORS or sentence not in SENTENCES or code not in CREMA_D_CODES or level not in LEVELS:
        return None
    label = CREMA_D_CODES.index(code)
    return {"clip_id": Path(name).stem, "actor": actor, "sentence": sentence, "label": label,
            "emotion": CREMA_D_EMOTIONS[label], "level": level}


def read_sexes(root: Path) -> dict[int, str]:
    """ActorID -> 'male' / 'female' from VideoDemographics.csv ({} when it is absent)."""
    path = root / "VideoDemographics.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return {int(r["ActorID"]): r["Sex"].strip().lower() for r in csv.DictReader(handle)
                if r.get("ActorID", "").strip().isdigit() and r.get("Sex")}


def scan_crema_d(root: str) -> pd.DataFrame:
    """The manifest of the CREMA-D clips under `root`, sorted by clip_id.

    Raises:
        CremaDError: no VideoFlash folder with .flv files under root.
    """
    root_path = Path(root).expanduser().resolve()
    videos = sorted((root_path / "VideoFlash").glob("*.flv")) if (root_path / "VideoFlash").is_dir() else []
    if not videos:
        found = sorted(p.name for p in root_path.iterdir()) if root_path.is_dir() else []
        raise CremaDError(f"{root_path}: no CREMA-D clips (VideoFlash/*.flv); found {found[:5] or 'nothing'}. Point "
                          "--root at the folder holding VideoFlash, AudioWAV and VideoDemographics.csv "
                          "(or write a demo: mmfer make-demo --layout crema-d --out demo_crema)")
    sexes = read_sexes(root_path)
    rows, bad, broken = [], [], []
    for path in videos:
        fields = parse_crema_d_name(path.name)
        if fields is None:
            bad.append(path.name)
        elif fields["clip_id"] in BROKEN_CLIPS:
            broken.append(fields["clip_id"])
        else:
            wav = root_path / "AudioWAV" / f"{path.stem}.wav"
            rows.append({**fields, "path": str(path), "dataset": "crema-d", "gender": sexes.get(fields["actor"], ""),
                         "recording_id": fields["clip_id"], "audio_path": str(wav) if wav.is_file() else ""})
    if bad:
        log.warning("%s: skipped %d file(s) whose names are not CREMA-D names, e.g. %s",
                    root_path, len(bad), ", ".join(bad[:NUM_NAMES_IN_WARNING]))
    if broken:
        log.info("%s: left out %d clip(s) published work drops as broken: %s", root_path, len(broken), ", ".join(broken))
    stems = {p.stem for p in videos}
    wav_only = sorted(p.name for p in (root_path / "AudioWAV").glob("*.wav") if p.stem not in stems) \
        if (root_path / "AudioWAV").is_dir() else []
    if wav_only:
        log.warning("%s: skipped %d WAV file(s) without their VideoFlash/*.flv (audio-only clips are not used), e.g. %s",
                    root_path, len(wav_only), ", ".join(wav_only[:NUM_NAMES_IN_WARNING]))
    if not rows:
        raise CremaDError(f"{root_path}: VideoFlash holds no usable CREMA-D clip ({len(bad)} other names, "
                          f"{len(broken)} known-broken); names are ActorID_Sentence_Emotion_Level.flv")
    table = with_sources(pd.DataFrame(rows).sort_values("clip_id").reset_index(drop=True))
    table.attrs["label_names"] = list(CREMA_D_EMOTIONS)
    return table
