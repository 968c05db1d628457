"""Where the encoders a trained model was made with are on this machine, for predict and evaluate alike.

In order: the --visual-encoder/--audio-encoder flag; the copy inside an export (`mmfer export --include-encoders`);
the recorded location (relative to the run's store, resolved: core/paths.py); a search of --models-dir /
$MMFER_MODELS (each encoder kind's own `find_local`: SigLIP2 and transformers FastConformer folders by weights hash, .nemo files by name); the name as typed at extract, from this
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
            log.info("%s encoder %s: found in %s", modality, encoder["name"], found)
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
    """The recorded encoder under `folder`, as its kind finds it (extract/encoders/: `find_local`), or None."""
    from mmfer.extract.encoders import kind_module

    return kind_module(encoder, modality).find_local(encoder, folder) if folder.is_dir() else None


def encoder_source(modality: str, record: dict, bundle) -> Path | None:
    """The local file or folder the encoder of `record` is in (for `mmfer export --include-encoders`), or None."""
    try:
        found = Path(find_encoder(modality, record, bundle, flag=None, models_dir=None))
    except EncoderNotFoundError:
        return None
    if found.exists():
        return found
    from mmfer.extract.encoders import kind_module   # a hub id: its copy in the local hub cache

    return kind_module(record["encoder"], modality).cached_copy(str(found), record["encoder"].get("revision"))
