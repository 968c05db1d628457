"""Datasets beyond RAVDESS: your own manifest (csv/jsonl, bad rows), CREMA-D's layout, names and folds, and the
label names a store records flowing through extract and train-fusion (real clips, real ffmpeg, tiny encoders)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from cli_helpers import run_mmfer
from extract_helpers import extract_config
from synthetic_store import make_store
from train_helpers import ONE_THREAD_ARG, tiny_config

from mmfer.data.crema_d import BROKEN_CLIPS, parse_crema_d_name, scan_crema_d
from mmfer.data.datasets import build_manifest
from mmfer.data.demo import write_demo_clip
from mmfer.data.own_manifest import ManifestError, read_own_manifest
from mmfer.core.config import ExtractConfig
from mmfer.core.errors import ConfigError
from mmfer.core.labels import CREMA_D_EMOTIONS
from mmfer.core.splits import LeakageError, column_folds, make_folds, resolve_protocol
from mmfer.core.store import open_store

SPEAKERS = ("ann", "bob", "cat", "dan", "eve", "fay")
LABELS = ("calm", "happy", "sad")


def _touch(path, label=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _csv(path, rows, header="clip_id,video_path,label,speaker,start_s,end_s,fold"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_manifest_bad_rows_are_reported_by_line_and_left_out(tmp_path, caplog):
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4"):
        _touch(tmp_path / "media" / name)
    manifest = _csv(tmp_path / "clips.csv", [
        "c1,media/a.mp4,sad,ann,,,",              # line 2: good
        "c2,media/missing.mp4,sad,ann,,,",        # line 3: missing file
        "c3,media/b.mp4,happy,,,,",               # line 4: empty speaker
        "c4,media/c.mp4,sad,bob,,,nine",          # line 5: a fold that is not a number
        "c5,media/d.mp4,happy,bob,2.0,1.0,",      # line 6: end_s <= start_s
        f"c6,{tmp_path / 'media' / 'e.mp4'},happy,bob,,,",   # line 7: good, absolute path
    ])
    with caplog.at_level(logging.WARNING):
        table, names = read_own_manifest(str(manifest), labels="sad,happy")
    assert names == ("sad", "happy")
    assert list(table["clip_id"]) == ["c1", "c6"] and list(table["label"]) == [0, 1]
    assert list(table["speaker"]) == ["ann", "bob"] and list(table["actor"]) == [1, 2]
    text = caplog.text
    for line, why in ((3, "not found"), (4, "empty speaker"), (5, "fold 'nine' is not"), (6, "end_s 1.0 <= start_s 2.0")):
        assert f"clips.csv line {line}: left out: " in text and why in text, (line, why)
    assert all(s for s in table["source"])            # each file's signature is stamped


def test_jsonl_manifest_sorted_label_names_and_groups(tmp_path):
    _touch(tmp_path / "x.mp4")
    _touch(tmp_path / "y.mp4")
    lines = [json.dumps({"clip_id": "a", "video_path": "x.mp4", "label": "sad", "speaker": "s1", "group": "take1", "split": "train"}),
             "not json",
             json.dumps({"clip_id": "b", "video_path": "y.mp4", "label": "angry", "speaker": "s2", "split": "test"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    table, names = read_own_manifest(str(tmp_path / "m.jsonl"), labels=None)
    assert names == ("angry", "sad") and dict(zip(table["clip_id"], table["label"])) == {"a": 1, "b": 0}
    assert dict(zip(table["clip_id"], table["recording_id"])) == {"a": "take1", "b": "b"}
    assert resolve_protocol("auto", dataset="manifest", clips=table) == "manifest"
    (fold,) = make_folds("manifest", num_val_actors=2, fold_file=None, clips=table, num_folds=5, val_fraction=0.1, val_seed=0)
    assert fold.train_actors == (1,) and fold.test_actors == (2,)


def test_manifest_refuses_mixed_protocol_columns(tmp_path):
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "b.mp4")
    manifest = _csv(tmp_path / "m.csv", ["c1,a.mp4,sad,ann,0.5,1.5,1", "c2,b.mp4,sad,bob,,,"])
    with pytest.raises(ManifestError, match="some rows have a fold and others not"):
        read_own_manifest(str(manifest), labels=None)


def test_speaker_in_two_folds_is_leakage_and_folds_come_from_the_column():
    clips = pd.DataFrame({"actor": [1, 2, 3, 4], "speaker": ["a", "b", "c", "d"], "fold": [1, 1, 2, 3]})
    folds = column_folds(clips, num_val_actors=1)
    assert [(f.name, f.test_actors, f.val_actors, f.train_actors) for f in folds] == [
        ("fold1", (1, 2), (3,), (4,)), ("fold2", (3,), (4,), (1, 2)), ("fold3", (4,), (1,), (2, 3))]
    clips.loc[3, "actor"] = 1
    with pytest.raises(LeakageError, match="speaker a has clips in fold 1 and fold 3"):
        column_folds(clips, num_val_actors=1)


def test_crema_d_folds_are_hicmae_blocks_of_actors():
    folds = make_folds("crema-d-5fold", num_val_actors=2, fold_file=None, clips=None, num_folds=5, val_fraction=0.1, val_seed=0)
    assert [(f.test_actors[0], f.test_actors[-1], len(f.test_actors)) for f in folds] == [
        (1001, 1018, 18), (1019, 1036, 18), (1037, 1054, 18), (1055, 1072, 18), (1073, 1091, 19)]
    assert folds[0].val_actors == (1019, 1020) and folds[4].val_actors == (1001, 1002)
    for f in folds:
        assert len(f.train_actors) + len(f.val_actors) + len(f.test_actors) == 91


def test_crema_d_names_broken_clips_and_wav_only(tmp_path, caplog):
    assert parse_crema_d_name("1001_DFA_ANG_XX.flv")["emotion"] == "angry"
    for bad in ("1000_DFA_ANG_XX", "1001_XXX_ANG_XX", "1001_DFA_CAL_XX", "1001_DFA_ANG_ZZ", "1001_DFA_ANG"):
        assert parse_crema_d_name(bad) is None, bad
    for stem in ("1001_DFA_ANG_XX", "1002_IEO_HAP_HI", BROKEN_CLIPS[0], "README"):
        _touch(tmp_path / "VideoFlash" / f"{stem}.flv")
    _touch(tmp_path / "AudioWAV" / "1003_IEO_SAD_LO.wav")
    wav = _touch(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    (tmp_path / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n")
    with caplog.at_level(logging.INFO):
        table = scan_crema_d(str(tmp_path))
    assert list(table["clip_id"]) == ["1001_DFA_ANG_XX", "1002_IEO_HAP_HI"]
    assert list(table["gender"]) == ["male", ""] and list(table["label"]) == [0, 3]
    assert list(table["audio_path"]) == [str(wav.resolve()), ""]   # the WAV when it exists, else the FLV's sound
    assert "skipped 1 file(s) whose names are not CREMA-D names" in caplog.text
    assert "skipped 1 WAV file(s) without their VideoFlash" in caplog.text and BROKEN_CLIPS[0] in caplog.text


@pytest.mark.slow
def test_manifest_clips_extract_and_train_with_their_own_labels(tmp_path, tiny_models):
    """6 speakers x 3 labels of real demo clips through a manifest with bad rows -> extract -> one epoch of
    speaker-kfold; every output names the 3 classes, none of RAVDESS's 8."""
    from mmfer.core.media import run_ffmpeg

    rows = []
    for s, speaker in enumerate(SPEAKERS, start=1):
        for label in LABELS:
            video = tmp_path / "media" / f"{speaker}_{label}.mp4"
            if (speaker, label) == ("fay", "sad"):      # a 1 s segment of a 3 s recording
                write_demo_clip(video, label, s, duration_s=3.0, size_px=64)
                rows.append(f"{speaker}-{label},media/{speaker}_{label}.mp4,{label},{speaker},1.0,2.0,,")
            elif (speaker, label) == ("eve", "happy"):   # silent video + its sound in a separate WAV
                source = write_demo_clip(tmp_path / "src.mp4", label, s, duration_s=1.0, size_px=64)
                write_demo_clip(video, label, s, duration_s=1.0, size_px=64, with_audio=False)
                run_ffmpeg(["-y", "-i", str(source), "-vn", "-ac", "1", str(tmp_path / "media" / "eve.wav")],
                           path=source, timeout_s=60)
                rows.append(f"{speaker}-{label},media/{speaker}_{label}.mp4,{label},{speaker},,,,media/eve.wav")
            else:
                write_demo_clip(video, label, s, duration_s=1.0, size_px=64)
                rows.append(f"{speaker}-{label},media/{speaker}_{label}.mp4,{label},{speaker},,,,")
    rows.append("ghost,media/ghost.mp4,sad,ann,,,,")
    manifest_file = _csv(tmp_path / "clips.csv", rows, header="clip_id,video_path,label,speaker,start_s,end_s,fold,audio_path")
    cfg = extract_config("", tmp_path / "cache", tiny_models, dataset="manifest", manifest=str(manifest_file))
    from mmfer.extract.run import extract_all
    summary = extract_all(cfg, build_manifest(cfg))
    assert summary.num_done == 18 and summary.num_failed == 0, summary.format()
    store = open_store(tmp_path / "cache")
    assert store.attrs["label_names"] == list(LABELS)
    audio = store.entry("audio")
    assert abs(float(audio.read_clip("fay-sad", ("duration_s",))["duration_s"]) - 1.0) < 0.1   # the segment, not 3 s
    assert float(audio.read_clip("eve-happy", ("duration_s",))["duration_s"]) > 0.9            # the WAV's sound
    assert abs(float(audio.read_clip("ann-sad", ("duration_s",))["duration_s"]) - 1.0) < 0.1
    out = tmp_path / "run"
    result = run_mmfer("train-fusion", "--cache", tmp_path / "cache", "--out", out, "--preset", "tiny", "--device", "cpu",
                       "--epochs", "1", "split.num_folds=3", "split.num_val_actors=1", "training.batch_size=4", ONE_THREAD_ARG)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "summary.json").read_text())
    assert [f["test_actors"] for f in run["protocol"]] == [[1, 2], [3, 4], [5, 6]]
    config = (out / "config.yaml").read_text()
    assert "protocol: speaker-kfold" in config and "num_classes: 3" in config
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions["label"]) == set(LABELS) and len(predictions) == 18
    assert [c for c in predictions if c.startswith("prob_")] == [f"prob_{n}" for n in LABELS]
    confusion = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert list(confusion.index) == [f"true_{n}" for n in LABELS] and confusion.to_numpy().sum() == 18
    assert set(run["folds"]["fold1"]["per_class"]) == set(LABELS)
    predicted = tmp_path / "predict.csv"
    result = run_mmfer("predict", "--run", out, "--fold", "1", "--device", "cpu", "--out", predicted,
                       tmp_path / "media" / "ann_sad.mp4")
    assert result.returncode == 0, result.stderr[-3000:]
    row = pd.read_csv(predicted).iloc[0]
    assert row["prediction"] in LABELS and [c for c in row.index if c.startswith("prob_")] == [f"prob_{n}" for n in LABELS]

    eve_frames = int(audio.read_clip("eve-happy", ("length",))["length"])
    # A rerun redoes exactly the clips whose inputs changed: eve's separate WAV replaced (0.5 s now), and fay's
    # segment moved in the manifest; the video files themselves are untouched.
    run_ffmpeg(["-y", "-f", "lavfi", "-i", "sine=frequency=300:duration=0.5:sample_rate=16000", str(tmp_path / "media" / "eve.wav")],
               path=tmp_path / "media" / "eve.wav", timeout_s=60)
    manifest_file.write_text(manifest_file.read_text().replace("fay-sad,media/fay_sad.mp4,sad,fay,1.0,2.0", "fay-sad,media/fay_sad.mp4,sad,fay,1.0,2.5"))
    summary = extract_all(cfg, build_manifest(cfg))
    assert (summary.num_done, summary.num_skipped) == (2, 16), summary.format()
    audio = open_store(tmp_path / "cache").entry("audio")
    assert int(audio.read_clip("eve-happy", ("length",))["length"]) < 0.6 * eve_frames   # the new 0.5 s sound
    assert abs(float(audio.read_clip("fay-sad", ("duration_s",))["duration_s"]) - 1.5) < 0.1


