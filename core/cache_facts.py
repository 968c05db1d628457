"""What a command knows about a feature store, read once: `read_cache_facts(path)` opens the store one time.

`CacheFacts` holds the store path and its open handle, the clip table, label names (class count), the
dataset that made it, the preset extract recorded and its entries with their attrs (the extract settings;
each entry is opened on first ask, so a damaged entry a run does not read stops nothing). The cache's
say in a training config lives here only: `default_preset` (defaults <- the store's preset <- the user's
values) and `settle` (model.num_classes from the label names, split.protocol `auto` resolved). train-fusion,
tune and train take this object instead of reopening the store for each fact.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mmfer.core.config import TrainConfig
from mmfer.core.errors import ConfigError
from mmfer.core.labels import store_label_names
from mmfer.core.splits import resolve_protocol
from mmfer.core.store import MODALITIES, FeatureEntry, FeatureStore, StoreError, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheFacts:
    """One feature store as a command reads it (see the module docstring)."""

    path: str
    store: FeatureStore = field(repr=False, compare=False)   # the one open handle (this process only)
    clip_table: pd.DataFrame = field(repr=False, compare=False)   # every clip, as extract wrote the table
    label_names: tuple[str, ...]        # C class names, in class-id order
    dataset: str | None                 # the adapter that made the store (ravdess, crema-d, manifest, dfew, ...)
    preset: str | None                  # the --preset extract ran with (None: a store that records none)
    fingerprints: dict[str, list[str]]  # modality -> the fingerprints of its entries
    _entries: dict = field(default_factory=dict, repr=False, compare=False)   # (modality, fingerprint) -> FeatureEntry

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def entry(self, modality: str, fingerprint: str | None = None) -> FeatureEntry:
        """The entry of `modality` with `fingerprint` (None: the only one), opened once through the held handle.

        Raises:
            StoreError: no such entry, several and no fingerprint, or a damaged one.
        """
        if fingerprint is None and len(self.fingerprints.get(modality, [])) == 1:
            fingerprint = self.fingerprints[modality][0]
        key = (modality, fingerprint)
        if key not in self._entries:
            self._entries[key] = self.store.entry(modality, fingerprint)   # raises, naming the choices
        return self._entries[key]

    def entry_attrs(self, modality: str, fingerprint: str | None = None) -> dict:
        """The attrs of one entry (encoder identity, decoding settings, stored arrays and their shapes): the
        place feature dims are read from; the FeatureSpec builds from these. `fingerprint` None: the only one."""
        return self.entry(modality, fingerprint).attrs

    def protocol(self, requested: str) -> str:
        """split.protocol `requested` (`auto` or a named one) for this store (core/splits.py `resolve_protocol`)."""
        return resolve_protocol(requested, dataset=self.dataset, clips=self.clip_table)

    def default_preset(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """`overrides` with the preset this store was extracted with, unless they choose one (`--preset`)."""
        if "preset" in overrides or self.preset is None or self.preset == TrainConfig.preset:
            return overrides
        log.info("preset %s: the preset %s was extracted with (--preset full overrides it)", self.preset, self.path)
        return {**overrides, "preset": self.preset}

    def settle(self, cfg: TrainConfig) -> TrainConfig:
        """`cfg` with model.num_classes = the number of label names and split.protocol `auto` resolved to the
        dataset's protocol (both recorded in config.yaml). Idempotent.

        Raises:
            ConfigError: training.class_weights with another count than the classes; a protocol of another
                dataset's actors.
        """
        names = self.label_names
        if cfg.model.num_classes != len(names):
            log.info("%s: %d classes (%s); model.num_classes set to %d", self.path, len(names), ", ".join(names), len(names))
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(names)))
        weights = cfg.training.class_weights
        if weights not in ("none", "auto") and len(weights.split(",")) != len(names):
            raise ConfigError(f"training.class_weights has {len(weights.split(','))} numbers, but {self.path} has "
                              f"{len(names)} classes ({', '.join(names)}); give one number per class, or auto / none")
        protocol = self.protocol(cfg.split.protocol)
        if protocol != cfg.split.protocol:
            cfg = dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, protocol=protocol))
        return cfg


def read_cache_facts(path: str) -> CacheFacts:
    """Open the store at `path` (a Zarr folder or an HDF5 export) once and read its facts.

    Raises:
        StoreError: no store there, or another schema version.
    """
    store = open_store(path, mode="r")
    return CacheFacts(str(path), store, store.clip_table, store_label_names(store.attrs), store.attrs.get("dataset"),
                      store.attrs.get("preset"), {m: store.fingerprints(m) for m in MODALITIES})


def read_cache_facts_if_any(path: str) -> CacheFacts | None:
    """`read_cache_facts`, or None when there is no readable store at `path` (whoever reads the features
    next reports why)."""
    try:
        return read_cache_facts(path)
    except (StoreError, FileNotFoundError):
        return None
