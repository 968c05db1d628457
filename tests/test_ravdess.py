"""RAVDESS name parsing and folder scanning, on small trees of empty files named like the real set."""

from __future__ import annotations

import logging
import os

import pytest

from mmfer.data.manifest import MANIFEST_COLUMNS
from mmfer.data.ravdess import RavdessNameError, parse_ravdess_name, scan_ravdess
from mmfer.core.labels import EMOTIONS


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _full_tree(root, channels=("01", "02"), modalities=("01", "02", "03")):
    """Every valid name of two actors: emotions x intensities x statements x repetitions."""
    for actor in (1, 2):
        for mm in modalities:
            for vv in channels:
                for ee in range(1, 9):
                    if vv == "02" and ee in (7, 8):       # RAVDESS song has no disgust / surprised
                        continue
                    for ii in (1, 2) if ee != 1 else (1,):
                        for ss in (1, 2):
                            for rr in (1, 2):
                                ext = "wav" if mm == "03" else "mp4"
                                name = f"{mm}-{vv}-{ee:02d}-{ii:02d}-{ss:02d}-{rr:02d}-{actor:02d}.{ext}"
                                _touch(root / f"Actor_{actor:02d}" / name)


def test_parse_all_emotions_and_fields():
    for code, emotion in enumerate(EMOTIONS, start=1):
        fields = parse_ravdess_name(f"01-01-{code:02d}-01-02-01-12.mp4")
        assert fields["emotion"] == emotion and fields["label"] == code - 1
    fields = parse_ravdess_name("/data/Actor_07/02-02-05-02-01-02-07.mp4")
    assert fields == {
        "clip_id": "02-02-05-02-01-02-07", "modality": "video", "vocal_channel": "song", "emotion": "angry",
        "label": 4, "intensity": 2, "statement": 1, "repetition": 2, "actor": 7, "gender": "male",
        "recording_id": "02-05-02-01-02-07",
    }
    assert parse_ravdess_name("03-01-01-01-01-01-24.wav")["modality"] == "audio"
    assert parse_ravdess_name("03-01-01-01-01-01-24")["gender"] == "female"   # stem without extension


def test_three_modalities_of_one_take_share_recording_id():
    ids = {parse_ravdess_name(f"{mm}-01-04-02-02-01-03")["recording_id"] for mm in ("01", "02", "03")}
    assert ids == {"01-04-02-02-01-03"}


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("01-01-01-02-01-01-01.mp4", "intensity"),     # neutral has no strong intensity
        ("01-01-03-01-01-01.mp4", "found 6"),           # six parts
        ("01-01-03-01-01-01-01-01.mp4", "found 8"),
        ("01-01-0x-01-01-01-01.mp4", "emotion"),        # non-numeric
        ("01-01-3-01-01-01-01.mp4", "emotion"),         # not two digits
        ("04-01-03-01-01-01-01.mp4", "modality"),
        ("01-03-03-01-01-01-01.mp4", "vocal_channel"),
        ("01-01-09-01-01-01-01.mp4", "emotion"),
        ("01-01-03-03-01-01-01.mp4", "intensity"),
        ("01-01-03-01-03-01-01.mp4", "statement"),
        ("01-01-03-01-01-00-01.mp4", "repetition"),
        ("01-01-03-01-01-01-25.mp4", "actor"),
        ("01-01-03-01-01-01-00.mp4", "actor"),
    ],
)
def test_bad_names_raise_naming_file_and_part(name, part):
    with pytest.raises(RavdessNameError, match=part) as err:
        parse_ravdess_name(name)
    assert name in str(err.value)
    assert isinstance(err.value, ValueError)


