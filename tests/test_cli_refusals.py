"""A newcomer's first hour: mistakes are refused early, in one line, and nothing is destroyed.

An empty or wrong --root, make-demo into a folder that holds files, --resume with other settings, a
cache still being written, a cache holding some actors only, a refused fingerprint. Real tiny stores
(tests/synthetic_store.py), real files, the real CLI handler; a real process holds the writer lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from synthetic_store import NUM_ACTORS, make_store, write_fold_file
from train_helpers import ONE_THREAD_ARG

from mmfer.pipeline.cli import main
from mmfer.core.store import ArraySpec, StoreError, open_store

TINY = ["--preset", "tiny", "--device", "cpu", "model.visual.num_keep_tokens=8", "training.batch_size=8", ONE_THREAD_ARG]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Actors 1..8 only: of the 6-fold protocol, folds 1 (tests 1-4, validates 5-6, trains 7-8) and 2 (tests 5-8,
    validates 1-2, trains 3-4) run."""
    return make_store(tmp_path_factory.mktemp("first_hour") / "cache", repetitions=1)


@pytest.fixture(scope="module")
def subset_run(store, tmp_path_factory) -> Path:
    """One epoch of `--folds all` on the 8-actor store."""
    out = tmp_path_factory.mktemp("runs") / "subset"
    assert main(["train-fusion", "--cache", str(store), "--out", str(out), "--epochs", "1", *TINY]) == 0
    return out


# ---- item 2: an empty or wrong --root ----------------------------------------------------------------


def test_no_clips_under_root_says_what_is_there_before_any_model_or_output(tmp_path, capsys):
    root = tmp_path / "wrong"
    (root / "Actor_01").mkdir(parents=True)
    for name in ("01-02-03-01-01-01-01.mp4", "02-01-03-01-01-01-01.mp4", "holiday.mp4", "notes.txt"):
        (root / "Actor_01" / name).write_bytes(b"x")   # song, video-only, not RAVDESS, not media
    out, models = tmp_path / "cache", tmp_path / "models"
    assert main(["extract", "--root", str(root), "--out", str(out), "--preset", "tiny", "--models-dir", str(models)]) == 2
    err = one_error_line(capsys)
    assert f"no RAVDESS clips under {root}" in err
    for found in ("1 av song clips", "1 video speech clips", "holiday.mp4", "notes.txt", "--vocal-channels"):
        assert found in err, (found, err)
    assert not out.exists() and not models.exists()            # no store left behind, no model written/loaded
    assert not list(tmp_path.glob(".cache*"))                   # nor its lock file

    (tmp_path / "empty").mkdir()
    assert main(["extract", "--root", str(tmp_path / "empty"), "--out", str(out), "--preset", "tiny"]) == 2
    assert "found nothing" in one_error_line(capsys) and not out.exists()


# ---- item 4: make-demo into a folder that holds files --------------------------------------------------


def test_make_demo_refuses_a_folder_that_holds_files_unless_overwrite(tmp_path, capsys):
    real = tmp_path / "ravdess" / "Actor_01" / "01-01-01-01-01-01-01.mp4"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a real clip")
    demo = ["make-demo", "--out", str(tmp_path / "ravdess"), "--num-actors", "1", "--clips-per-emotion", "1",
            "--size-px", "32", "--duration-s", "0.2"]
    assert main(demo) == 2
    err = one_error_line(capsys)
    assert "not empty" in err and "--overwrite" in err
    assert real.read_bytes() == b"a real clip"

    (tmp_path / "file").write_text("x")
    assert main([*demo[:2], str(tmp_path / "file"), *demo[3:]]) == 2
    assert "is a file" in one_error_line(capsys)

    assert main([*demo, "--overwrite"]) == 0
    assert real.read_bytes() != b"a real clip" and len(list(real.parent.glob("*.mp4"))) == 8


