"""Flags from the config dataclasses: one flag per field, its help the field's docstring and default.

Every command's parser is built here (`add_config_flags`) and every command resolves its config here
(`resolve_config`), so a default lives only in core/config.py. Layering: defaults <- preset <-
--config YAML <- flags <- key=value overrides. What the cache says (its preset, class count, protocol)
comes from core/cache_facts.py, read once.
"""

from __future__ import annotations

import argparse
import logging
import typing
from typing import TYPE_CHECKING, Any

from mmfer.core.config import TrainConfig, train_config_with_preset
from mmfer.core.overrides import apply_overrides, leaf_fields, load_yaml_overrides, parse_key_values

if TYPE_CHECKING:
    from mmfer.core.cache_facts import CacheFacts

log = logging.getLogger("mmfer")

# Short flags users type, mapped to their config keys (the long dotted form works too).
TRAIN_ALIASES = {
    "epochs": "training.max_epochs",
    "variant": "model.variant",
    "batch-size": "training.batch_size",
}


def _flag(key: str) -> str:
    return "--" + (key.replace("_", "-") if "." not in key else key)


def add_config_flags(parser: argparse.ArgumentParser, cfg_type: type, aliases: dict[str, str] | None = None,
                     skip: tuple[str, ...] = (), prefix: str = "cfg:", layered: bool = True) -> None:
    """One flag per config field, its help the field's docstring and default.

    `prefix` keeps two configs of one command apart (a study's own settings and its base TrainConfig);
    `layered` says whether the group also takes --config YAML and key=value overrides.
    """
    alias_of = {v: k for k, v in (aliases or {}).items()}
    title = f"{cfg_type.__name__} (also settable as key=value or in --config YAML)" if layered else cfg_type.__name__
    group = parser.add_argument_group(title)
    for key, annotation, default, doc in leaf_fields(cfg_type):
        if key in skip:
            continue
        names = [_flag(key)] + ([f"--{alias_of[key]}"] if key in alias_of else [])
        kwargs: dict[str, Any] = {"dest": prefix + key, "default": argparse.SUPPRESS, "help": f"{doc} (default: {default})"}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = _metavar(annotation)
        group.add_argument(*names, **kwargs)


def _metavar(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(annotation))) + "}"
    names = {int: "N", float: "X", str: "STR"}
    for arg in (annotation, *typing.get_args(annotation)):
        if arg in names:
            return names[arg]
    return "VALUE"


def resolve_config(cfg_type: type, args: argparse.Namespace, prefix: str = "cfg:", layered: bool = True) -> Any:
    """Defaults <- preset (TrainConfig: --preset, else the one the cache was extracted with) <- --config YAML
    <- flags <- key=value overrides. Only a `layered` config takes the YAML file and the overrides."""
    overrides = _overrides(cfg_type, args, prefix, layered)
    if cfg_type is TrainConfig:
        from mmfer.core.cache_facts import read_cache_facts_if_any   # here: --help reads no store (zarr, pandas)

        facts = read_cache_facts_if_any(str(overrides.get("cache", TrainConfig.cache)))
        return _check_device(train_config_with_preset(facts.default_preset(overrides) if facts else overrides))
    return _check_device(apply_overrides(cfg_type(), overrides))


def resolve_train_config(args: argparse.Namespace) -> tuple[TrainConfig, CacheFacts | None]:
    """train-fusion's config and its cache, read once (None: no store at --cache yet; training says so):
    `resolve_config`'s layers, then the cache's class count and protocol (`CacheFacts.settle`)."""
    from mmfer.core.cache_facts import read_cache_facts_if_any

    overrides = _overrides(TrainConfig, args, "cfg:", True)
    facts = read_cache_facts_if_any(str(overrides.get("cache", TrainConfig.cache)))
    if facts is None:
        return _check_device(train_config_with_preset(overrides)), None
    return facts.settle(_check_device(train_config_with_preset(facts.default_preset(overrides)))), facts


def _overrides(cfg_type: type, args: argparse.Namespace, prefix: str, layered: bool) -> dict[str, Any]:
    """The user's values, in layer order: --config YAML <- flags <- key=value overrides."""
    overrides: dict[str, Any] = {}
    if layered and getattr(args, "config", None):
        overrides.update(load_yaml_overrides(args.config, cfg_type))
    overrides.update({k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)})
    if layered:
        overrides.update(parse_key_values(getattr(args, "overrides", None) or []))
    return overrides


def _check_device(cfg: Any) -> Any:
    """A --device this machine cannot give is refused here, at the door, before anything is read or written."""
    device = getattr(cfg, "device", "auto")
    if isinstance(device, str) and device != "auto":
        from mmfer.core.device import resolve_device

        resolve_device(device)
    return cfg


def add_common_arguments(parser: argparse.ArgumentParser, with_overrides: bool = True,
                         example: str = "training.max_epochs=30") -> None:
    """-v, and (with_overrides) --config and key=value; `example` is an override this command takes."""
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    if with_overrides:
        parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values (flags and key=value win).")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"Config overrides, e.g. {example}.")
