"""Scale out on torchrun: real `torch.distributed.run --nproc_per_node=2` subprocesses (gloo on CPU).

DDP training with 2 ranks of per-rank batch 4 equals one process of batch 8 within a stated tolerance,
predicts every test clip once, writes the run folder from rank 0 only, and its checkpoint resumes on 1 rank;
it also trains with parameters unused in a step (a modality missing from a batch, a frozen LFM2 trunk).
2-rank extraction writes the bytes one process writes, also after a kill -9 of one rank and a rerun.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from extract_helpers import assert_same_store
from synthetic_store import make_store, write_fold_file
from train_helpers import tiny_settings

from mmfer.core.config import train_config_with_preset
from mmfer.train.dataset import rank_share
from mmfer.train.loop import train

BIN = Path(sys.executable).parent
EPOCHS = 3
# Why 1e-3 on probabilities: the 2-rank run computes the global batch's gradient from two 4-clip means
# averaged by gloo's all-reduce instead of one 8-clip mean: the same sum in another order, so float32
# rounding (~1e-7) differs. AdamW divides by sqrt(v), so for near-zero gradient components that rounding
# becomes an lr-sized step; over 3 epochs this was measured at 5.1e-4 max (8e-5 mean) on this store. 1e-3
# is twice that. Uniform class weights: with `auto` weights each rank's weighted mean has its own
# denominator (sum of its clips' weights), which is not exact (measured 3.1e-3) - README says so.
# The comparison turns off dropout, mixup and augmentation: each rank draws those from its own stream
# (seed, fold, epoch, rank; train/fold.py epoch_streams), so with them on, 1 and 2 processes draw different
# masks for the same clip and agree only in distribution, not within any tolerance. Off, no draw depends on
# the rank (the shuffle is shared), and 1e-3 still holds (rerun after the per-rank streams).
PROB_TOLERANCE = 1e-3


def settings(cache: Path, folds: Path, *, batch_size: int, epochs: int = EPOCHS) -> dict:
    return tiny_settings(cache, folds, variant=None, epochs=epochs, warmup=1, batch_size=batch_size, **{
        "training.gradient_accumulation_steps": 2, "training.dropout": 0.0, "training.mixup_alpha": 0.0,
        "training.class_weights": "none"})


RANK_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--no-python", str(BIN / argv[0]), *argv[1:]]
    result = subprocess.run(cmd, cwd=cwd, env=RANK_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def flags(values: dict) -> list[str]:
    """Settings as CLI flags: a dotted key is its own flag (--training.batch_size), a top-level one is spelt with
    dashes (--compute-threads)."""
    return [part for key, value in values.items()
            for part in (f"--{key}" if "." in key else f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    return make_store(root / "cache", repetitions=1), write_fold_file(root / "folds.json")


def test_rank_share_is_disjoint_and_aligned_to_global_batches():
    order = np.random.default_rng(0).permutation(21)
    shares = [rank_share(order, batch_size=4, rank=r, world_size=2) for r in range(2)]
    (a, wa), (b, wb) = shares
    assert len(wa) == len(wb) == 3                                   # every rank runs the same number of steps
    assert sorted(np.concatenate([a, b])) == list(range(21))         # disjoint, and every clip once (21 = 8+8+5)
    assert set(a[:4]) | set(b[:4]) == set(order[:8])                 # step k of each rank is a piece of global batch k
    assert wa == [1.0, 1.0, 3 * 2 / 5] and wb == [1.0, 1.0, 2 * 2 / 5]
    alone, weights = rank_share(order, batch_size=8, rank=0, world_size=1)
    assert list(alone) == list(order) and weights == [1.0] * 3


@pytest.mark.slow
def test_two_rank_ddp_equals_one_process_and_resumes_on_one_rank(cache, tmp_path):
    one = train(train_config_with_preset({**settings(*cache, batch_size=8), "out": str(tmp_path / "one")}))
    two_dir = tmp_path / "two"
    torchrun(2, ["train-fusion", *flags({**settings(*cache, batch_size=4), "out": two_dir})], tmp_path)

    summary = json.loads((two_dir / "summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "per_rank_batch": 4, "accumulation": 2, "global_batch": 16}
    assert one["distributed"]["global_batch"] == 16
    p1 = pd.read_csv(tmp_path / "one" / "predictions.csv").set_index("clip_id").sort_index()
    p2 = pd.read_csv(two_dir / "predictions.csv")
    assert p2["clip_id"].is_unique and set(p2["clip_id"]) == set(p1.index)   # every test clip exactly once
    p2 = p2.set_index("clip_id").sort_index()
    prob_cols = [c for c in p1.columns if c.startswith("prob")]
    diff = np.abs(p1[prob_cols].to_numpy() - p2[prob_cols].to_numpy())
    assert diff.max() < PROB_TOLERANCE, f"max diff {diff.max():.3g}, mean {diff.mean():.3g}"
    assert (p1["prediction"] == p2["prediction"]).all()
    for key in ("accuracy", "uar"):
        assert abs(one["mean"][key] - summary["mean"][key]) < 1e-9, (key, one["mean"][key], summary["mean"][key])
    lines = (two_dir / "fold1" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]      # one writer: no line twice

    # the 2-rank checkpoint resumes on 1 process (one more epoch; the run records the new world size)
    resumed = train(dataclasses.replace(train_config_with_preset(
        {**settings(*cache, batch_size=4, epochs=EPOCHS + 1), "out": str(two_dir)}), resume=True))
    assert resumed["protocol_card"][0]["epochs_run"] == EPOCHS + 1
    assert resumed["distributed"]["world_size"] == 1
    assert yaml.safe_load((two_dir / "config.yaml").read_text())["resume_changes"] == ["training.max_epochs: 3 -> 4"]


def two_rank_run(cache: tuple[Path, Path], out: Path, extra: dict) -> pd.DataFrame:
    """A 2-rank gloo train-fusion run with `extra` settings; its predictions.csv, checked: every test clip once."""
    from synthetic_store import clip_table

    torchrun(2, ["train-fusion", *flags({**settings(*cache, batch_size=2, epochs=2), **extra, "out": out})], out.parent)
    predictions = pd.read_csv(out / "predictions.csv")
    table = clip_table(repetitions=1)
    assert predictions["clip_id"].is_unique
    assert set(predictions["clip_id"]) == set(table["clip_id"][table["actor"].isin([1, 2])])   # the test actors
    probs = predictions[[c for c in predictions.columns if c.startswith("prob")]].to_numpy()
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1.0, atol=1e-4), probs[:3]
    assert json.loads((out / "summary.json").read_text())["distributed"]["world_size"] == 2
    return predictions


@pytest.mark.slow
def test_two_rank_ddp_with_the_lfm2_trunk_frozen_and_a_missing_modality_in_some_batches(cache, tmp_path):
    """Two kinds of parameters without a gradient, in one 2-rank run (one torchrun, not two):
    - model.fusion.mode frozen: the LFM2 trunk has no gradients; DDP trains the rest and the trunk stays as built.
    - per-rank batches of 2 with modality dropout 0.5: some rank's batch has no audio (or no video), so the
      auxiliary head of that modality takes no part in its loss (train/losses.py): a parameter unused in that
      step on that rank only. DDP must not fail or hang (find_unused_parameters, train/fold.py)."""
    from mmfer.pipeline.bench_parts import cached_loader, open_bench_cache
    from mmfer.train.loop import setup_fold

    out = tmp_path / "frozen"
    two_rank_run(cache, out, {"model.fusion.mode": "frozen", "training.modality_dropout": 0.5})
    cfg = train_config_with_preset({**settings(*cache, batch_size=2), "model.fusion.mode": "frozen"})
    store = open_bench_cache(cache[0])
    dataset, _ = cached_loader(store, cfg)
    built = setup_fold(cfg, store, dataset, np.arange(len(dataset)), torch.device("cpu"), fold_number=1, fold=None).model
    trained = torch.load(out / "fold1" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    trunk = {k: v for k, v in built.state_dict().items() if k.startswith("fusion.backbone.")}
    assert trunk
    for key, value in trunk.items():
        assert torch.equal(trained[key], value), key                        # frozen: not one step taken
    moved = [k for k, v in built.state_dict().items() if k.startswith("head.") and not torch.equal(trained[k], v)]
    assert moved, "the heads did not train"

EXTRACT_ARGV = ["extract", "--preset", "tiny", "--device", "cpu", "--num-workers", "0", "--face-crop", "center",
                "--batch-size", "1"]


def extract_argv(demo_root: Path, tiny_models: Path, out: Path) -> list[str]:
    return [*EXTRACT_ARGV, "--root", str(demo_root), "--models-dir", str(tiny_models), "--out", str(out)]


@pytest.fixture(scope="module")
def one_process_store(demo_root, tiny_models, tmp_path_factory) -> Path:
    """The reference: the demo extracted by one plain process with the ranks' environment (1 thread: the same
    float reductions)."""
    reference = tmp_path_factory.mktemp("one") / "cache"
    subprocess.run([str(BIN / "extract"), *extract_argv(demo_root, tiny_models, reference)[1:]], env=RANK_ENV,
                   check=True, capture_output=True, timeout=300)
    return reference


@pytest.mark.slow
def test_two_ranks_finish_a_one_process_store_to_the_one_process_bytes(demo_root, tiny_models, one_process_store,
                                                                      tmp_path):
    """A store started by one process (first 5 clips) is finished by two ranks, to the bytes of one process alone.
    (A store begun by two ranks: test_two_rank_extraction_of_clips_of_different_lengths_is_the_one_process_store.)"""
    from mmfer.core.store import open_store

    resumed = tmp_path / "resumed" / "cache"
    subprocess.run([str(BIN / "extract"), *extract_argv(demo_root, tiny_models, resumed)[1:], "--limit", "5"],
                   env=RANK_ENV, check=True, capture_output=True, timeout=300)
    assert (open_store(resumed).entry("video").statuses() != 0).sum() == 5
    result = torchrun(2, extract_argv(demo_root, tiny_models, resumed), tmp_path)
    assert result.stdout.count("extract: 27 done, 5 skipped, 0 failed") == 1, result.stdout   # one summary, rank 0's
    assert_same_store(resumed, one_process_store)


KILLED_AFTER = 3   # rank 1 is killed -9 right after writing its 3rd clip (core/faults.py clip_done:3)


@pytest.mark.slow
def test_kill_9_of_one_rank_then_a_rerun_is_bitwise_the_one_process_store(demo_root, tiny_models, one_process_store,
                                                                          tmp_path):
    from mmfer.core.store import LOCK_FILE, ClipStatus, open_store, writer_lock_holder

    out = tmp_path / "killed" / "cache"
    lock_file = out.parent / f".cache{LOCK_FILE}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
           str(BIN / "extract"), *extract_argv(demo_root, tiny_models, out)[1:]]
    env = {**RANK_ENV, "MMFER_CRASH_AT": f"clip_done:{KILLED_AFTER}", "MMFER_FAULT_RANK": "1"}
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert "extract: " not in killed.stdout                                          # no summary from a broken group
    # torchrun's report: rank 1 died of the kill, then torchrun stopped the surviving rank 0 with SIGTERM
    ends = {int(rank): (int(code), int(pid)) for rank, code, pid in re.findall(
        r"rank\s*: (\d) \(local_rank: \d\)\s*exitcode\s*: (-?\d+) \(pid: (\d+)\)", killed.stderr)}
    assert ends.keys() == {0, 1} and ends[1][0] == -signal.SIGKILL and ends[0][0] == -signal.SIGTERM, killed.stderr[-3000:]

    # rank 0 held the group's writer lock (its pid is in the lock file): it is gone, and the lock with it
    assert int(lock_file.read_text().split()[0]) == ends[0][1]   # "PID extract"
    assert not Path(f"/proc/{ends[0][1]}").exists(), "rank 0 outlived torchrun"
    assert writer_lock_holder(out) is None

    # rank 1's share (positions 1, 3, 5, ... of the 32 clips): its first 3 clips are done, the rest only PENDING/FAILED
    store = open_store(out)
    rank1 = [store.index_of(c) for c in store.clip_ids[1::2]]
    for modality in ("video", "audio"):
        statuses = store.entry(modality).statuses()[rank1]
        assert list(statuses[:KILLED_AFTER]) == [ClipStatus.DONE] * KILLED_AFTER, (modality, statuses)
        assert set(statuses[KILLED_AFTER:]) <= {ClipStatus.PENDING, ClipStatus.FAILED}, (modality, statuses)
    # done: both modalities (SIGTERM can stop rank 0 between a clip's video and audio status; the rerun redoes it)
    done = ((store.entry("video").statuses() == ClipStatus.DONE)
            & np.isin(store.entry("audio").statuses(), (ClipStatus.DONE, ClipStatus.MISSING))).sum()
    assert KILLED_AFTER <= done < 32, done

    # one plain process finishes the store (taking the lock the dead group left) to the reference's bytes
    rerun = subprocess.run([str(BIN / "extract"), *extract_argv(demo_root, tiny_models, out)[1:]], env=RANK_ENV,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"extract: {32 - done} done, {done} skipped, 0 failed" in rerun.stdout, rerun.stdout
    assert_same_store(out, one_process_store)


RECORD_SCRIPT = """
import json, os, sys
import torch
sys.path.insert(0, {tests!r})
from train_helpers import train_recording_inputs
from mmfer.core.config import train_config_with_preset
seen = train_recording_inputs(train_config_with_preset(json.loads(sys.argv[1])))
torch.save([{{k: b[k] for k in ("clip_ids", "has_audio", "has_video")}} for b in seen["train"]],
           os.path.join(sys.argv[2], "rank%s.pt" % os.environ["RANK"]))
