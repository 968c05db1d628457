"""Faults during `extract`, with real processes on real demo clips and the tiny encoders.

`kill -9` at seven named moments (core/faults.py crash points, plus a kill in the middle of a zarr
chunk write) then a rerun gives a store bitwise equal to an uninterrupted run; a disk that fills up;
a second writer; a decoder that hangs or floods stderr. Runs use --batch-size 1, because the tiny
FastConformer's output for a batch of one differs from its output inside a bigger batch by up to one
float16 step (max 9.8e-4), and a resumed run batches clips differently (see docs/reliability.md).
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from extract_helpers import extract_config

from mmfer.data.demo import make_demo
from mmfer.data.ravdess import scan_ravdess
from mmfer.extract.decode import DecodeError, decode_clip
from mmfer.extract.run import DiskSpaceError, extract_all
from mmfer.pipeline.cli import main as mmfer_main
from mmfer.core.config import ExtractConfig
from mmfer.core.media import ffmpeg_exe
from mmfer.core.store import MODALITIES, ClipStatus, StoreError, open_store
from mmfer.core.store.verify import verify_store

pytestmark = pytest.mark.slow   # real kill -9 chains, disk-full and hanging decoders in subprocesses: minutes
DEMO = {"num_actors": 1, "clips_per_emotion": 1, "size_px": 64, "duration_s": 1.0}   # 8 clips
NUM_CLIPS = 8
RUN_TIMEOUT_S = 300

# Loaded by a child python (PYTHONPATH) to die in the middle of zarr writing the 2nd video/tokens
# chunk of its run: half the bytes are in `<chunk>.<uuid>.partial`, as zarr leaves them on a real kill.
KILL_IN_CHUNK_WRITE = '''
import os, signal, uuid
import zarr.storage._local as _local

_put, _hits = _local._put, [0]
def _dying_put(path, value, exclusive=False):
    if "/video/" in str(path) and "/tokens/c/" in str(path):
        _hits[0] += 1
        if _hits[0] == 2:
            data = bytes(value.as_buffer_like())
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(f".{uuid.uuid4().hex}.partial"), "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return _put(path, value, exclusive=exclusive)
_local._put = _dying_put
'''


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_demo")
    make_demo(root, seed=0, overwrite=False, **DEMO)
    return root


def extract_cmd(root, out, models_dir, *extra):
    return [sys.executable, "-m", "mmfer.pipeline.cli", "extract", "--root", str(root), "--out", str(out),
            "--preset", "tiny", "--models-dir", str(models_dir), "--num-workers", "0", "--face-crop", "center",
            "--batch-size", "1", *extra]


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMFER_")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def wait_until_stopped(proc, timeout_s=RUN_TIMEOUT_S):
    """Wait for a child that SIGSTOPs itself at a crash point (state T in /proc)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"child exited with {proc.returncode} before reaching its stop point"
        if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.1)
    raise AssertionError("child never reached its stop point")


def snapshot(out: Path) -> dict:
    """What a reader sees in the store right after a kill (read only; nothing is cleaned)."""
    obs = {"store": (out / "zarr.json").exists(), "entries": 0, "done": {m: 0 for m in MODALITIES},
           "pending_with_data": [], "read_errors": [],
           "partials": sorted(str(p) for p in out.rglob("*.partial")) if out.exists() else [],
           "staging": sorted(p.name for p in out.parent.glob(".staging-*"))
           + (sorted(p.name for p in out.glob(".staging-*")) if out.exists() else [])}
    if not obs["store"]:
        return obs
    store = open_store(out)
    for modality in MODALITIES:
        for fp in store.fingerprints(modality):
            obs["entries"] += 1
            entry = store.entry(modality, fp)
            statuses = entry.statuses()
            for index, clip_id in enumerate(store.clip_ids):
                if statuses[index] == ClipStatus.DONE:
                    obs["done"][modality] += 1
                    try:
                        entry.read_clip(clip_id)
                    except StoreError as err:
                        obs["read_errors"].append(str(err))
                elif any(chunk.exists() for chunk in entry.clip_chunk_files(index)):
                    obs["pending_with_data"].append(f"{modality}/{clip_id}")
    return obs


# (crash point, what the store must show right after the kill: proof the kill landed there).
# Each step continues the previous step's store; the comments count clips with video done.
KILL_STEPS = [
    ("store_staged", lambda o: not o["store"] and o["staging"]),                  # store folder staged, not renamed
    ("entry_staged", lambda o: o["store"] and o["entries"] == 0 and o["staging"]),  # video entry staged
    ("decode:2", lambda o: o["done"]["video"] == 1 and not o["pending_with_data"]),   # 1 done, decoding the 2nd
    ("array_written:2", lambda o: o["done"]["video"] == 1 and len(o["pending_with_data"]) == 1),  # 2 of 4 video arrays
    ("chunk-write", lambda o: o["done"]["video"] == 2 and o["partials"]),         # half a tokens chunk on disk
    ("before_done:3", lambda o: o["done"]["video"] == 3 and len(o["pending_with_data"]) == 1),    # data, not status
]