def test_default_scan_selects_av_speech(tmp_path):
    _full_tree(tmp_path)
    manifest = scan_ravdess(tmp_path)
    # per actor: neutral 4 takes + 7 emotions x 8 takes = 60 AV speech clips (RAVDESS: 60 x 24 = 1440)
    assert len(manifest) == 120
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert set(manifest["modality"]) == {"av"} and set(manifest["vocal_channel"]) == {"speech"}
    assert list(manifest["clip_id"]) == sorted(manifest["clip_id"])
    assert all(os.path.isabs(p) and p.endswith(".mp4") for p in manifest["path"])
    assert set(manifest["dataset"]) == {"ravdess"}
    assert dict(manifest.groupby("actor")["gender"].first()) == {1: "male", 2: "female"}
    assert manifest.groupby("label").size().to_dict() == {0: 8, **{k: 16 for k in range(1, 8)}}
    assert str(manifest["label"].dtype) == "int64"


def test_scan_other_selections(tmp_path):
    _full_tree(tmp_path)
    audio = scan_ravdess(tmp_path, vocal_channels=("speech", "song"), modalities=("audio",))
    assert set(audio["modality"]) == {"audio"} and set(audio["vocal_channel"]) == {"speech", "song"}
    assert all(p.endswith(".wav") for p in audio["path"])
    song = scan_ravdess(tmp_path, vocal_channels=("song",))
    assert len(song) == 2 * (4 + 5 * 8) and set(song["emotion"]) == set(EMOTIONS[:6])
    with pytest.raises(ValueError, match="vocal_channels"):
        scan_ravdess(tmp_path, vocal_channels=("speach",))


def test_scan_skips_bad_names_with_one_counting_warning(tmp_path, caplog):
    _touch(tmp_path / "Actor_01" / "01-01-03-01-01-01-01.mp4")
    _touch(tmp_path / "deep" / "er" / "01-01-04-02-01-01-02.mp4")          # files anywhere count
    for bad in ("01-01-01-02-01-01-01.mp4", "clip.mp4", "01-01-03-01-01-01.mp4", "03-01-03-01-01-01-01.mp4"):
        _touch(tmp_path / "Actor_01" / bad)                                  # last: audio code in an mp4
    _touch(tmp_path / "Actor_01" / "notes.txt")                               # not media: silently ignored
    with caplog.at_level(logging.WARNING, logger="mmfer.data.ravdess"):
        manifest = scan_ravdess(tmp_path)
    assert list(manifest["clip_id"]) == ["01-01-03-01-01-01-01", "01-01-04-02-01-01-02"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 4 file" in warnings[0].getMessage() and "clip.mp4" in warnings[0].getMessage()


def test_duplicate_clip_id_is_an_error_naming_both_paths(tmp_path):
    first = _touch(tmp_path / "Actor_05" / "01-01-02-01-01-01-05.mp4")
    second = _touch(tmp_path / "copy" / "01-01-02-01-01-01-05.mp4")
    with pytest.raises(ValueError, match="01-01-02-01-01-01-05") as err:
        scan_ravdess(tmp_path)
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_symlink_loop_does_not_hang(tmp_path):
    _touch(tmp_path / "Actor_01" / "01-01-05-01-01-01-01.mp4")
    os.symlink(tmp_path, tmp_path / "Actor_01" / "loop")
    os.symlink(tmp_path / "Actor_01", tmp_path / "Actor_01" / "self")
    manifest = scan_ravdess(tmp_path)
    assert list(manifest["clip_id"]) == ["01-01-05-01-01-01-01"]


def test_symlinked_actor_folder_is_scanned(tmp_path):
    _touch(tmp_path / "elsewhere" / "Actor_03" / "01-01-06-02-02-02-03.mp4")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere" / "Actor_03", tmp_path / "root" / "Actor_03")
    assert list(scan_ravdess(tmp_path / "root")["clip_id"]) == ["01-01-06-02-02-02-03"]


def test_missing_root_and_empty_root(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_ravdess(tmp_path / "nope")
    manifest = scan_ravdess(tmp_path)
    assert len(manifest) == 0 and tuple(manifest.columns) == MANIFEST_COLUMNS