@pytest.mark.slow
def test_crema_d_demo_extracts_and_trains_on_its_six_classes(tmp_path, tiny_models, demo_cache):
    """make-demo --layout crema-d (FLV + WAV) -> extract --dataset crema-d -> one epoch of fold 1 of crema-d-5fold,
    restricted by a fold file to the 4 demo actors."""
    result = subprocess.run([sys.executable, "-m", "mmfer.pipeline.cli", "make-demo", "--layout", "crema-d", "--out",
                             str(tmp_path / "crema"), "--num-actors", "4", "--clips-per-emotion", "1", "--size-px", "64",
                             "--duration-s", "1.0"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "crema" / "VideoFlash").glob("*.flv"))) == 24
    assert len(list((tmp_path / "crema" / "AudioWAV").glob("*.wav"))) == 24
    cfg = extract_config(tmp_path / "crema", tmp_path / "cache", tiny_models, dataset="crema-d")
    manifest = build_manifest(cfg)
    assert set(manifest["gender"]) == {"male", "female"} and sorted(manifest["actor"].unique()) == [1001, 1019, 1037, 1055]
    from mmfer.extract.run import extract_all
    summary = extract_all(cfg, manifest)
    assert summary.num_done == 24, summary.format()
    store = open_store(tmp_path / "cache")
    assert store.attrs["label_names"] == list(CREMA_D_EMOTIONS) and store.attrs["dataset"] == "crema-d"
    assert resolve_protocol("auto", dataset="crema-d", clips=store.clip_table) == "crema-d-5fold"
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps([{"name": "demo", "test_actors": [1001], "val_actors": [1019]}]))
    from mmfer.train.loop import train
    run = train(tiny_config(tmp_path / "cache", folds, tmp_path / "run", variant=None, seed=0, epochs=1, warmup=2,
                            batch_size=4, **{"model.visual.num_keep_tokens": 16}))
    assert set(run["folds"]["demo"]["per_class"]) == set(CREMA_D_EMOTIONS)
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(predictions) == 6 and set(predictions["label"]) == set(CREMA_D_EMOTIONS)

    # RAVDESS -> CREMA-D: a one-epoch RAVDESS run scored on the CREMA-D cache, on the 6 shared classes
    ravdess_folds = tmp_path / "ravdess_folds.json"
    ravdess_folds.write_text(json.dumps([{"name": "r1", "test_actors": [1], "val_actors": [2]}]))
    train(tiny_config(demo_cache, ravdess_folds, tmp_path / "ravdess_run", variant=None, seed=0, epochs=1, warmup=2,
                      batch_size=4, **{"model.visual.num_keep_tokens": 16}))
    cli = ["evaluate", "--run", tmp_path / "ravdess_run", "--device", "cpu"]
    result = run_mmfer(*cli, "--cache", tmp_path / "cache", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluation["classes"] == ["neutral", "happy", "sad", "angry", "fearful", "disgust"]   # the run's order
    assert evaluation["num_clips"] == 24 and evaluation["metrics"]["num_clips"] == 24
    confusion = pd.read_csv(tmp_path / "eval" / "confusion_matrix.csv", index_col=0)
    assert confusion.shape == (6, 6) and confusion.to_numpy().sum() == 24
    # a label map narrows the classes; a cache of other encoders is refused in one line, exit 2
    (tmp_path / "map.yaml").write_text("angry: angry\nsad: sad\n")
    result = run_mmfer(*cli, "--cache", tmp_path / "cache", "--label-map", tmp_path / "map.yaml", "--out", tmp_path / "eval2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text())["classes"] == ["sad", "angry"]
    other = make_store(tmp_path / "other_cache", repetitions=1)
    result = run_mmfer(*cli, "--cache", other, "--out", tmp_path / "eval3")
    assert result.returncode == 2 and "holds no features made with run" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "eval3").exists()


def test_crema_d_demo_actors_fill_every_fold_of_crema_d_5fold():
    from mmfer.data.demo import crema_d_demo_actors
    from mmfer.core.splits import runnable_folds

    assert crema_d_demo_actors(6) == [1001, 1002, 1019, 1037, 1055, 1073]
    for num_actors in (5, 6, 24):
        actors = crema_d_demo_actors(num_actors)
        folds = make_folds("crema-d-5fold", num_val_actors=2, fold_file=None, all_actors=actors, clips=None,
                           num_folds=5, val_fraction=0.1, val_seed=0)   # validation among the actors present, as train
        clips = pd.DataFrame({"clip_id": [f"{a}_x" for a in actors], "actor": actors, "label": 0})
        ok, why = runnable_folds(clips, folds, chosen=False, cache_path="demo")
        assert len(ok) == 5 and not why, (num_actors, why)


@pytest.mark.slow
def test_the_readme_crema_d_demo_chain_trains_under_its_default_protocol(tmp_path, tiny_models, monkeypatch):
    """README: `mmfer make-demo --layout crema-d --out demo_crema --num-actors 6`, extract, train-fusion, as written
    (smaller clips, the tiny encoders, one epoch): all five folds of crema-d-5fold run. In this process
    (cli_helpers), from the folder the README's paths are relative to."""
    from cli_helpers import run_mmfer as mmfer

    monkeypatch.chdir(tmp_path)

    done = mmfer("make-demo", "--layout", "crema-d", "--out", "demo_crema", "--num-actors", "6", "--clips-per-emotion", "1",
                 "--size-px", "64", "--duration-s", "1.0")
    assert done.returncode == 0, done.stderr[-3000:]
    done = mmfer("extract", "--dataset", "crema-d", "--root", "demo_crema", "--out", "cache_crema", "--preset", "tiny",
                 "--models-dir", tiny_models, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    done = mmfer("train-fusion", "--cache", "cache_crema", "--out", "runs/crema", "--epochs", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "crema" / "summary.json").read_text())
    assert [f["name"] for f in summary["protocol"]] == [f"fold{k}" for k in range(1, 6)] and "skipped_folds" not in summary


def _dfew_tree(root, clips, write=_touch):
    """DFEW's release layout: clips {n: (label 1..7, test set k)}; each set's train list is every other clip; odd
    clips in part folders with unpadded names, even ones padded at the top.
    write(path, label name) makes each clip file (default: a 1-byte placeholder)."""
    for kind in ("train", "test"):
        folder = root / "EmoLabel_DataSplit" / f"{kind}(single-labeled)"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, 6):
            chosen = [(n, lab) for n, (lab, s) in clips.items() if (s == k) == (kind == "test")]
            (folder / f"set_{k}.csv").write_text("video_name,label\n" + "".join(f"{n},{lab}\n" for n, lab in chosen))
    from mmfer.data.official_folds import DFEW_LABELS

    for n, (lab, _) in clips.items():   # as third-party loaders have them (part_1/7.mp4) and as the README (00008.mp4)
        name = f"part_{1 + n % 3}/{n}.mp4" if n % 2 else f"{n:05d}.mp4"
        write(root / "Clip" / "original" / name, DFEW_LABELS[lab - 1])