@pytest.fixture(scope="module")
def kill_chain(tmp_path_factory, small_root, tiny_models):
    """Run the reference extract (in parallel), then kill a second one at each step and rerun."""
    base = tmp_path_factory.mktemp("kills")
    ref_out, out = base / "ref" / "cache", base / "run" / "cache"
    with open(base / "ref.log", "w") as ref_log:
        reference = subprocess.Popen(extract_cmd(small_root, ref_out, tiny_models), env=child_env(),
                                     stdout=ref_log, stderr=subprocess.STDOUT)
    try:
        return _run_kill_chain(base, small_root, tiny_models, out, ref_out, reference)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()


def _run_kill_chain(base, small_root, tiny_models, out, ref_out, reference):
    guard = base / "chunk_kill"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(KILL_IN_CHUNK_WRITE)
    steps = []
    for point, _ in KILL_STEPS:
        env = child_env(PYTHONPATH=str(guard)) if point == "chunk-write" else child_env(MMFER_CRASH_AT=point)
        result = subprocess.run(extract_cmd(small_root, out, tiny_models), env=env, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT_S)
        steps.append({"point": point, "returncode": result.returncode, "stderr": result.stderr[-3000:], **snapshot(out)})

    # A writer frozen right after its first clip holds the lock; a second extract must refuse. Then kill -9 the first.
    first = subprocess.Popen(extract_cmd(small_root, out, tiny_models), env=child_env(
        MMFER_CRASH_AT="clip_done", MMFER_CRASH_SIGNAL="SIGSTOP"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_stopped(first)
        second = subprocess.run(extract_cmd(small_root, out, tiny_models), env=child_env(), capture_output=True,
                                text=True, timeout=RUN_TIMEOUT_S)
    finally:
        first.kill()
        first.wait()
    steps.append({"point": "clip_done (frozen, then kill -9)", "returncode": first.returncode, **snapshot(out)})

    final = subprocess.run(extract_cmd(small_root, out, tiny_models), env=child_env(), capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S)
    assert reference.wait(timeout=RUN_TIMEOUT_S) == 0, (base / "ref.log").read_text()[-3000:]
    return {"steps": steps, "second_writer": second, "final": final, "out": out, "ref_out": ref_out}


def test_each_kill_landed_where_aimed(kill_chain):
    for step, (point, landed) in zip(kill_chain["steps"], KILL_STEPS):
        assert step["returncode"] == -signal.SIGKILL, f"{point}: exit {step['returncode']}\n{step['stderr']}"
        assert landed(step), f"{point}: store after the kill: {step}"
    frozen = kill_chain["steps"][-1]
    assert frozen["returncode"] == -signal.SIGKILL and frozen["done"]["video"] == 4, frozen


def test_no_clip_is_ever_done_without_its_data(kill_chain):
    for step in kill_chain["steps"]:
        assert step["read_errors"] == [], f"{step['point']}: {step['read_errors']}"


def test_second_writer_is_refused_while_the_first_holds_the_lock(kill_chain):
    second = kill_chain["second_writer"]
    assert second.returncode == 2, second.stderr[-3000:]
    assert "another extract is writing" in second.stderr and "--out" in second.stderr


def test_rerun_after_kills_equals_an_uninterrupted_run(kill_chain):
    final = kill_chain["final"]
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"{NUM_CLIPS - 4} done, 4 skipped, 0 failed" in final.stdout, final.stdout
    ours, reference = open_store(kill_chain["out"]), open_store(kill_chain["ref_out"])
    assert ours.clip_ids == reference.clip_ids
    for modality in MODALITIES:
        a, b = ours.entry(modality), reference.entry(modality)
        assert a.fingerprint == b.fingerprint
        np.testing.assert_array_equal(a.statuses(), b.statuses())
        assert a.reasons() == b.reasons() and a.sources() == b.sources()
        for clip_id in ours.clip_ids:
            got, want = a.read_clip(clip_id), b.read_clip(clip_id)
            for name in want:
                diff = np.abs(got[name].astype(np.float64) - want[name].astype(np.float64))
                assert np.array_equal(got[name], want[name]), (
                    f"{modality}/{name} of {clip_id}: max diff {diff.max():.3g}, mean {diff.mean():.3g}")


def test_leftovers_are_cleaned_by_the_rerun_and_by_verify_repair(kill_chain, tmp_path):
    out = kill_chain["out"]
    assert snapshot(out)["partials"] == [] and snapshot(out)["staging"] == [], snapshot(out)
    copy = tmp_path / "cache"
    shutil.copytree(out, copy)
    entry = open_store(copy).entry("video")
    partial = entry.clip_chunk_files(0)[0].with_suffix(".0123abcd.partial")
    partial.write_bytes(b"half a chunk")
    (copy / ".staging-audio-x-0123abcd").mkdir()
    assert mmfer_main(["verify", str(copy)]) == 0             # read only: found, left in place
    assert partial.exists() and (copy / ".staging-audio-x-0123abcd").exists()
    assert mmfer_main(["verify", "--repair", str(copy)]) == 0
    assert not partial.exists() and not (copy / ".staging-audio-x-0123abcd").exists()
    assert verify_store(copy).num_checked == 2 * NUM_CLIPS


def _reaped_children_cpu_ticks(pid: int) -> int:
    """CPU clock ticks of the processes that `pid`'s children have run and waited for (cutime + cstime of each
    child in /proc): a decode worker's finished ffmpeg runs."""
    total = 0
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:   # gone meanwhile
                continue
            total += int(fields[13]) + int(fields[14])   # fields 16 and 17 of stat(5): cutime, cstime
    return total


# The workers' first tasks reach them through a queue's feeder thread in the main process; a SIGSTOP that comes
# before that thread has run freezes the tasks too (seen once in a whole-suite run: no tick in 300 s). If nothing
# was decoded after NUDGE_AFTER_S, the test lets the main process run for NUDGE_S, which flushes the queue and
# leaves it inside the encoder load (the tiny NeMo model alone takes longer than that to restore), then stops it again.
NUDGE_AFTER_S = 30.0
NUDGE_S = 0.3


def _let_run(proc, seconds: float) -> None:
    proc.send_signal(signal.SIGCONT)
    time.sleep(seconds)
    proc.send_signal(signal.SIGSTOP)


def test_decode_workers_decode_while_the_encoders_load(tmp_path, small_root, tiny_models):
    """Extract frozen (SIGSTOP) at the point where it loads the encoders already has decode
    workers, and they run ffmpeg to completion while the main process sleeps there; let go, it finishes."""
    proc = subprocess.Popen(extract_cmd(small_root, tmp_path / "cache", tiny_models, "--num-workers", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=child_env(MMFER_CRASH_AT="load_encoders", MMFER_CRASH_SIGNAL="SIGSTOP"))
    try:
        wait_until_stopped(proc)
        deadline = time.monotonic() + RUN_TIMEOUT_S   # worker start-up on a busy machine: tens of seconds
        nudge_at = time.monotonic() + NUDGE_AFTER_S
        while _reaped_children_cpu_ticks(proc.pid) == 0 and time.monotonic() < deadline:
            if time.monotonic() > nudge_at:   # see NUDGE_AFTER_S
                _let_run(proc, NUDGE_S)
                nudge_at = float("inf")
            time.sleep(0.2)
        decoded_while_loading = _reaped_children_cpu_ticks(proc.pid)
    finally:
        proc.send_signal(signal.SIGCONT)
    output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert decoded_while_loading > 0, "no decode worker ran ffmpeg while extract was at its encoder load"
    assert proc.returncode == 0 and f"{NUM_CLIPS} done" in output, output[-3000:]


def _mount_tmpfs(path: Path, size: str) -> bool:
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    return filler


def test_disk_full_mid_run_keeps_the_store_valid(tmp_path, small_root, tiny_models):
    """A real 6 MB tmpfs where this machine lets the test mount one (root in CI and here); else the
    writer's simulated ENOSPC (MMFER_ENOSPC_AT). On the tmpfs, the run is frozen after its 2nd clip,
    the disk filled up, and the run let go."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _mount_tmpfs(disk, "6m")
    out = disk / "cache"
    print(f"disk full via {'a real tmpfs' if mounted else 'MMFER_ENOSPC_AT (tmpfs mount refused)'}")
    try:
        if mounted:   # too little space up front: refused before any clip, with the numbers
            filler = disk / "filler"
            filler.write_bytes(b"\0" * (5 << 20))
            with pytest.raises(DiskSpaceError, match="MB are free; free some space"):
                extract_all(extract_config(small_root, out, tiny_models, batch_size=1), scan_ravdess(small_root))
            filler.unlink()
            proc = subprocess.Popen(extract_cmd(small_root, out, tiny_models), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env=child_env(MMFER_CRASH_AT="clip_done:2", MMFER_CRASH_SIGNAL="SIGSTOP"))
            try:
                wait_until_stopped(proc)
                filler = _fill(disk)
            finally:
                proc.send_signal(signal.SIGCONT)
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
            returncode = proc.returncode
        else:
            result = subprocess.run(extract_cmd(small_root, out, tiny_models), capture_output=True, text=True,
                                    env=child_env(MMFER_ENOSPC_AT="array_written:16"), timeout=RUN_TIMEOUT_S)
            returncode, stderr, filler = result.returncode, result.stderr, None
        assert returncode not in (0, -signal.SIGKILL), stderr[-3000:]
        assert "disk full while writing clip" in stderr and "free space and re-run" in stderr, stderr[-3000:]
        video = open_store(out).entry("video")
        assert (video.statuses() == ClipStatus.DONE).sum() == 2
        report = verify_store(out)
        assert report.ok and report.num_checked == 4, report.format()
        if filler is not None:
            filler.unlink()
        summary = extract_all(extract_config(small_root, out, tiny_models, batch_size=1), scan_ravdess(small_root))
        assert summary.num_done == NUM_CLIPS - 2 and summary.num_failed == 0, summary.format()
        report = verify_store(out)
        assert report.ok and report.num_checked == 2 * NUM_CLIPS, report.format()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


FAKE_FFMPEG = """#!/bin/bash
case "$*" in
  *hang_dir*) exec sleep 600 ;;
  *flood_dir*) while :; do echo "[h264 @ 0x5555] error while decoding MB 3 7, bytestream -5" >&2; done ;;
  *noisy_dir*) head -c 5000000 /dev/zero | tr '\\0' x >&2; exec "{real}" "$@" ;;
  *) exec "{real}" "$@" ;;
