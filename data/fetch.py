"""HTTP for `mmfer download`, standard library only: JSON and small files, and big files that resume and verify.

`fetch_file` downloads to `<dest>.part`, resumes it with an HTTP Range request (after a dropped connection,
within the run or in the next one), checks the published checksum and only then renames it to `dest`;
a wrong checksum deletes the download and raises ChecksumError. What a dataset is made of lives in
data/download.py, where it is published in data/sources.py.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path

from mmfer.core.errors import MmferError

log = logging.getLogger(__name__)

USER_AGENT = "mmfer-download (+https://github.com; urllib)"   # GitHub's API refuses requests without one
TIMEOUT_S = 60.0            # per socket operation: a stalled host fails within a minute, then the run resumes
NUM_TRIES = 4               # a dropped connection is resumed this many times in one run before giving up
CHUNK_BYTES = 1 << 20


class DownloadError(MmferError):
    """A host refused or kept dropping a download; what finished is kept, and a rerun resumes the rest."""


class ChecksumError(MmferError):
    """A downloaded file does not match its published checksum (the file was deleted)."""


def _open(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)   # noqa: S310 (http/https URLs from data/sources.py)


def read_bytes(url: str) -> bytes:
    """The whole body of a small resource (a record's JSON, a pointer file).

    Raises:
        DownloadError: the host answered an error or could not be reached.
    """
    try:
        with _open(url) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: the host answered HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise DownloadError(f"{url}: could not read it ({err}); check the connection and run the command again") from err


def read_json(url: str) -> dict:
    body = read_bytes(url)
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise DownloadError(f"{url}: the answer is not JSON ({err})") from err


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file (algo: md5, sha256, ...), read in chunks."""
    digest = hashlib.new(algo)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_file(url: str, dest: Path, *, algo: str, digest: str, size: int | None = None, show_bar: bool = True) -> bool:
    """Make `dest` hold the file at `url` whose `algo` digest is `digest`; True when it was downloaded now.

    A `dest` that already matches is kept (False). A `<dest>.part` left by an earlier run is resumed.

    Raises:
        ChecksumError: the finished download does not match `digest` (it is deleted).
        DownloadError: the host refused, or dropped the connection NUM_TRIES times (the .part is kept).
    """
    if dest.is_file() and file_digest(dest, algo) == digest:
        return False
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, NUM_TRIES + 1):
        try:
            _get_into(url, part, size, dest.name, show_bar)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code < 500 and err.code != 416:
                raise DownloadError(f"{url}: the host answered HTTP {err.code} {err.reason}") from err
            have = part.stat().st_size if part.exists() else 0
            if attempt == NUM_TRIES:
                raise DownloadError(f"{dest.name}: the connection dropped {NUM_TRIES} times (last: {err}); kept "
                                    f"{have} bytes in {part}; run the command again to resume") from err
            log.warning("%s: the connection dropped at %d bytes (%s); resuming (try %d of %d)",
                        dest.name, have, err, attempt + 1, NUM_TRIES)
    found = file_digest(part, algo)
    if found != digest:
        part.unlink()
        raise ChecksumError(f"{dest.name}: {algo} checksum mismatch (published {digest}, downloaded {found}); "
                            "deleted the download; run the command again to fetch it anew")
    part.replace(dest)
    return True


def _get_into(url: str, part: Path, size: int | None, name: str, show_bar: bool) -> None:
    """Append the rest of `url` to `part` (a Range request when part has bytes already)."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:   # not a prefix of this file: start over
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    try:
        response = _open(url, {"Range": f"bytes={have}-"} if have else None)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:   # nothing left past `have`: the .part is whole (the checksum decides)
            return
        raise
    with response:
        if have and response.status != 206:   # the host ignored the range: take the whole file again
            log.info("%s: the host does not resume downloads; fetching it from the start", name)
            have = 0
        elif have and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise http.client.HTTPException(f"asked for bytes {have}- and got {response.headers.get('Content-Range')!r}")
        length = response.headers.get("Content-Length")
        total = size if size is not None else (have + int(length) if length and length.isdigit() else None)
        with part.open("ab" if have else "wb") as out, _bar(total, have, name, show_bar) as bar:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:   # http.client ends a read(n) quietly when the host hangs up early
        raise ConnectionError(f"the host closed the connection at {got} of {total} bytes")


def _bar(total: int | None, initial: int, name: str, show_bar: bool):
    """A tqdm bar in bytes on a terminal; a no-op bar otherwise."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, disable=not (show_bar and sys.stderr.isatty()))
