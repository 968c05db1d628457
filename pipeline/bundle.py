"""The trained model(s) predict uses, from a run folder or an `mmfer export` folder.

`load_run_bundle` / `load_export_bundle` gather the fold weights, the resolved config, the feature
records (the cache entries' attributes: encoder identity, preprocessing, decode parameters) and the
run's evaluation. Nothing here loads an encoder or decodes a file (that is pipeline/predictor.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from mmfer.core.feature_spec import FeatureSpec

from mmfer.core.config import TrainConfig
from mmfer.core.errors import BadInputError
from mmfer.core.overrides import apply_overrides, flatten, leaf_fields
from mmfer.core.paths import recorded_candidates

if TYPE_CHECKING:   # the weights are torch tensors; an onnxruntime bundle has none (see load_export_bundle)
    import torch

log = logging.getLogger(__name__)

EXPORT_MANIFEST = "model.json"
EXPORT_FORMAT = "mmfer-model/1"
MODEL_SPEC_KEY = "model_spec"   # safetensors metadata key of an exported weights file: build_model's arguments (JSON)


@dataclass
class ModelBundle:
    """What predict needs: features (modality -> cache entry attrs, only the modalities the model reads),
    the resolved run config, fold names with their weights, and summary.json's evaluation (or {})."""

    source: str
    config: dict
    features: dict[str, dict]
    fold_names: list[str]
    states: list[dict[str, torch.Tensor]]   # [] when loaded for onnxruntime (the ONNX graphs hold the weights)
    evaluation: dict = field(default_factory=dict)
    model_spec: dict | None = None   # build_model's arguments; None for checkpoints saved before they carried it
    unfinished: str | None = None    # why the run is not a finished one (no summary.json), for the card and a warning
    store_path: str | None = None    # a run's feature store: the folder its encoder records are relative to
    encoder_files: dict[str, Path] = field(default_factory=dict)   # modality -> encoder copied into an export
    onnx_files: list[Path] = field(default_factory=list)           # per fold: its ONNX graph (export --onnx)
    onnx_encoders: dict[str, Path] = field(default_factory=dict)   # modality -> its encoder's ONNX (--onnx-encoders)

    @property
    def feature_spec(self) -> FeatureSpec:
        """What the model's inputs are made of (core/feature_spec.py): the featurizer predict builds."""
        return FeatureSpec.from_entries(self.features)

    @property
    def is_ensemble(self) -> bool:
        return len(self.fold_names) > 1

    def describe(self) -> str:
        if self.is_ensemble:
            return f"ensemble of {len(self.fold_names)} fold models ({', '.join(self.fold_names)}): mean of their probabilities"
        return f"fold model {self.fold_names[0]}"


def choose_folds(available: list[str], fold: str | None, ensemble: bool, where: str,
                 numbers: dict[str, int] | None = None) -> list[str]:
    """`fold` is a protocol fold number (as in train-fusion's --folds) or a fold name; neither given: the only
    fold, else all (an ensemble). `numbers` gives each trained fold's protocol number (`fold_numbers`).

    Raises:
        FileNotFoundError: no trained fold, or `fold` names or numbers a fold this run did not train.
    """
    if not available:
        raise FileNotFoundError(f"{where}: no trained fold models (<fold>/checkpoints/best.pt); has training finished?")
    if ensemble or fold is None:
        if fold is None and not ensemble and len(available) > 1:
            log.info("%s: %d fold models and no --fold: predicting with their ensemble", where, len(available))
        return list(available)
    if fold in available:
        return [fold]
    known = {name: number for name in available if (number := fold_number(name, numbers)) is not None}
    if fold.isdigit():   # with --seeds, every seed's model of that fold (their ensemble)
        hits = [name for name, number in known.items() if number == int(fold)]
        if hits:
            return hits
    trained = ", ".join(f"{n} (fold {known[n]})" if n in known else n for n in available)
    raise FileNotFoundError(f"{where}: fold {fold} was not trained in this run; it trained {trained} "
                            "(pass one of these protocol fold numbers or names)")


def fold_number(name: str, numbers: dict[str, int] | None = None) -> int | None:
    """The protocol fold number of fold `name`: from `numbers` (summary.json's protocol card), else from a
    `fold<N>` name; None when neither says."""
    if numbers and name in numbers:
        return int(numbers[name])
    return int(name[4:]) if name.startswith("fold") and name[4:].isdigit() else None


def run_fold_numbers(evaluation: dict) -> dict[str, int]:
    """{fold name: protocol fold number} of a run's summary.json (its protocol card)."""
    return {c["fold"]: int(c["fold_number"]) for c in evaluation.get("protocol_card", []) if "fold_number" in c}


def feature_records(cache_path: str | Path, fingerprints: dict[str, str | None]) -> dict[str, dict]:
    """The attrs of the cache entries a run read (modality -> attrs), picked by the run's fingerprints."""
    from mmfer.core.store import open_store

    store = open_store(cache_path, mode="r")
    return {m: json.loads(json.dumps(store.entry(m, fp).attrs)) for m, fp in fingerprints.items() if fp is not None}


