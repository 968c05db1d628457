"""The feature store on real Zarr folders: round trip, honest 'done', checksums, leftovers, refusals."""

import shutil

import numpy as np
import pandas as pd
import pytest

from mmfer.core.store import (ArraySpec, ClipStatus, ClipTableChange, CorruptClipError, StoreError,
                                  check_clip_table, create_store, open_store, writer_lock)
from mmfer.core.store.verify import verify_store

SPECS = {"tokens": ArraySpec((4, 6, 8), "float16"), "pooled": ArraySpec((4, 8), "float16"),
         "timestamps_s": ArraySpec((4,), "float32"), "length": ArraySpec((), "int32")}


def make_table(n=3):
    return pd.DataFrame({"clip_id": [f"c{i}" for i in range(n)], "actor": list(range(1, n + 1)), "label": [0] * n})


def make_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"tokens": rng.standard_normal((4, 6, 8)), "pooled": rng.standard_normal((4, 8)),
            "timestamps_s": np.zeros(4), "length": np.int32(3)}


def test_round_trip_every_dtype_and_status(tmp_path):
    store = create_store(tmp_path / "cache", make_table(), {"dataset": "t"})
    entry = store.ensure_entry("video", "fp1", {"encoder": {"name": "x"}}, SPECS)
    arrays = make_arrays()
    record = entry.write_clip("c1", arrays, "10:20")
    assert record.shapes["tokens"] == (4, 6, 8)
    entry.mark("c2", ClipStatus.FAILED, "decode: broken")
    reopened = open_store(tmp_path / "cache").entry("video")
    assert list(reopened.statuses()) == [ClipStatus.PENDING, ClipStatus.DONE, ClipStatus.FAILED]
    assert reopened.reasons()[2] == "decode: broken" and reopened.sources()[1] == "10:20"
    got = reopened.read_clip("c1")
    np.testing.assert_array_equal(got["tokens"], arrays["tokens"].astype(np.float16))
    assert got["tokens"].dtype == np.float16 and got["length"] == 3
    np.testing.assert_array_equal(got["timestamps_s"], np.zeros(4, np.float32))   # all-zero data still has a chunk
    with pytest.raises(StoreError, match="c0: video status is PENDING"):
        reopened.read_clip("c0")


def test_flipped_byte_is_caught_and_verify_repairs(tmp_path):
    store = create_store(tmp_path / "cache", make_table(), {})
    entry = store.ensure_entry("video", "fp1", {}, SPECS)
    entry.write_clip("c0", make_arrays(), "s")
    entry.write_clip("c1", make_arrays(1), "s")
    chunk = entry.clip_chunk_files(0)[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptClipError, match="clip c0: video/tokens is damaged"):
        open_store(tmp_path / "cache").entry("video").read_clip("c0")
    report = verify_store(tmp_path / "cache", repair=True)
    assert not report.ok and report.damaged[0][:2] == ("video", "c0")
    assert open_store(tmp_path / "cache").entry("video").statuses()[0] == ClipStatus.FAILED
    assert verify_store(tmp_path / "cache").ok    # c1 still reads fine


def test_tensorstore_reads_an_extracted_store_as_we_do(demo_cache, tmp_path):
    """Our store is standard Zarr v3. tensorstore, a Zarr implementation independent of ours
    (and no longer an mmfer reader), opens the arrays extract wrote and reads every array of a done clip bitwise
    as stored, its tokens equal to what read_clip gives training; and a flipped byte fails its crc32c there too."""
    import tensorstore

    store = open_store(demo_cache)
    clip_id = store.clip_ids[3]
    for modality in ("video", "audio"):
        entry = store.entry(modality)
        assert entry.statuses()[3] == ClipStatus.DONE
        ours = entry.stored_arrays(3, [*entry.array_specs, "status"])   # (not reason/source: tensorstore has no string dtype)
        for name, want in ours.items():
            array = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(entry.path / name)}},
                                     read=True).result()
            assert array.shape == (len(store.clip_ids), *np.shape(want)), (modality, name)
            got = array[3].read().result()
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (modality, name)
        tokens = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(entry.path / "tokens")}},
                                  read=True).result()[3].read().result()
        np.testing.assert_array_equal(tokens, entry.read_clip(clip_id, ("tokens",))["tokens"])
    entry = store.entry("video")
    copy = tmp_path / "tokens"   # the fixture's store is shared: damage a copy of one array
    shutil.copytree(entry.path / "tokens", copy)
    chunk = copy / entry.clip_chunk_files(3)[list(entry.array_specs).index("tokens")].relative_to(entry.path / "tokens")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    array = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(copy)}}, read=True).result()
    with pytest.raises(ValueError, match="DATA_LOSS.*[Dd]igest mismatch"):   # its crc32c codec
        array[3].read().result()