"""


@pytest.mark.slow
def test_two_ranks_draw_their_own_modality_dropout(cache, tmp_path):
    """Modality dropout 0.5 under a real 2-rank torchrun: each rank's training batches (recorded with a forward
    hook) drop modalities by its own stream (seed, fold, epoch, rank), so the drop patterns of the two ranks'
    batches differ; with one stream for all ranks they were the same pattern at every step."""
    from synthetic_store import NO_AUDIO_CLIP

    script = tmp_path / "record.py"
    script.write_text(RECORD_SCRIPT.format(tests=str(Path(__file__).parent)))
    values = {**settings(*cache, batch_size=4, epochs=2), "out": str(tmp_path / "run"), "training.modality_dropout": 0.5}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           json.dumps(values), str(tmp_path)]
    result = subprocess.run(cmd, cwd=tmp_path, env=RANK_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    same, compared, dropped = 0, 0, 0
    for b0, b1 in zip(*ranks):   # step by step, batch position by position (clips with both modalities only)
        for i in range(min(len(b0["clip_ids"]), len(b1["clip_ids"]))):
            if NO_AUDIO_CLIP in (b0["clip_ids"][i], b1["clip_ids"][i]):
                continue
            drops = [(not bool(b["has_audio"][i]), not bool(b["has_video"][i])) for b in (b0, b1)]
            same += drops[0] == drops[1]
            compared += 1
            dropped += sum(d != (False, False) for d in drops)
    assert dropped > 0, "modality dropout dropped nothing"
    assert same < compared, f"both ranks drew the same modality-dropout masks at all {compared} positions"


@pytest.mark.slow
def test_two_rank_extraction_of_clips_of_different_lengths_is_the_one_process_store(tiny_models, tmp_path):
    """The demo's clips all last 1.5 s; these last 0.5 to 2.9 s. One plain process (2 threads, batch
    size 4) and 2 torchrun ranks (OMP_NUM_THREADS=1, batch size 1) write the same bytes."""
    from extract_helpers import write_varied_manifest

    manifest = write_varied_manifest(tmp_path / "clips")
    argv = ["extract", "--dataset", "manifest", "--manifest", str(manifest), "--preset", "tiny", "--device", "cpu",
            "--num-workers", "0", "--face-crop", "center", "--models-dir", str(tiny_models)]
    one = tmp_path / "one" / "cache"
    subprocess.run([str(BIN / "extract"), *argv[1:], "--out", str(one), "--batch-size", "4"], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}, capture_output=True, timeout=300)
    two = tmp_path / "two" / "cache"
    result = torchrun(2, [*argv, "--out", str(two), "--batch-size", "1"], tmp_path)
    assert result.stdout.count("extract: 6 done, 0 skipped, 0 failed") == 1, result.stdout   # one summary, rank 0's
    assert_same_store(two, one)