# ---- item 10: a store holding some actors only ------------------------------------------------------


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_actor_subset_runs_the_folds_it_can_and_names_the_others(subset_run, store, tmp_path, capsys, caplog):
    summary = json.loads((subset_run / "summary.json").read_text())
    # actors used, not the 24; fold 2 validates on actors the store holds (1, 2), not on its absent next group (9, 10)
    assert summary["protocol"] == [{"name": "fold1", "train_actors": [7, 8], "val_actors": [5, 6], "test_actors": [1, 2, 3, 4]},
                                   {"name": "fold2", "train_actors": [3, 4], "val_actors": [1, 2], "test_actors": [5, 6, 7, 8]}]
    assert sorted(summary["skipped_folds"]) == ["fold3", "fold4", "fold5", "fold6"]
    assert "test actors [9, 10, 11, 12]" in summary["skipped_folds"]["fold3"]
    assert f"actors 1-{NUM_ACTORS}" in summary["skipped_folds"]["fold6"]

    assert main(["train-fusion", "--cache", str(store), "--out", str(tmp_path / "run"), "--folds", "1,3", *TINY]) == 2
    err = one_error_line(capsys)
    assert "fold3: no usable clips of its test actors [9, 10, 11, 12]" in err and "drop fold3 from --folds" in err
    assert not (tmp_path / "run").exists()


# ---- item 5: --resume with other settings ---------------------------------------------------------------


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_resume_refuses_changed_settings_by_name_and_records_more_epochs(store, tmp_path, capsys):
    run = tmp_path / "run"
    split = ["split.protocol=file", f"split.fold_file={write_fold_file(tmp_path / 'folds.json')}"]
    assert main(["train-fusion", "--cache", str(store), "--out", str(run), "--epochs", "1", *TINY, *split]) == 0
    config = (run / "config.yaml").read_text()
    resume = ["train-fusion", "--cache", str(store), "--out", str(run), "--resume", *TINY, *split]
    assert main([*resume, "--epochs", "1", "training.lr=0.002", "training.mixup_alpha=0"]) == 2
    err = one_error_line(capsys)
    assert "training.lr: 0.001 -> 0.002" in err and "training.mixup_alpha: 0.2 -> 0.0" in err
    assert (run / "config.yaml").read_text() == config          # untouched

    assert main([*resume, "--epochs", "2"]) == 0                 # training longer is applied and recorded
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["resume_changes"] == ["training.max_epochs: 1 -> 2"]
    assert len((run / "fold1" / "metrics.jsonl").read_text().splitlines()) == 2


# ---- item 9: a cache that extract is still writing ----------------------------------------------------


def test_train_refuses_a_cache_whose_writer_lock_is_held(store, tmp_path, capsys):
    from mmfer.core.store import writer_lock_holder   # the read-only query this item adds

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from mmfer.core.store import writer_lock
        with writer_lock({str(store)!r}):
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert writer_lock_holder(store) == f"pid {holder.pid}, lock {store.parent / '.cache.extract.lock'}"
        out = tmp_path / "run"
        assert main(["train-fusion", "--cache", str(store), "--out", str(out), "--epochs", "1", *TINY]) == 2
        err = one_error_line(capsys)
        assert "an extract is still writing this store" in err and f"pid {holder.pid}" in err
        assert "--allow-writing-cache" in err and not out.exists()
        assert main(["train-fusion", "--cache", str(store), "--out", str(out), "--dry-run", *TINY]) == 0   # reading is fine
    finally:
        holder.kill()
        holder.wait()
    assert writer_lock_holder(store) is None


# ---- item 11: a refused fingerprint names the setting -------------------------------------------------


def test_a_refused_fingerprint_names_the_settings_that_differ(tmp_path):
    path = make_store(tmp_path / "cache", repetitions=1)
    store = open_store(path, mode="r+")
    attrs = dict(store.entry("video").attrs)
    attrs = {**{k: v for k, v in attrs.items() if k not in ("modality", "fingerprint", "arrays")},
             "num_frames": 8, "encoder": {**attrs["encoder"], "dim": 64}}
    with pytest.raises(StoreError) as err:
        store.ensure_entry("video", "b" * 12, attrs, {"tokens": ArraySpec((8, 16, 64), "float16")})
    assert "encoder.dim: 32 -> 64" in str(err.value) and "num_frames: (none) -> 8" in str(err.value)