def _mafw_tree(root, clips, write=_touch):
    """MAFW's release layout: clips {stem: (label, test set k)}; write as for _dfew_tree."""
    for k in range(1, 6):
        folder = root / "Train & Test Set" / "single" / "no_caption" / f"set_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for kind in ("train", "test"):
            chosen = [(s, lab) for s, (lab, t) in clips.items() if (t == k) == (kind == "test")]
            (folder / f"{kind}.txt").write_text("".join(f"{s}.mp4 {lab}\n" for s, lab in chosen))
    for stem, (lab, _) in clips.items():
        write(root / "data" / "clips" / f"{stem}.mp4", lab)


def test_dfew_and_mafw_set_files_drive_their_folds(tmp_path, caplog):
    from mmfer.data.official_folds import DFEW_LABELS, MAFW_LABELS

    dfew = {n: (1 + n % 7, 1 + n % 5) for n in range(1, 21)}
    _dfew_tree(tmp_path / "dfew", dfew)
    (tmp_path / "dfew" / "Clip" / "original" / "00020.mp4").unlink()          # listed but absent: left out
    cfg = ExtractConfig(dataset="dfew", root=str(tmp_path / "dfew"))
    with caplog.at_level(logging.WARNING):
        table = build_manifest(cfg)
    assert table.attrs["label_names"] == list(DFEW_LABELS) and len(table) == 19 and "00020" in caplog.text
    assert dict(zip(table["clip_id"], table["emotion"]))["00003"] == DFEW_LABELS[3]   # label 4 = angry
    protocol = resolve_protocol("auto", dataset="dfew", clips=table)
    folds = make_folds(protocol, num_val_actors=1, fold_file=None, clips=table, num_folds=5, val_fraction=0.1, val_seed=0)
    by_actor = dict(zip(table["actor"], table["clip_id"]))
    for k, fold in enumerate(folds, start=1):
        assert sorted(by_actor[a] for a in fold.test_actors) == sorted(f"{n:05d}" for n, (_, s) in dfew.items() if s == k and n != 20)

    mafw = {f"{n:05d}": (MAFW_LABELS[n % 11], 1 + n % 5) for n in range(1, 23)}
    _mafw_tree(tmp_path / "mafw", mafw)
    table = build_manifest(ExtractConfig(dataset="mafw", root=str(tmp_path / "mafw")))
    assert table.attrs["label_names"] == list(MAFW_LABELS) and len(table) == 22
    assert dict(zip(table["clip_id"], table["fold"])) == {s: k for s, (_, k) in mafw.items()}
    (tmp_path / "mafw" / "Train & Test Set" / "single" / "no_caption" / "set_2" / "test.txt").write_text("00001.mp4 joy\n")
    with pytest.raises(Exception, match=r"set_2/test.txt line 1: expected '<clip>.mp4 <label>'"):
        build_manifest(ExtractConfig(dataset="mafw", root=str(tmp_path / "mafw")))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["dfew", "mafw"])
