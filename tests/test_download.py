"""`mmfer download` and the data home, without the internet.

A real HTTP server on 127.0.0.1 (http.server in a thread) plays Zenodo (the record's JSON, zips of the demo's
real RAVDESS-named clips with their md5s, Range requests, a dropped connection, a wrong checksum) and GitHub
(the tree API, git-lfs pointer files, the lfs media host). The commands run through the real CLI handler.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from train_helpers import write_folds

from mmfer.data import sources
from mmfer.data.crema_d import scan_crema_d
from mmfer.data.download import MARKER, git_blob_sha1
from mmfer.data.ravdess import scan_ravdess
from mmfer.pipeline.cli import build_parser, main
from mmfer.core.data_home import data_home, dataset_root

RECORD = f"/zenodo/api/records/{sources.RAVDESS_RECORD_ID}"
CREMA = sources.CREMA_D_REPO


class FakeHost:
    """Serves `files` (path -> bytes; Range honoured); `drop_after[path] = n` hangs up after n bytes, once."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []   # (path, Range header) of every GET
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.fake = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gets(self, suffix: str) -> list[str | None]:
        """The Range header of each request for a path ending in `suffix`."""
        return [rng for path, rng in self.requests if path.endswith(suffix)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        host: FakeHost = self.server.fake
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        rng = self.headers.get("Range")
        host.requests.append((path, rng))
        body = host.files.get(path)
        if body is None:
            self.send_error(404)
            return
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        if start >= len(body) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        drop = host.drop_after.pop(path, None)
        if drop is not None:   # a dropped connection mid-file: part of the body, then the socket closes
            self.wfile.write(body[start:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def host(monkeypatch):
    fake = FakeHost()
    for name, prefix in (("zenodo", "/zenodo"), ("github_api", "/api"), ("github_raw", "/raw"), ("github_media", "/media-host")):
        monkeypatch.setenv(sources.HOSTS[name][0], fake.url + prefix)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture(scope="module")
def actor_zips(demo_root) -> dict[str, bytes]:
    """Video_Speech_Actor_NN.zip of the demo's 4 actors, holding Actor_NN/*.mp4 as the real zips do."""
    zips = {}
    for folder in sorted(Path(demo_root).glob("Actor_*")):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
            for clip in sorted(folder.glob("*.mp4")):
                zipped.write(clip, f"{folder.name}/{clip.name}")
        zips[f"Video_Speech_{folder.name}.zip"] = buffer.getvalue()
    return zips


def serve_record(host: FakeHost, zips: dict[str, bytes], bad_md5: tuple[str, ...] = ()) -> None:
    files = []
    for key, body in zips.items():
        md5 = hashlib.md5(body if key not in bad_md5 else b"other").hexdigest()
        files.append({"key": key, "size": len(body), "checksum": f"md5:{md5}",
                      "links": {"self": f"{host.url}{RECORD}/files/{key}/content"}})
        host.files[f"{RECORD}/files/{key}/content"] = body
    host.files[RECORD] = json.dumps({"id": int(sources.RAVDESS_RECORD_ID), "files": files}).encode()


def download(capsys, *argv: str) -> tuple[int, str]:
    code = main(["download", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---- RAVDESS ------------------------------------------------------------------------------------------


def test_a_dropped_connection_is_resumed_and_the_adapter_reads_the_unpacked_clips(host, actor_zips, tmp_path, capsys):
    serve_record(host, actor_zips)
    key = "Video_Speech_Actor_01.zip"
    half = len(actor_zips[key]) // 2
    host.drop_after[f"{RECORD}/files/{key}/content"] = half
    out = tmp_path / "ravdess"
    code, text = download(capsys, "ravdess", "--actors", "1-2", "--out", str(out))
    assert code == 0, text
    assert host.gets(f"{key}/content") == [None, f"bytes={half}-"]   # the second request resumes where it broke
    assert host.gets("Actor_03.zip/content") == []                    # --actors 1-2 fetches those two only
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["Actor_01", "Actor_02"]
    manifest = scan_ravdess(out)
    assert len(manifest) == 16 and set(manifest["actor"]) == {1, 2}
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.zip"))   # verified, unpacked, archive removed
    assert "2 fetched" in text


def test_a_part_file_left_by_an_interrupted_run_is_resumed(host, actor_zips, tmp_path, capsys):
    serve_record(host, actor_zips)
    key = "Video_Speech_Actor_03.zip"
    out = tmp_path / "ravdess"
    (out / ".downloads").mkdir(parents=True)
    (out / ".downloads" / f"{key}.part").write_bytes(actor_zips[key][:1000])
    code, text = download(capsys, "ravdess", "--actors", "3", "--out", str(out))
    assert code == 0, text
    assert host.gets(f"{key}/content") == ["bytes=1000-"]
    assert len(scan_ravdess(out)) == 8


def test_a_second_run_checks_and_skips(host, actor_zips, tmp_path, capsys):
    serve_record(host, actor_zips)
    out = tmp_path / "ravdess"
    assert download(capsys, "ravdess", "--actors", "1-2", "--out", str(out))[0] == 0
    host.requests.clear()
    code, text = download(capsys, "ravdess", "--actors", "1-2", "--out", str(out))
    assert code == 0 and "0 fetched, 2 already there" in text, text
    assert [path for path, _ in host.requests] == [RECORD]   # the record is read again; no file is
    assert len(scan_ravdess(out)) == 16


def test_a_bad_checksum_deletes_the_file_says_so_and_keeps_the_rest(host, actor_zips, tmp_path, capsys):
    serve_record(host, actor_zips, bad_md5=("Video_Speech_Actor_02.zip",))
    out = tmp_path / "ravdess"
    code, text = download(capsys, "ravdess", "--actors", "1-2", "--out", str(out))
    assert code == 1
    assert "Video_Speech_Actor_02.zip: md5 checksum mismatch" in text and "deleted the download" in text, text
    assert not list(out.rglob("*Actor_02*")) and (out / "Actor_01").is_dir()   # nothing of the bad file is kept
    serve_record(host, actor_zips)   # the host serves the right record now: the rerun fetches actor 2 only
    host.requests.clear()
    assert download(capsys, "ravdess", "--actors", "1-2", "--out", str(out))[0] == 0
    assert host.gets("Actor_01.zip/content") == [] and host.gets("Actor_02.zip/content") == [None]
    assert len(scan_ravdess(out)) == 16


def test_an_archive_member_outside_the_folder_is_refused(host, tmp_path, capsys):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("Actor_01/01-01-01-01-01-01-01.mp4", b"x")
        zipped.writestr("../escaped.mp4", b"x")
    serve_record(host, {"Video_Speech_Actor_01.zip": buffer.getvalue()})
    out = tmp_path / "data" / "ravdess"
    code, text = download(capsys, "ravdess", "--actors", "1", "--out", str(out))
    assert code == 1 and "member '../escaped.mp4' would land outside" in text, text
    assert not (tmp_path / "data" / "escaped.mp4").exists() and not (out / "Actor_01").exists()


def test_actors_must_be_ravdess_actors(tmp_path, capsys):
    assert main(["download", "ravdess", "--actors", "0-30", "--out", str(tmp_path / "r")]) == 2
    assert "RAVDESS has actors 1..24" in capsys.readouterr().err


# ---- CREMA-D ------------------------------------------------------------------------------------------


def serve_crema_d(host: FakeHost, contents: dict[str, bytes], bad_media: tuple[str, ...] = ()) -> None:
    """The repository tree, a git-lfs pointer for every media file, the media themselves; the csv is plain git."""
    tree = []
    for path, body in contents.items():
        stored = body if path.endswith(".csv") else (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(body).hexdigest()}\n"
            f"size {len(body)}\n").encode()
        tree.append({"path": path, "type": "blob", "sha": git_blob_sha1(stored), "size": len(stored)})
        host.files[f"/raw/{CREMA}/{sources.CREMA_D_REF}/{path}"] = stored
        host.files[f"/media-host/media/{CREMA}/{sources.CREMA_D_REF}/{path}"] = body if path not in bad_media else body[::-1]
    tree.append({"path": "VideoFlash", "type": "tree", "sha": "0" * 40})
    host.files[f"/api/repos/{CREMA}/git/trees/{sources.CREMA_D_REF}"] = json.dumps({"tree": tree, "truncated": False}).encode()


CREMA_D_CONTENTS = {
    "VideoFlash/1001_DFA_ANG_XX.flv": b"FLV video one" * 50,
    "VideoFlash/1002_IEO_HAP_HI.flv": b"FLV video two" * 70,
    "AudioWAV/1001_DFA_ANG_XX.wav": b"RIFF wav one" * 40,
    "AudioMP3/1001_DFA_ANG_XX.mp3": b"not read by the adapter",
    "VideoDemographics.csv": b"ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n",
}


def test_crema_d_is_fetched_through_its_lfs_pointers_into_the_adapters_layout(host, tmp_path, capsys):
    serve_crema_d(host, CREMA_D_CONTENTS, bad_media=("VideoFlash/1002_IEO_HAP_HI.flv",))
    out = tmp_path / "crema-d"
    code, text = download(capsys, "crema-d", "--out", str(out))
    assert code == 1 and "1002_IEO_HAP_HI.flv: sha256 checksum mismatch" in text, text
    assert not (out / "VideoFlash" / "1002_IEO_HAP_HI.flv").exists() and not list(out.rglob("*.part"))
    assert not host.gets(".mp3") and not (out / "AudioMP3").exists()     # only what data/crema_d.py reads
    serve_crema_d(host, CREMA_D_CONTENTS)
    host.requests.clear()
    code, text = download(capsys, "crema-d", "--out", str(out))
    assert code == 0 and "1 fetched, 3 already there" in text, text
    for path in ("VideoFlash/1001_DFA_ANG_XX.flv", "VideoFlash/1002_IEO_HAP_HI.flv", "AudioWAV/1001_DFA_ANG_XX.wav",
                 "VideoDemographics.csv"):
        assert (out / path).read_bytes() == CREMA_D_CONTENTS[path], path
    manifest = scan_crema_d(str(out))
    assert list(manifest["clip_id"]) == ["1001_DFA_ANG_XX", "1002_IEO_HAP_HI"] and manifest["gender"][0] == "male"
    assert (out / MARKER).is_file()


@pytest.mark.parametrize("dataset, where", [("dfew", "dfew-dataset.github.io"), ("mafw", "mafw-database.github.io")])
def test_dfew_and_mafw_say_where_to_ask_and_download_nothing(dataset, where, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMFER_DATA", str(tmp_path / "data"))
    code, text = download(capsys, dataset)
    assert code == 1 and where in text and sources.ACCESS[dataset][1] in text, text
    assert str(tmp_path / "data" / dataset) in text and not (tmp_path / "data").exists()


# ---- the data home ------------------------------------------------------------------------------------


def test_the_data_home_is_mmfer_data_else_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFER_DATA", str(tmp_path / "mine"))
    assert dataset_root("ravdess") == tmp_path / "mine" / "ravdess"
    monkeypatch.delenv("MMFER_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dataset_root("crema-d") == tmp_path / "xdg" / "mmfer" / "datasets" / "crema-d"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_home() == tmp_path / "home" / ".cache" / "mmfer" / "datasets"
    assert "MMFER_DATA" in build_parser()._subparsers._group_actions[0].choices["extract"].format_help()


@pytest.mark.parametrize("dataset, fill", [("ravdess", "`mmfer download ravdess`"), ("dfew", "dfew-dataset.github.io")])
def test_extract_without_root_names_the_folder_it_looked_in_and_how_to_fill_it(dataset, fill, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMFER_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / dataset).mkdir(parents=True)   # there, but empty
    out = tmp_path / "cache"
    assert main(["extract", "--dataset", dataset, "--out", str(out), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'data' / dataset}: no {dataset} data here") and fill in err, err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.slow
def test_the_users_commands_as_typed_on_a_downloaded_ravdess(host, actor_zips, tiny_models, tmp_path, monkeypatch, capsys):
    """`mmfer download ravdess`, then `extract --dataset ravdess --out cache/` and `train-fusion --cache cache/`,
    with no --root anywhere (plus the tests' tiny encoders, and one fold that 4 actors can fill)."""
    serve_record(host, actor_zips)
    monkeypatch.setenv("MMFER_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert download(capsys, "ravdess", "--actors", "1-4")[0] == 0
    assert len(scan_ravdess(tmp_path / "data" / "ravdess")) == 32
    tiny = ["--preset", "tiny", "--models-dir", str(tiny_models), "--face-crop", "center", "--num-workers", "0"]
    assert main(["extract", "--dataset", "ravdess", "--out", "cache/", *tiny]) == 0
    folds = write_folds(tmp_path / "folds.json", [{"name": "fold1", "test_actors": [1], "val_actors": [2]}])
    assert main(["train-fusion", "--cache", "cache/", "--device", "cpu", "--epochs", "1",
                 "split.protocol=file", f"split.fold_file={folds}"]) == 0
    summary = json.loads((tmp_path / "runs" / "fusion" / "summary.json").read_text())
    assert summary["folds"]["fold1"]["f1_macro"] >= 0
