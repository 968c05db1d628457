"""`mmfer download`: fetch a public dataset into the layout its adapter reads, verified, resumable, idempotent.

RAVDESS: the record's `Video_Speech_Actor_NN.zip` files (md5 from the record) -> `<out>/Actor_NN/*.mp4`.
CREMA-D: `VideoFlash/*.flv`, `AudioWAV/*.wav` (sha256 from each git-lfs pointer) and `VideoDemographics.csv`
(git's blob hash) -> the same paths under `<out>`. A marker, `<out>/.mmfer-download.jsonl`, has one line per
finished item; a rerun skips what it lists. Archives download to `<out>/.downloads/` and unpack to a
temporary folder that is renamed into place. DFEW and MAFW are not public: `access_message` says where to ask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mmfer.data import sources
from mmfer.data.fetch import ChecksumError, DownloadError, fetch_file, read_bytes, read_json
from mmfer.core.errors import BadInputError, MmferError
from mmfer.core.labels import RAVDESS_NUM_ACTORS
from mmfer.core.progress import Progress

log = logging.getLogger(__name__)

MARKER = ".mmfer-download.jsonl"
ARCHIVES = ".downloads"
NUM_PARALLEL = 8   # CREMA-D is ~15k small files: a few at a time hides each request's round trip
LFS_POINTER_START = b"version https://git-lfs.github.com/spec/"


@dataclass
class DownloadSummary:
    dataset: str
    out: Path
    num_fetched: int = 0
    num_skipped: int = 0
    failures: list[str] = field(default_factory=list)

    def format(self) -> str:
        line = (f"{self.dataset}: {self.num_fetched} fetched, {self.num_skipped} already there (verified earlier), "
                f"{len(self.failures)} failed, in {self.out}")
        return "\n".join([line, *(f"  failed: {f}" for f in self.failures)])


def parse_actors(text: str) -> list[int]:
    """'1-4,7' -> [1, 2, 3, 4, 7].

    Raises:
        BadInputError: not a list of actor numbers or ranges within 1..24.
    """
    actors: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, _, high = part.partition("-")
        if not (low.isdigit() and (high.isdigit() or not high)):
            raise BadInputError(f"--actors {text!r}: write actor numbers and ranges, e.g. 1-4 or 1,3,5-8")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= RAVDESS_NUM_ACTORS:
            raise BadInputError(f"--actors {text!r}: RAVDESS has actors 1..{RAVDESS_NUM_ACTORS}")
        actors.update(range(first, last + 1))
    return sorted(actors)


def access_message(dataset: str, out: Path) -> str:
    """Where to request a dataset that is not public, and the layout to unpack it into."""
    where, layout = sources.ACCESS[dataset]
    return (f"{dataset.upper()} is released on request only: {where}. Unpack it into {out} so that it holds "
            f"{layout}; then run `extract --dataset {dataset}`")


def how_to_fill(dataset: str, root: Path) -> str:
    """The one command (or request) that fills `root` with `dataset`."""
    if dataset in sources.ACCESS:
        return access_message(dataset, root)
    return f"fill it with `mmfer download {dataset}`, or pass --root DIR"


# ---- the marker: one JSON line per finished item ------------------------------------------------------


def read_marker(out: Path) -> dict[str, dict]:
    """{item: its last record}; a torn last line (a run killed mid-write) is ignored."""
    records: dict[str, dict] = {}
    path = out / MARKER
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "item" in record:
                records[record["item"]] = record
    return records


def _append_marker(out: Path, record: dict, lock: threading.Lock) -> None:
    with lock, (out / MARKER).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


# ---- RAVDESS ------------------------------------------------------------------------------------------


def download_ravdess(out: Path, actors: list[int] | None = None) -> DownloadSummary:
    """Fetch and unpack `Video_Speech_Actor_NN.zip` of `actors` (default: all 24) into `out`.

    Raises:
        DownloadError: the record cannot be read or lacks a wanted file.
    """
    record = read_json(sources.ravdess_record_url())
    files = record.get("files") or []
    if isinstance(files, dict):   # InvenioRDM's other serialization: {"entries": {key: file}}
        files = list((files.get("entries") or {}).values())
    published = {f.get("key"): f for f in files if isinstance(f, dict)}
    wanted = [sources.RAVDESS_ARCHIVE.format(actor=a) for a in (actors or range(1, RAVDESS_NUM_ACTORS + 1))]
    missing = [key for key in wanted if key not in published]
    if missing:
        raise DownloadError(f"{sources.ravdess_record_url()}: the record lists no {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    done, lock = read_marker(out), threading.Lock()
    summary = DownloadSummary("ravdess", out)
    with Progress(len(wanted), desc="ravdess", unit="file", logger=log, with_bar=False) as progress:
        for key in wanted:
            entry = published[key]
            algo, _, digest = str(entry.get("checksum", "")).partition(":")
            if algo not in hashlib.algorithms_available or not digest:
                raise DownloadError(f"{sources.ravdess_record_url()}: {key} has no checksum I can check ({entry.get('checksum')!r})")
            earlier = done.get(key)
            if earlier and earlier.get("checksum") == entry["checksum"] and all((out / d).is_dir() for d in earlier["unpacked"]):
                summary.num_skipped += 1
                progress.update()
                continue
            url = _content_link(entry) or sources.ravdess_file_url(key)
            archive = out / ARCHIVES / key
            log.info("%s: %.0f MB from %s", key, (entry.get("size") or 0) / 1e6, url)
            try:
                fetch_file(url, archive, algo=algo, digest=digest, size=entry.get("size"))
                unpacked = unpack_zip(archive, out)
            except (ChecksumError, DownloadError) as err:
                log.error("%s", err)
                summary.failures.append(str(err))
                progress.update()
                continue
            _append_marker(out, {"item": key, "checksum": entry["checksum"], "unpacked": unpacked}, lock)
            archive.unlink()   # unpacked and recorded: the clips are the copy that counts (halves the disk)
            summary.num_fetched += 1
            log.info("%s: verified (%s) and unpacked to %s", key, algo, ", ".join(unpacked))
            progress.update()
    return summary


def _content_link(entry: dict) -> str | None:
    """The record's link to a file's bytes: `links.content`, or a `links.self` that ends in /content (Zenodo's
    record JSON); in InvenioRDM's file listing `self` is the file's metadata instead."""
    links = entry.get("links") or {}
    if links.get("content"):
        return links["content"]
    return links["self"] if str(links.get("self", "")).endswith("/content") else None


def unpack_zip(archive: Path, out: Path) -> list[str]:
    """Unpack into a temporary folder under `out`, then rename each top-level entry into `out`.

    Raises:
        DownloadError: the archive is not a zip, or a member would land outside `out`.
    """
    tmp = out / f".unpack-{archive.stem}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                    raise DownloadError(f"{archive.name}: member {name!r} would land outside {out}; not unpacked")
            zipped.extractall(tmp)
    except zipfile.BadZipFile as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"{archive.name}: not a readable zip ({err})") from err
    names = []
    for top in sorted(tmp.iterdir()):
        if top.name == "__MACOSX":
            continue
        target = out / top.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        top.rename(target)
        names.append(top.name)
    shutil.rmtree(tmp)
    return names


# ---- CREMA-D ------------------------------------------------------------------------------------------


def download_crema_d(out: Path) -> DownloadSummary:
    """Fetch what data/crema_d.py reads from the CREMA-D repository into `out`, file by file.

    Raises:
        DownloadError: the repository's file list cannot be read.
    """
    tree = read_json(sources.crema_d_tree_url())
    if tree.get("truncated"):
        log.warning("%s: GitHub truncated the file list; a rerun cannot fetch what it left out", sources.crema_d_tree_url())
    entries = [e for e in tree.get("tree", []) if e.get("type") == "blob" and _wanted_crema_d(e.get("path", ""))]
    if not entries:
        raise DownloadError(f"{sources.crema_d_tree_url()}: no {', '.join(sources.CREMA_D_FOLDERS)} files listed")
    out.mkdir(parents=True, exist_ok=True)
    done, lock = read_marker(out), threading.Lock()
    summary = DownloadSummary("crema-d", out)
    todo = []
    for entry in entries:
        earlier = done.get(entry["path"])
        if earlier and earlier.get("checksum") == f"git:{entry['sha']}" and (out / entry["path"]).is_file():
            summary.num_skipped += 1
        else:
            todo.append(entry)
    with Progress(len(todo), desc="crema-d", unit="file", logger=log) as progress, \
            ThreadPoolExecutor(NUM_PARALLEL) as pool:
        for entry, error in zip(todo, pool.map(lambda e: _fetch_crema_d_file(e, out), todo)):
            if error is None:
                _append_marker(out, {"item": entry["path"], "checksum": f"git:{entry['sha']}"}, lock)
                summary.num_fetched += 1
            else:
                log.error("%s", error)
                summary.failures.append(error)
            progress.update()
    return summary


def _wanted_crema_d(path: str) -> bool:
    folder, _, name = path.rpartition("/")
    return path in sources.CREMA_D_FILES or (folder in sources.CREMA_D_FOLDERS and "/" not in name)


def _fetch_crema_d_file(entry: dict, out: Path) -> str | None:
    """Fetch one file of the repository tree into `out`; None when done, else the error's message."""
    path, dest = entry["path"], out / entry["path"]
    try:
        stored = read_bytes(sources.crema_d_raw_url(path))
        if git_blob_sha1(stored) != entry["sha"]:
            raise ChecksumError(f"{path}: git blob hash mismatch (tree {entry['sha']}, got {git_blob_sha1(stored)})")
        if not stored.startswith(LFS_POINTER_START):   # a plain git file: its blob hash was its check
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(stored)
            tmp.replace(dest)
            return None
        oid, size = parse_lfs_pointer(stored, path)
        fetch_file(sources.crema_d_media_url(path), dest, algo="sha256", digest=oid, size=size, show_bar=False)
        return None
    except MmferError as err:
        return str(err)


def git_blob_sha1(content: bytes) -> str:
    """Git's object id of a file's bytes (what the tree API lists as `sha`)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def parse_lfs_pointer(pointer: bytes, path: str) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a git-lfs pointer file.

    Raises:
        DownloadError: the pointer lacks `oid sha256:` or `size`.
    """
    fields = dict(line.split(" ", 1) for line in pointer.decode("utf-8", "replace").splitlines() if " " in line)
    oid, size = fields.get("oid", ""), fields.get("size", "")
    if not oid.startswith("sha256:") or not size.isdigit():
        raise DownloadError(f"{path}: not a git-lfs pointer with oid sha256 and size: {pointer[:200]!r}")
    return oid.removeprefix("sha256:"), int(size)
