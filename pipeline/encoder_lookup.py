"""Where the encoders a trained model was made with are on this machine, for predict and evaluate alike.

In order: the --visual-encoder/--audio-encoder flag; the copy inside an export (`mmfer export --include-encoders`);
the recorded location (relative to the run's store, resolved: core/paths.py); a search of --models-dir /
$MMFER_MODELS (SigLIP2 folders by weights hash, .nemo files by name); the name as typed at extract, from this
working folder; last the recorded name as a hub id (read from the HF cache). The loaded weights are checked against the record afterwards
(predictor.compare_encoder), so a wrong candidate is refused, never used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mmfer.core.errors import BadInputError
from mmfer.core.paths import recorded_candidates

log = logging.getLogger(__name__)

MODELS_ENV = "MMFER_MODELS"   # folders (os.pathsep-separated) searched for encoders when --models-dir is not given
FLAGS = {"video": "--visual-encoder", "audio": "--audio-encoder"}
MAX_SEARCH_DEPTH = 4          # folders below a models dir that are searched


class EncoderNotFoundError(BadInputError, FileNotFoundError):
    """The encoder a model was trained with is nowhere this machine looked; the message says how to point at it."""


def how_to_point(modality: str) -> str:
    return (f"pass {FLAGS[modality]} PATH, or --models-dir DIR (or set ${MODELS_ENV}) to a folder that holds it, or "
            "use a model folder exported with `mmfer export --include-encoders`")


def describe(record: dict) -> str:
    encoder = record.get("encoder", {})
    return f"{encoder.get('name')} (weights sha256 {str(encoder.get('weights_sha256'))[:16]}…)"


def models_dirs(models_dir: str | None) -> list[Path]:
    if models_dir:
        return [Path(models_dir)]
    return [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]


def find_encoder(modality: str, record: dict, bundle, *, flag: str | None, models_dir: str | None) -> str:
    """The name or path to load the `modality` ("video"/"audio") encoder of `record` (a feature record) from.

    Raises:
        EncoderNotFoundError: it was a local folder or file when the features were made, and is found nowhere now.
    """
    if flag:
        return flag
    if modality in bundle.encoder_files:
        return str(bundle.encoder_files[modality])
    encoder = record.get("encoder", {})
    location = encoder.get("location")
    if bundle.store_path is None:   # an export: the store its records are relative to is not with it
        location = {k: v for k, v in (location or {}).items() if k != "relative"} or None
    typed = Path(encoder["name"])
    recorded = [p for p in recorded_candidates(typed, location, bundle.store_path or ".") if p != typed]   # where it was
    for path in recorded:
        if path.exists():
            return str(path)
    searched = models_dirs(models_dir)
    for folder in searched:
        found = search_models_dir(modality, encoder, folder)
        if found is not None:
            log.info("%s encoder %s: found by %s in %s", modality, encoder["name"], "weights hash" if modality == "video"
                     else "file name", found)
            return str(found)
    if typed.exists():   # the name as typed at extract, from this working folder: a guess, so it comes last
        return str(typed)
    tried = [*recorded, typed]
    if encoder.get("location") is not None:   # a local path at extract time, found nowhere now
        places = ", ".join(dict.fromkeys(str(p) for p in tried + searched))
        raise EncoderNotFoundError(f"{bundle.source}: cannot find the {modality} encoder the model was trained with, "
                                   f"{describe(record)}; looked at {places}. To fix it, {how_to_point(modality)}")
    return encoder["name"]   # a hub id: the loader reads it from the HF cache


def search_models_dir(modality: str, encoder: dict, folder: Path) -> Path | None:
    """A SigLIP folder under `folder` whose weights hash is the recorded one (same-named folders first), or a
    .nemo file of the recorded name (its weights are checked once loaded)."""
    if not folder.is_dir():
        return None
    name = Path(str(encoder.get("name", ""))).name
    if modality == "audio":
        files = [p for p in _walk(folder) if p.is_file() and p.suffix == ".nemo"]
        return next((p for p in files if p.name == name), None)
    from mmfer.extract.visual import EncoderLoadError, _hash_files, _weight_files

    folders = sorted({p.parent for p in _walk(folder) if p.name == "config.json"}, key=lambda p: p.name != name)
    for candidate in folders:
        try:
            if _hash_files(_weight_files(str(candidate), True, None)) == encoder.get("weights_sha256"):
                return candidate
        except (EncoderLoadError, OSError):
            continue
    return None


def _walk(folder: Path) -> list[Path]:
    out, level = [], [folder]
    for _ in range(MAX_SEARCH_DEPTH):
        level = [p for d in level for p in sorted(d.iterdir())] if level else []
        out += level
        level = [p for p in level if p.is_dir() and not p.is_symlink()]
    return out


def encoder_source(modality: str, record: dict, bundle) -> Path | None:
    """The local file or folder the encoder of `record` is in (for `mmfer export --include-encoders`), or None."""
    try:
        found = Path(find_encoder(modality, record, bundle, flag=None, models_dir=None))
    except EncoderNotFoundError:
        return None
    if found.exists():
        return found
    if modality == "video":   # a hub id: its snapshot folder in the HF cache
        try:
            from transformers.utils import cached_file

            revision = record["encoder"].get("revision")
            return Path(cached_file(str(found), "config.json", revision=revision, local_files_only=True)).parent
        except OSError:
            return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(str(found), f"{str(found).split('/')[-1]}.nemo")
    return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None