def test_dfew_and_mafw_layouts_extract_and_train_on_their_official_folds(dataset, tmp_path, tiny_models):
    """Real clips in each release's layout (12 clips, 2 or 3 per set) -> extract -> one epoch on each of the
    5 official folds: every clip is tested once, by the fold whose set lists it, under the dataset's names."""
    from mmfer.data.official_folds import DFEW_LABELS, MAFW_LABELS
    from mmfer.extract.run import extract_all
    from mmfer.core.labels import EMOTIONS

    def write(path, label):   # the demo's face and voice of a RAVDESS class, chosen by the label's position
        path.parent.mkdir(parents=True, exist_ok=True)
        names = DFEW_LABELS if dataset == "dfew" else MAFW_LABELS
        write_demo_clip(path, EMOTIONS[names.index(label) % len(EMOTIONS)], 1 + len(list(path.parent.iterdir())) % 4,
                        duration_s=1.0, size_px=64)

    if dataset == "dfew":
        clips = {n: (1 + n % 7, 1 + n % 5) for n in range(1, 13)}
        _dfew_tree(tmp_path / "data", clips, write)
        names, test_sets = DFEW_LABELS, {f"{n:05d}": s for n, (_, s) in clips.items()}
    else:
        # 4 of the 11 classes, 3 clips each: clip-level validation draws from classes with 2+ training clips
        clips = {f"{n:05d}": (MAFW_LABELS[n % 4], 1 + n % 5) for n in range(1, 13)}
        _mafw_tree(tmp_path / "data", clips, write)
        names, test_sets = MAFW_LABELS, {c: s for c, (_, s) in clips.items()}
    cfg = extract_config(str(tmp_path / "data"), tmp_path / "cache", tiny_models, dataset=dataset)
    summary = extract_all(cfg, build_manifest(cfg))
    assert summary.num_done == 12 and summary.num_failed == 0, summary.format()
    assert open_store(tmp_path / "cache").attrs["label_names"] == list(names)
    out = tmp_path / "run"
    result = run_mmfer("train-fusion", "--cache", tmp_path / "cache", "--out", out, "--preset", "tiny", "--device", "cpu",
                       "--epochs", "1", "split.allow_small_val=true", "training.batch_size=4",   # 12 clips, 7 or 11 classes
                       ONE_THREAD_ARG)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = pd.read_csv(out / "predictions.csv", dtype={"clip_id": str})
    assert sorted(predictions["clip_id"]) == sorted(test_sets)                       # each clip tested once
    assert {c: int(f.removeprefix("fold")) for c, f in zip(predictions["clip_id"], predictions["fold"])} == test_sets
    assert [c for c in predictions if c.startswith("prob_")] == [f"prob_{n}" for n in names]
    assert "num_classes: %d" % len(names) in (out / "config.yaml").read_text()