def _run_folds(run_dir: Path, evaluation: dict) -> list[str]:
    names = [f["name"] for f in evaluation.get("protocol", [])]
    if not names:   # an unfinished run: every fold with a best checkpoint
        names = sorted(p.parent.parent.name for p in run_dir.glob("*/checkpoints/best.pt"))
    return [n for n in names if (run_dir / n / "checkpoints" / "best.pt").exists() or
            (run_dir / n / "checkpoints" / "best.prev.pt").exists()]


def recorded_store(config: dict, run_dir: str | Path) -> tuple[Path, list[Path]]:
    """(the feature store a run recorded it trained from, every place looked): relative to the run folder, as
    typed, resolved; the first that exists, else the first tried."""
    tried = recorded_candidates(config["cache"], config.get("cache_location"), Path(run_dir))
    return next((p for p in tried if p.exists()), tried[0]), tried


def own_store_path(bundle: ModelBundle) -> str:
    """The run's own feature store (`recorded_store`), whatever --cache the command reads: evaluate's overlap and
    --corrupt checks compare with it."""
    return str(recorded_store(bundle.config, bundle.source)[0])


def load_run_bundle(run_dir: str | Path, *, fold: str | None = None, ensemble: bool = False,
                    cache: str | None = None) -> ModelBundle:
    """Fold weights from `<run>/<fold>/checkpoints/best.pt`; the FeatureSpec from the checkpoint (runs trained before
    checkpoints carried it: from the run's cache, or `cache`).

    Raises:
        FileNotFoundError: no run, no such fold, or (an older run's) cache is gone.
        StoreError: the cache no longer holds the entries the run was trained on.
    """
    from mmfer.core.store import StoreError
    from mmfer.train.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml); pass the --out of train-fusion")
    summary_path = run_dir / "summary.json"
    evaluation = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    names = choose_folds(_run_folds(run_dir, evaluation), fold, ensemble, str(run_dir), run_fold_numbers(evaluation))
    checkpoints = [load_checkpoint(run_dir / n / "checkpoints" / "best.pt") for n in names]
    config = checkpoints[0]["config"]
    fingerprints = config["cache_fingerprints"]
    if cache:
        cache_path = Path(cache)
    else:   # as recorded: relative to the run folder, as typed (from this folder), resolved
        cache_path, tried = recorded_store(config, run_dir)
    carried = checkpoints[0].get("feature_spec")
    if carried is not None:   # the checkpoint says how its inputs are made: no store needed
        features = {m: attrs for m, attrs in carried.items() if fingerprints.get(m) is not None}
    elif not cache_path.exists():   # a Zarr folder or an HDF5 export; open_store says if it is neither
        where = f"--cache {cache}" if cache else "looked for at " + ", ".join(dict.fromkeys(str(p) for p in tried))
        raise FileNotFoundError(
            f"{cache_path}: the feature store run {run_dir} was trained from is gone ({where}), and predict needs its "
            "record of the encoders and preprocessing; pass --cache PATH if it moved, or use a model folder from `mmfer export`")
    else:
        features = feature_records(cache_path, fingerprints)
    for name, state in zip(names, checkpoints):
        if state["cache_fingerprints"] != fingerprints:
            raise StoreError(f"{run_dir}/{name}: trained on features {state['cache_fingerprints']}, "
                             f"{names[0]} on {fingerprints}; predict one fold at a time (--fold)")
    unfinished = None if summary_path.exists() else unfinished_note(run_dir, names, config)
    if unfinished:
        log.warning("%s: %s", run_dir, unfinished)
    return ModelBundle(str(run_dir), config, features, names, [c["model"] for c in checkpoints], evaluation,
                       checkpoints[0].get("model_spec"), unfinished, store_path=str(cache_path))


def unfinished_note(run_dir: Path, names: list[str], config: dict) -> str:
    """One line on a run without summary.json (killed or stopped before its test pass): where each fold stopped
    (the last line of its metrics.jsonl), that its weights are the best epoch so far, untested, and how to finish it."""
    max_epochs = config.get("training", {}).get("max_epochs", "?")
    where = []
    for name in names:
        lines = (run_dir / name / "metrics.jsonl").read_text().splitlines() if (run_dir / name / "metrics.jsonl").exists() else []
        epoch = json.loads(lines[-1]).get("epoch", "?") if lines else "?"
        where.append(f"{name} at epoch {epoch} of {max_epochs}")
    return (f"unfinished run: training stopped ({', '.join(where)}) before its test pass, so these are the best "
            f"weights so far and have no test scores; finish it with `mmfer train-fusion --out {run_dir} --resume` "
            "(same flags) and export again")


class ExportFolderError(BadInputError, ValueError):
    """An exported model folder that is damaged or names files outside itself (the message names the file)."""


