"""Where each dataset is published: the only module that names the real hosts (`mmfer download` reads it).

RAVDESS: Zenodo record 1188976. `GET {zenodo}/api/records/1188976` answers JSON whose `files[]` give `key`
(`Video_Speech_Actor_NN.zip`), `size`, `checksum` ("md5:<hex>") and `links.self` (the file's content URL).
CREMA-D: the GitHub repository CheyneyComputerScience/CREMA-D, media under git-lfs. The file list is one
`GET {github_api}/repos/{repo}/git/trees/{ref}?recursive=1`; each media path is a pointer file on
`{github_raw}/{repo}/{ref}/{path}` (`oid sha256:<hex>`, `size N`) and its content is on
`{github_media}/media/{repo}/{ref}/{path}` (GitHub's own resolver of lfs pointers; simpler than the lfs
batch API and the same bytes). DFEW and MAFW are released on signed request only: ACCESS names where.

Each host's base URL can be overridden by an environment variable (HOSTS: MMFER_ZENODO_URL,
MMFER_GITHUB_API_URL, MMFER_GITHUB_RAW_URL, MMFER_GITHUB_MEDIA_URL), e.g. a mirror, or the tests' fake
host on 127.0.0.1; nothing else changes with it.
"""

from __future__ import annotations

import os

HOSTS = {   # name -> (environment variable that overrides it, the real host)
    "zenodo": ("MMFER_ZENODO_URL", "https://zenodo.org"),
    "github_api": ("MMFER_GITHUB_API_URL", "https://api.github.com"),
    "github_raw": ("MMFER_GITHUB_RAW_URL", "https://raw.githubusercontent.com"),
    "github_media": ("MMFER_GITHUB_MEDIA_URL", "https://media.githubusercontent.com"),
}

RAVDESS_RECORD_ID = "1188976"
RAVDESS_ARCHIVE = "Video_Speech_Actor_{actor:02d}.zip"   # unpacks to Actor_NN/ (full-AV and video-only speech clips)

CREMA_D_REPO = "CheyneyComputerScience/CREMA-D"
CREMA_D_REF = "master"
CREMA_D_FOLDERS = ("VideoFlash", "AudioWAV")              # what data/crema_d.py reads, besides the csv below
CREMA_D_FILES = ("VideoDemographics.csv",)                # plain git files (not lfs)

ACCESS = {
    "dfew": ("https://dfew-dataset.github.io (sign the license agreement; the authors mail a download link)",
             "EmoLabel_DataSplit/train(single-labeled)/set_{1..5}.csv and test(single-labeled)/set_{1..5}.csv; "
             "clips in Clip/original/{video_name:05d}.mp4"),
    "mafw": ("https://mafw-database.github.io/MAFW (sign the license agreement; the authors mail a download link)",
             "Train & Test Set/single/no_caption/set_{1..5}/{train,test}.txt; clips in data/clips/"),
}


def host_url(name: str) -> str:
    """The base URL of host `name` (no trailing slash): its environment variable when set, else the real host."""
    variable, default = HOSTS[name]
    return (os.environ.get(variable, "").strip() or default).rstrip("/")


def ravdess_record_url() -> str:
    return f"{host_url('zenodo')}/api/records/{RAVDESS_RECORD_ID}"


def ravdess_file_url(key: str) -> str:
    """The content URL of one file of the record (used when the record JSON gives no link)."""
    return f"{host_url('zenodo')}/api/records/{RAVDESS_RECORD_ID}/files/{key}/content"


def crema_d_tree_url() -> str:
    return f"{host_url('github_api')}/repos/{CREMA_D_REPO}/git/trees/{CREMA_D_REF}?recursive=1"


def crema_d_raw_url(path: str) -> str:
    """The file as git stores it: the lfs pointer for media, the content for plain files."""
    return f"{host_url('github_raw')}/{CREMA_D_REPO}/{CREMA_D_REF}/{path}"


def crema_d_media_url(path: str) -> str:
    """The content of an lfs file."""
    return f"{host_url('github_media')}/media/{CREMA_D_REPO}/{CREMA_D_REF}/{path}"