def test_done_without_chunk_is_named(tmp_path):
    store = create_store(tmp_path / "cache", make_table(), {})
    entry = store.ensure_entry("audio", "fp", {}, SPECS)
    entry.write_clip("c2", make_arrays(), "s")
    entry.clip_chunk_files(2)[1].unlink()
    with pytest.raises(CorruptClipError, match="c2: marked done but audio/pooled has no data chunk"):
        entry.read_clip("c2")


def test_leftovers_are_cleaned(tmp_path):
    store = create_store(tmp_path / "cache", make_table(), {})
    entry = store.ensure_entry("video", "fp1", {}, SPECS)
    entry.write_clip("c0", make_arrays(), "s")
    entry.mark("c0", ClipStatus.PENDING, "")          # as if killed between data and status
    partial = entry.clip_chunk_files(1)[0].with_suffix(".abc.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half a chunk")
    (tmp_path / "cache" / ".staging-video-x").mkdir()
    report = verify_store(tmp_path / "cache")   # read only: found, left in place
    assert report.ok and report.num_leftovers_found >= 3 and report.num_leftovers_removed == 0
    assert partial.exists() and entry.clip_chunk_files(0)[0].exists() and "--repair" in report.format()
    report = verify_store(tmp_path / "cache", repair=True)
    assert report.ok and report.num_leftovers_removed >= 3
    assert not partial.exists() and not entry.clip_chunk_files(0)[0].exists()


