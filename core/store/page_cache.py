"""Drop a store's files from the kernel's page cache, so the next read comes from the disk (the bench's cold reads).

Works on either backend's files (a Zarr folder or an HDF5 export); it reads no store format.
"""

from __future__ import annotations

import os
from pathlib import Path


def drop_from_page_cache(path: str | os.PathLike) -> int:
    """Ask the kernel to forget the cached pages of a store's files (a Zarr folder, or an HDF5 file): fsync, then
    posix_fadvise(POSIX_FADV_DONTNEED) on every file (no root needed). Returns the number of files."""
    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)   # dirty pages stay cached whatever fadvise says
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return len(files)