esac
"""


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """MMFER_FFMPEG: sleeps for files under hang_dir/, floods stderr forever under flood_dir/, writes 5 MB
    to stderr then runs the real ffmpeg under noisy_dir/, and is the real ffmpeg elsewhere."""
    script = tmp_path / "ffmpeg"
    script.write_text(FAKE_FFMPEG.format(real=ffmpeg_exe()))
    script.chmod(0o755)
    monkeypatch.setenv("MMFER_FFMPEG", str(script))
    ffmpeg_exe.cache_clear()
    yield script
    ffmpeg_exe.cache_clear()   # the next call, after monkeypatch restores the env, finds the real one again


def test_hanging_or_flooding_decoder_times_out_and_the_run_goes_on(tmp_path, small_root, tiny_models, fake_ffmpeg):
    timeout_s = 2.0
    clips = sorted(small_root.rglob("*.mp4"))[:4]
    root = tmp_path / "data"
    for clip, folder in zip(clips, ("hang_dir", "flood_dir", "noisy_dir", "ok_dir")):
        (root / folder).mkdir(parents=True)
        shutil.copy(clip, root / folder / clip.name)
    defaults = ExtractConfig()
    for folder in ("hang_dir", "flood_dir"):
        start = time.monotonic()
        with pytest.raises(DecodeError) as caught:
            decode_clip(next((root / folder).iterdir()), num_frames=defaults.num_frames,
                        sample_rate_hz=defaults.sample_rate_hz, timeout_s=timeout_s, max_audio_s=defaults.max_audio_s)
        took_s = time.monotonic() - start
        assert caught.value.reason == "timeout" and took_s < timeout_s + 3, (folder, took_s, str(caught.value))

    summary = extract_all(extract_config(root, tmp_path / "cache", tiny_models, decode_timeout_s=timeout_s),
                          scan_ravdess(root))
    assert summary.num_done == 2 and summary.num_failed == 2, summary.format()
    store = open_store(tmp_path / "cache")
    by_folder = dict(zip(store.clip_table["path"].map(lambda p: Path(p).parent.name), range(4)))
    video = store.entry("video")
    for folder, status in (("hang_dir", ClipStatus.FAILED), ("flood_dir", ClipStatus.FAILED),
                           ("noisy_dir", ClipStatus.DONE), ("ok_dir", ClipStatus.DONE)):
        index = by_folder[folder]
        assert video.statuses()[index] == status, (folder, video.reasons()[index])
        if status == ClipStatus.FAILED:
            assert video.reasons()[index].startswith("timeout: "), video.reasons()[index]

    # Nothing succeeds: the exit code says so, and each clip's reason is recorded.
    shutil.rmtree(root / "noisy_dir")
    shutil.rmtree(root / "ok_dir")
    code = mmfer_main(["extract", "--root", str(root), "--out", str(tmp_path / "cache2"), "--preset", "tiny",
                       "--models-dir", str(tiny_models), "--num-workers", "0", "--decode-timeout-s", str(timeout_s)])
    assert code == 1
    reasons = open_store(tmp_path / "cache2").entry("audio").reasons()
    assert len(reasons) == 2 and all(r.startswith("timeout: ") for r in reasons), reasons