def test_refusals(tmp_path):
    store = create_store(tmp_path / "cache", make_table(), {})
    store.ensure_entry("video", "fp1", {"encoder": {"name": "a"}}, SPECS)
    with pytest.raises(StoreError, match="use another --out, or --overwrite"):
        store.ensure_entry("video", "fp2", {"encoder": {"name": "b"}}, SPECS)
    store.ensure_entry("video", "fp2", {"encoder": {"name": "b"}}, SPECS, overwrite=True)
    assert store.fingerprints("video") == ["fp2"]
    with pytest.raises(StoreError, match=r"this run's manifest lacks 1 of them \(e.g. c2\)"):
        create_store(tmp_path / "cache", make_table(2), {})
    entry = store.entry("video")
    bad = make_arrays()
    bad["tokens"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        entry.write_clip("c0", bad, "s")
    assert entry.statuses()[0] == ClipStatus.PENDING
    with pytest.raises(StoreError, match="no feature store here"):
        open_store(tmp_path / "nothing")


def test_schema_version_mismatch_is_refused(tmp_path):
    import json
    create_store(tmp_path / "cache", make_table(), {})
    meta_path = tmp_path / "cache" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["schema_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="schema v99, this code reads v1"):
        open_store(tmp_path / "cache")


def test_second_writer_is_refused(tmp_path):
    with writer_lock(tmp_path / "cache"):
        with pytest.raises(StoreError, match="another extract is writing"):
            with writer_lock(tmp_path / "cache"):
                pass


def test_a_rerun_takes_the_manifests_labels_folds_and_new_clips(tmp_path, caplog):
    """The clip table is the manifest of the latest extract (a relabelled clip, a clip moved to
    another fold, reordered label names, rows in another order), clips keep their positions and data, and rows
    appended to the manifest are appended to the store (every entry's arrays grow, the new clips pending)."""
    path = tmp_path / "cache"
    table = make_table().assign(fold=[1, 2, 3], source="s")
    store = create_store(path, table, {"label_names": ["a", "b"]})
    entries = [store.ensure_entry("video", "fp1", {}, SPECS), store.ensure_entry("audio", "fp2", {}, SPECS)]
    for entry in entries:
        entry.write_clip("c0", make_arrays(0), "s")
        entry.write_clip("c1", make_arrays(1), "s")
    new = table.copy()
    new.loc[0, "label"], new.loc[2, "fold"] = 1, 5
    new = pd.concat([new.iloc[::-1], pd.DataFrame({"clip_id": ["c3"], "actor": [4], "label": [1], "fold": [2],
                                                   "source": ["s"]})], ignore_index=True)
    assert check_clip_table(path, new, ["b", "a"]) == ClipTableChange(2, ("fold", "label"), 1, True)
    assert open_store(path).clip_table["label"].tolist() == [0, 0, 0]        # the check wrote nothing
    with caplog.at_level("INFO", logger="mmfer.core.store"):
        create_store(path, new, {"label_names": ["b", "a"]})
    assert "clip table: 2 rows changed (fold, label), 1 clips added; label names changed" in caplog.text
    reopened = open_store(path, mode="r+")
    assert reopened.clip_ids == ["c0", "c1", "c2", "c3"] and reopened.attrs["label_names"] == ["b", "a"]
    assert dict(zip(reopened.clip_ids, reopened.clip_table["label"])) == {"c0": 1, "c1": 0, "c2": 0, "c3": 1}
    assert dict(zip(reopened.clip_ids, reopened.clip_table["fold"])) == {"c0": 1, "c1": 2, "c2": 5, "c3": 2}
    for modality in ("video", "audio"):
        entry = reopened.entry(modality)
        assert list(entry.statuses()) == [ClipStatus.DONE, ClipStatus.DONE, ClipStatus.PENDING, ClipStatus.PENDING]
        assert entry.sources() == ["s", "s", "", ""] and entry.reasons()[3] == ""
        np.testing.assert_array_equal(entry.read_clip("c1")["tokens"], make_arrays(1)["tokens"].astype(np.float16))
        entry.write_clip("c3", make_arrays(3), "s")
        np.testing.assert_array_equal(open_store(path).entry(modality).read_clip("c3")["pooled"],
                                      make_arrays(3)["pooled"].astype(np.float16))
    assert verify_store(path).ok
    caplog.clear()
    with caplog.at_level("INFO", logger="mmfer.core.store"):
        create_store(path, new, {"label_names": ["b", "a"]})                # the same manifest again
    assert "clip table: 0 rows changed, 0 clips added" in caplog.text
    with pytest.raises(StoreError, match=r"lacks 1 of them \(e.g. c1\)"):
        check_clip_table(path, new[new["clip_id"] != "c1"])


def test_a_kill_while_the_store_grows_leaves_a_store_that_reads_and_grows_again(tmp_path):
    """The arrays grow before the clip table is rewritten: killed in between (a real kill -9 of a child), the
    store reads as before (longer arrays, the old table) and the next run grows it to the new clips."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "cache"
    store = create_store(path, make_table(), {})
    store.ensure_entry("video", "fp1", {}, SPECS).write_clip("c1", make_arrays(1), "s")
    store.ensure_entry("audio", "fp2", {}, SPECS)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import pandas as pd
        from mmfer.core.store import create_store
        table = pd.DataFrame({{"clip_id": ["c0", "c1", "c2", "c3"], "actor": [1, 2, 3, 4], "label": [0, 0, 0, 0]}})
        create_store({str(path)!r}, table, {{}})
        """)], env={**os.environ, "MMFER_CRASH_AT": "entry_resized"}, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    killed = open_store(path)
    assert killed.clip_ids == ["c0", "c1", "c2"]                        # the table was not rewritten
    assert list(killed.entry("video").statuses()) == [ClipStatus.PENDING, ClipStatus.DONE, ClipStatus.PENDING]
    assert verify_store(path).ok
    grown = create_store(path, make_table(4), {})
    assert grown.clip_ids == ["c0", "c1", "c2", "c3"] and len(grown.entry("audio").statuses()) == 4
    assert grown.entry("video").read_clip("c1")["length"] == 3