# ---- errors at the door, one line, exit 2, nothing created ---------------------------------


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """One actor x 8 emotions of the synthetic demo (8 real mp4 files)."""
    from mmfer.data.demo import make_demo

    root = tmp_path_factory.mktemp("small_demo")
    make_demo(root, seed=0, num_actors=1, clips_per_emotion=1, size_px=32, duration_s=0.5, overwrite=False)
    return root


@pytest.mark.parametrize("device", ["gpu", "cuda:99", "tpu", "cuda"])
def test_a_device_this_machine_cannot_give_is_one_line_before_anything_is_made(small_root, tmp_path, capsys, device):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"   # the GPU machine's own impossible device
    out, models = tmp_path / "cache", tmp_path / "models"
    assert main(["extract", "--root", str(small_root), "--out", str(out), "--preset", "tiny", "--models-dir", str(models),
                 "--device", device]) == 2
    err = one_error_line(capsys)
    assert f"--device {device}:" in err and ("use auto, cpu, cuda or cuda:N" in err or "--device cpu or auto" in err
                                              or "GPU(s)" in err), err
    assert not out.exists() and not models.exists()
    run = tmp_path / "run"
    assert main(["train-fusion", "--cache", str(out), "--out", str(run), "--device", device]) == 2
    assert f"--device {device}:" in one_error_line(capsys) and not run.exists()


def test_a_select_that_matches_nothing_is_refused_and_names_real_clip_ids(small_root, tmp_path, capsys):
    out, models = tmp_path / "cache", tmp_path / "models"
    assert main(["extract", "--root", str(small_root), "--out", str(out), "--preset", "tiny", "--models-dir", str(models),
                 "--select", "*-99"]) == 2
    err = one_error_line(capsys)
    assert "--select '*-99' matches none of the 8 clips" in err and "01-01-01-01-01-01-01" in err, err
    assert not out.exists() and not models.exists()


def test_a_flag_typo_is_one_line_naming_the_nearest_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train-fusion", "--cache", str(tmp_path), "--epohcs", "3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert "unrecognized argument --epohcs; did you mean --epochs?" in err, err
    with pytest.raises(SystemExit):
        main(["predict", "--run", str(tmp_path), "--visual-encodr", "x", "clip.mp4"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --visual-encoder?" in err, err
    # a key=value typo names the full dotted key it meant
    assert main(["train-fusion", "--cache", str(tmp_path), "--out", str(tmp_path / "run"), "training.max_epoch=3"]) == 2
    assert "unknown config key 'training.max_epoch' (did you mean training.max_epochs?)" in one_error_line(capsys)
    assert main(["train-fusion", "--cache", str(tmp_path), "--out", str(tmp_path / "run"), "model.fusoin.num_layers=2"]) == 2
    assert "(did you mean model.fusion.num_layers?)" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_predict_walks_every_container_extract_reads(tmp_path):
    from mmfer.pipeline.predict import find_videos

    for name in ("a.flv", "b.MP4", "c.mkv", "d.m4v", "notes.txt", "e.wav"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_videos([str(tmp_path)])] == ["a.flv", "b.MP4", "c.mkv", "d.m4v"]


# ---- evaluate --out refuses a folder that holds files, as the other commands do -------------


@pytest.mark.slow   # its module's fixture trains or exports a store: seconds on two shared cores
@pytest.mark.parametrize("mode", [[], ["--corrupt", "no-audio"]])
def test_evaluate_refuses_a_non_empty_out_unless_overwrite(subset_run, store, tmp_path, capsys, mode):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(["evaluate", "--run", str(subset_run), "--cache", str(store), "--out", str(out), "--device", "cpu", *mode]) == 2
    err = one_error_line(capsys)
    assert f"{out}: not empty (holds metrics.json)" in err and "--overwrite" in err, err
    assert (out / "metrics.json").read_text() == "{}"
    assert main(["evaluate", "--run", str(subset_run), "--cache", str(store), "--out", str(out), "--device", "cpu",
                 "--overwrite", *mode]) == 0
    capsys.readouterr()