def load_export_bundle(model_dir: str | Path, *, fold: str | None = None, ensemble: bool = False,
                       load_weights: bool = True) -> ModelBundle:
    """A folder written by `mmfer export` (see pipeline/export.py). It reads only its own files: a name in
    model.json that resolves outside the folder (`../`, an absolute path, a symlink) is refused, and so is a
    weights file that is not safetensors (a pickle is never loaded). `load_weights=False` (onnxruntime, whose graphs
    hold the weights) reads only each weights file's header, so neither this nor predict's ONNX path imports torch.

    Raises:
        FileNotFoundError: not an exported model folder, or no such fold.
        ExportFolderError: a file outside the folder, a pickle, or a file that does not parse.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    manifest_path = model_dir / EXPORT_MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{model_dir}: not an exported model (no {EXPORT_MANIFEST}); write one with `mmfer export`")
    manifest = _read_json(_inside(model_dir, EXPORT_MANIFEST, "the manifest"))
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise FileNotFoundError(f"{manifest_path}: format {found!r}, this code reads {EXPORT_FORMAT}")
    weights = {f["name"]: f["weights"] for f in manifest["folds"]}
    names = choose_folds(list(weights), fold, ensemble, str(model_dir),
                         {f["name"]: f["fold_number"] for f in manifest["folds"] if "fold_number" in f})
    config = _read_json(_inside(model_dir, manifest["config"], "config"))
    lfm2_dir = model_dir / "lfm2"
    if lfm2_dir.is_dir():   # an LFM2 config copied at export: build the architecture from it, no download
        config["model"]["fusion"]["pretrained_model"] = str(_inside(model_dir, "lfm2", "the LFM2 config folder"))
        _inside(model_dir, "lfm2/config.json", "the LFM2 config")
    features = _read_json(_inside(model_dir, manifest["features"], "features"))
    evaluation = _read_json(_inside(model_dir, manifest["evaluation"], "evaluation"))
    states, spec = [], None
    for n in names:
        path = _inside(model_dir, weights[n], f"fold {n} weights")
        _refuse_pickle(path)
        try:
            if load_weights:
                from safetensors.torch import load_file

                states.append(load_file(str(path)))
            if spec is None:
                with safe_open(str(path), framework="numpy") as handle:
                    spec = (handle.metadata() or {}).get(MODEL_SPEC_KEY)
        except SafetensorError as err:
            raise ExportFolderError(f"{path}: not a readable safetensors file ({err}); re-export the model") from err
    carried = manifest.get("encoders") or {}   # `mmfer export --include-encoders`: the encoders inside the folder
    encoder_files = {m: _inside(model_dir, name, f"the {m} encoder") for m, name in carried.items()}
    onnx = {f["name"]: f["onnx"] for f in manifest["folds"] if "onnx" in f}   # `mmfer export --onnx`
    onnx_files = [_inside(model_dir, onnx[n], f"fold {n} ONNX") for n in names if n in onnx]
    onnx_encoders = {m: _inside(model_dir, name, f"the {m} encoder's ONNX")
                     for m, name in (manifest.get("onnx_encoders") or {}).items()}
    unfinished = manifest.get("unfinished")
    if unfinished:
        log.warning("%s: exported from an %s", model_dir, unfinished)
    return ModelBundle(str(model_dir), config, features, names, states, evaluation,
                       json.loads(spec) if spec else None, unfinished, encoder_files=encoder_files,
                       onnx_files=onnx_files, onnx_encoders=onnx_encoders)


def _inside(model_dir: Path, name: object, what: str) -> Path:
    """`model_dir / name`, refused unless it resolves (symlinks followed) to a path inside the folder."""
    manifest = model_dir / EXPORT_MANIFEST
    if not isinstance(name, str) or not name:
        raise ExportFolderError(f"{manifest}: {what} must be a file name inside the folder, got {name!r}")
    path = model_dir / name
    resolved, root = path.resolve(), model_dir.resolve()
    if Path(name).is_absolute() or not resolved.is_relative_to(root):
        raise ExportFolderError(f"{manifest}: {what} {name!r} resolves to {resolved}, outside the model folder {root}; "
                                "an exported model reads only its own files (copy them in, or re-export with `mmfer export`)")
    return path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportFolderError(f"{path}: not valid JSON ({err}); re-export the model with `mmfer export`") from err


PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")   # pickle protocol >= 2, and torch.save's zip archive of pickles


def _refuse_pickle(path: Path) -> None:
    """mmfer never unpickles a model file: a pickle where safetensors belong is refused by name, before any
    loader could suggest `weights_only=False`."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(PICKLE_MAGIC):
        raise ExportFolderError(f"{path}: refused: a pickle (torch.save) file where safetensors weights belong; mmfer "
                                "never unpickles model files, which can run any code. Use a folder written by `mmfer export`")


def train_config(config: dict) -> TrainConfig:
    """A resolved run config (config.yaml / checkpoint) back into a TrainConfig; extra keys are left out."""
    known = {key for key, *_ in leaf_fields(TrainConfig)}
    return apply_overrides(TrainConfig(), {k: v for k, v in flatten(config).items() if k in known})