def test_a_protocol_of_another_datasets_actors_is_refused():
    table = pd.DataFrame({"actor": [1001, 1002], "fold": [None, None]})
    for protocol in ("fixed", "ravdess-6fold"):
        with pytest.raises(ConfigError, match=f"split.protocol={protocol} is ravdess's split by actor number, and this cache holds crema-d"):
            resolve_protocol(protocol, dataset="crema-d", clips=table)
    with pytest.raises(ConfigError, match="crema-d-5fold is crema-d's"):
        resolve_protocol("crema-d-5fold", dataset="ravdess", clips=table)
    assert resolve_protocol("fixed", dataset="ravdess", clips=table) == "fixed"
    assert resolve_protocol("speaker-kfold", dataset="crema-d", clips=table) == "speaker-kfold"


def test_class_weights_count_follows_the_cache_classes():
    import numpy as np

    from mmfer.core.errors import ConfigError
    from mmfer.train.losses import resolve_class_weights

    assert resolve_class_weights("1,2,3", np.array([0, 1, 2]), 3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="has 8 numbers, but the cache has 3 classes"):
        resolve_class_weights("1,1,1,1,1,1,1,1", np.array([0]), 3)


def test_train_refuses_class_weights_of_another_class_count_before_writing(tmp_path):
    from mmfer.core.errors import ConfigError
    from mmfer.train.loop import train

    cache = make_store(tmp_path / "cache", repetitions=1)   # written without label_names: RAVDESS's 8
    cfg = tiny_config(cache, out=tmp_path / "run", variant=None, seed=0, epochs=30, warmup=2, batch_size=16,
                      **{"model.visual.num_keep_tokens": 16, "training.class_weights": "1,2,3"})
    with pytest.raises(ConfigError, match=r"has 3 numbers, but .* has 8 classes \(neutral, calm"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_default_label_map_reads_each_datasets_spelling_of_a_class(tmp_path):
    """RAVDESS ↔ CREMA-D share 6 classes by name; DFEW's and MAFW's fear/surprise/anger/... are RAVDESS's
    fearful/surprised/angry/...; classes with no counterpart are left out; a file overrides the default."""
    from mmfer.data.official_folds import DFEW_LABELS, MAFW_LABELS
    from mmfer.pipeline.evaluate import label_mapping
    from mmfer.core.labels import CREMA_D_EMOTIONS, EMOTIONS

    assert label_mapping(EMOTIONS, CREMA_D_EMOTIONS, None) == {n: n for n in CREMA_D_EMOTIONS}
    assert label_mapping(EMOTIONS, DFEW_LABELS, None) == {
        "happy": "happy", "sad": "sad", "neutral": "neutral", "angry": "angry", "surprise": "surprised",
        "disgust": "disgust", "fear": "fearful"}
    mafw = label_mapping(EMOTIONS, MAFW_LABELS, None)
    assert mafw == {"anger": "angry", "disgust": "disgust", "fear": "fearful", "happiness": "happy", "neutral": "neutral",
                    "sadness": "sad", "surprise": "surprised"}
    assert label_mapping(MAFW_LABELS, CREMA_D_EMOTIONS, None)["fearful"] == "fear"   # either direction
    given = tmp_path / "map.yaml"
    given.write_text("fear: fearful\ncontempt: disgust\n")
    assert label_mapping(EMOTIONS, MAFW_LABELS, str(given)) == {"fear": "fearful", "contempt": "disgust"}


# ---- inputs refused at the door, with the right line --------------------------------


def test_manifest_line_numbers_count_blank_lines_and_a_0_based_fold_column_is_refused_once(tmp_path, caplog):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        _touch(tmp_path / name)
    manifest = tmp_path / "clips.csv"
    manifest.write_text("clip_id,video_path,label,speaker,fold\n"
                        "c1,a.mp4,sad,ann,1\n"
                        "\n"                                    # line 3: blank
                        "c2,missing.mp4,sad,bob,2\n"            # line 4
                        "c3,b.mp4,happy,bob,2\n")
    with caplog.at_level(logging.WARNING):
        table, _ = read_own_manifest(str(manifest), labels=None)
    assert list(table["clip_id"]) == ["c1", "c3"] and "clips.csv line 4: left out: video_path" in caplog.text, caplog.text
    manifest.write_text("clip_id,video_path,label,speaker,fold\n" + "".join(
        f"c{i},{'abc'[i]}.mp4,sad,s{i},{i}\n" for i in range(3)))  # folds 0, 1, 2
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(ManifestError, match=r"clips.csv: the fold column starts at 0 "
                                                                              r"\(line 2\); folds are numbered from 1"):
        read_own_manifest(str(manifest), labels=None)
    assert "left out" not in caplog.text                    # one refusal of the file, not a fold lost row by row


def test_manifest_label_typo_is_named_and_other_names_are_refused_under_labels(tmp_path, caplog):
    for i in range(5):
        _touch(tmp_path / f"{i}.mp4")
    manifest = _csv(tmp_path / "clips.csv", [f"c{i},{i}.mp4,{label},s{i},,," for i, label in
                                             enumerate(("happy", "happy", "sad", "hapy", "angry"))])
    with caplog.at_level(logging.INFO, logger="mmfer.data.own_manifest"):
        table, names = read_own_manifest(str(manifest), labels=None)
    assert names == ("angry", "happy", "hapy", "sad")
    assert "5 clips in 4 classes: angry 1, happy 2, hapy 1, sad 1" in caplog.text, caplog.text
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "label 'hapy' (1 rows, first line 5) is 1 edit(s) from 'happy' (2 rows)" in warned[0], warned
    with pytest.raises(ManifestError, match=r"clips.csv: labels that are not one of --labels happy,sad,angry: 'hapy' on 1 "
                                            r"row\(s\), first line 5 \(did you mean 'happy'\?\)"):
        read_own_manifest(str(manifest), labels="happy,sad,angry")


def test_git_lfs_pointer_files_are_refused_at_scan_time_saying_what_to_run(tmp_path):
    from mmfer.data.manifest import LfsPointerError

    root = tmp_path / "CREMA-D"
    (root / ".git").mkdir(parents=True)
    (root / "VideoFlash").mkdir()
    for name in ("1001_DFA_ANG_XX", "1001_DFA_HAP_XX"):
        (root / "VideoFlash" / f"{name}.flv").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146b0e6\nsize 185382\n")
    with pytest.raises(LfsPointerError, match=r"1001_DFA_ANG_XX.flv: a git-lfs pointer file, not media \(2 of the 2 "
                                              r"media files are\).*run `git lfs pull` in " + re.escape(str(root))):
        build_manifest(ExtractConfig(dataset="crema-d", root=str(root)))


def test_extract_refuses_a_manifest_without_label_names(tmp_path, tiny_models):
    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all

    manifest = pd.DataFrame({"clip_id": ["a"], "path": [str(tmp_path / "a.mp4")], "source": ["1:1"], "label": [0]})
    with pytest.raises(ConfigError, match="the manifest carries no label names"):
        extract_all(extract_config(tmp_path, tmp_path / "cache", tiny_models), manifest)
    assert not (tmp_path / "cache").exists()
    assert scan_ravdess(tmp_path).attrs["label_names"][0] == "neutral"   # every adapter names its classes


# ---- DFEW's file names as the release and its loaders have them ---------------------------


def test_dfew_files_match_by_number_in_part_folders_padded_or_not(tmp_path):
    from mmfer.data.official_folds import DFEW_LABELS, OfficialFoldsError

    dfew = {n: (1 + n % 7, 1 + n % 5) for n in range(1, 11)}
    _dfew_tree(tmp_path, dfew, write=lambda path, label: None)
    for n in dfew:   # part_1/1.mp4 ... unpadded; part_2/00006.mp4 ... padded
        _touch(tmp_path / "Clip" / "original" / f"part_{1 + (n > 5)}" / (f"{n}.mp4" if n <= 5 else f"{n:05d}.mp4"))
    table = build_manifest(ExtractConfig(dataset="dfew", root=str(tmp_path)))
    assert len(table) == 10 and list(table["clip_id"]) == [f"{n:05d}" for n in range(1, 11)]
    paths = dict(zip(table["clip_id"], table["path"]))
    assert paths["00001"].endswith("Clip/original/part_1/1.mp4") and paths["00007"].endswith("part_2/00007.mp4")
    assert dict(zip(table["clip_id"], table["emotion"]))["00006"] == DFEW_LABELS[6 % 7]

    twin = _touch(tmp_path / "Clip" / "original" / "part_3" / "0003.mp4")
    with pytest.raises(OfficialFoldsError, match=r"clip 3 has two files, .*part_1/3.mp4 and .*part_3/0003.mp4"):
        build_manifest(ExtractConfig(dataset="dfew", root=str(tmp_path)))
    twin.unlink()
    for bad in ("0", "-1", "8"):
        set_file = tmp_path / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_2.csv"
        set_file.write_text(f"video_name,label\n1,3\n\n4,{bad}\n")   # the bad row is on line 4
        with pytest.raises(OfficialFoldsError, match=r"set_2.csv line 4: expected video_name,label with label 1..7"):
            build_manifest(ExtractConfig(dataset="dfew", root=str(tmp_path)))


# ---- a rerun takes the edited manifest; a grown manifest extracts into the same store --


@pytest.mark.slow
def test_a_rerun_trains_on_the_edited_labels_folds_and_appended_rows(tmp_path, tiny_models):
    from mmfer.extract.run import extract_all

    rows = []
    for i, (speaker, label) in enumerate([("ann", "calm"), ("ann", "happy"), ("bob", "calm"), ("bob", "happy"), ("cat", "calm")]):
        write_demo_clip(tmp_path / f"{i}.mp4", label, i + 1, duration_s=1.0, size_px=64)
        rows.append(f"c{i},{i}.mp4,{label},{speaker},,,{1 + i % 2}")
    manifest_file = _csv(tmp_path / "clips.csv", rows[:4])
    cfg = extract_config("", tmp_path / "cache", tiny_models, dataset="manifest", manifest=str(manifest_file))
    assert extract_all(cfg, build_manifest(cfg)).num_done == 4
    # relabel c0, move c1 to fold 3, append c4
    edited = [rows[0].replace(",calm,", ",happy,"), rows[1][:-1] + "3", *rows[2:]]
    _csv(tmp_path / "clips.csv", edited)
    summary = extract_all(cfg, build_manifest(cfg))
    assert (summary.num_done, summary.num_skipped) == (1, 4), summary.format()
    store = open_store(tmp_path / "cache")
    table = store.clip_table.set_index("clip_id")
    assert table.loc["c0", "emotion"] == "happy" and table.loc["c0", "label"] == 1 and table.loc["c1", "fold"] == 3
    assert list(store.clip_ids) == ["c0", "c1", "c2", "c3", "c4"] and (store.entry("video").statuses() == 1).all()
    # training's view of the cache: the new label and fold
    from mmfer.train.dataset import open_cache
    cache = open_cache(str(tmp_path / "cache"), use_video=True, use_audio=True)
    assert dict(zip(cache.clips["clip_id"], cache.clips["label"]))["c0"] == 1
    # --labels in another order: the same features, the classes renumbered
    reordered = extract_config("", tmp_path / "cache", tiny_models, dataset="manifest", manifest=str(manifest_file),
                               labels="happy,calm")
    assert extract_all(reordered, build_manifest(reordered)).num_skipped == 5
    store = open_store(tmp_path / "cache")
    assert store.attrs["label_names"] == ["happy", "calm"]
    assert dict(zip(store.clip_ids, store.clip_table["label"])) == {"c0": 0, "c1": 0, "c2": 1, "c3": 0, "c4": 1}

    # a manifest that lost a row is refused before any encoder loads (the fault point there would raise ENOSPC)
    _csv(tmp_path / "clips.csv", edited[1:])
    result = subprocess.run([sys.executable, "-m", "mmfer.pipeline.cli", "extract", "--dataset", "manifest",
                             "--manifest", str(tmp_path / "clips.csv"), "--out", str(tmp_path / "cache"), "--preset", "tiny",
                             "--models-dir", str(tiny_models), "--device", "cpu", "--num-workers", "0"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "MMFER_ENOSPC_AT": "load_encoders"})
    assert result.returncode == 2 and "this run's manifest lacks 1 of them (e.g. c0)" in result.stderr, result.stderr[-2000:]
    assert "No space" not in result.stderr
