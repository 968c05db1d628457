"""The cached read path: fp16 batches until the device, one vectorised collate, a thread budget."""

from __future__ import annotations

import os

import numcodecs.blosc
import numpy as np
import pytest
import torch
from synthetic_store import TV, make_store

from mmfer.train.dataset import (ClipDataset, EpochSampler, apply_thread_budget, collate_clips, make_loader, open_cache,
                                 resolve_compute_threads, to_device)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> ClipDataset:
    cache = open_cache(str(make_store(tmp_path_factory.mktemp("loader") / "cache", repetitions=1)),
                       use_video=True, use_audio=True)
    return ClipDataset(cache, list(cache.clips["clip_id"]))


def test_batches_stay_fp16_on_the_host_and_become_fp32_on_the_device(dataset):
    items = [dataset[i] for i in range(6)]
    batch = collate_clips(items, video_shape=dataset.video_shape, audio_dim=dataset.audio_shape[1])
    assert batch["video_tokens"].dtype == batch["video_pooled"].dtype == batch["audio_tokens"].dtype == torch.float16
    moved = to_device(batch, torch.device("cpu"))
    assert moved["video_tokens"].dtype == moved["audio_tokens"].dtype == torch.float32
    assert moved["labels"].dtype == torch.long and moved["audio_mask"].dtype == torch.bool
    for i, item in enumerate(items):   # the same numbers the per-clip host cast gave
        assert torch.equal(moved["video_tokens"][i], torch.from_numpy(item["video_tokens"].astype(np.float32)))
        n = len(item["audio_tokens"])
        assert torch.equal(moved["audio_tokens"][i, :n], torch.from_numpy(item["audio_tokens"].astype(np.float32)))
        assert moved["audio_mask"][i].sum() == n and not moved["audio_tokens"][i, n:].any()
    assert moved["frame_mask"].all() and moved["frame_mask"].shape == (6, TV)


def test_collate_mixes_clips_without_a_modality():
    video = np.arange(2 * 4 * 3, dtype=np.float16).reshape(2, 4, 3)
    items = [{"clip_id": "a", "label": 0, "has_video": False, "has_audio": True, "audio_tokens": np.ones((2, 5), np.float16)},
             {"clip_id": "b", "label": 1, "has_video": True, "has_audio": False, "video_tokens": video,
              "video_pooled": video.mean(1)}]
    batch = collate_clips(items)
    assert torch.equal(batch["video_tokens"][1], torch.from_numpy(video)) and not batch["video_tokens"][0].any()
    assert batch["frame_mask"].tolist() == [[False, False], [True, True]]
    assert batch["audio_mask"].tolist() == [[True, True], [False, False]]


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_workers_read_the_same_batches(dataset):
    sampler = EpochSampler(range(len(dataset)))
    batches = {}
    for workers in (0, 1):
        loader = make_loader(dataset, sampler, batch_size=8, num_workers=workers, seed=0, pin_memory=False)
        batches[workers] = list(loader)
    for a, b in zip(batches[0], batches[1]):
        assert a["clip_ids"] == b["clip_ids"] and torch.equal(a["video_tokens"], b["video_tokens"])
        assert a["video_tokens"].dtype == torch.float16


def test_thread_budget_fits_the_cores():
    cores = os.cpu_count() or 1
    assert resolve_compute_threads(3, 2) == 3
    assert resolve_compute_threads(0, 1) == max(1, cores - 1)
    assert resolve_compute_threads(0, 0) == cores and resolve_compute_threads(0, 64) == 1
    before = torch.get_num_threads(), numcodecs.blosc.get_nthreads(), numcodecs.blosc.use_threads
    try:
        assert apply_thread_budget(0, 1) == torch.get_num_threads() == max(1, cores - 1)
        assert numcodecs.blosc.get_nthreads() == 1 and numcodecs.blosc.use_threads is False
    finally:
        torch.set_num_threads(before[0])
        numcodecs.blosc.set_nthreads(before[1])
        numcodecs.blosc.use_threads = before[2]
