"""Command line: `mmfer <subcommand>`, plus the `extract` and `train-fusion` entry points.

Flags are generated from the config dataclasses (one source of defaults, shown in --help); a
`--config FILE.yaml` and trailing `key=value` overrides layer on top, in that order. Stage modules
are imported inside each subcommand, so `train-fusion` never loads NeMo or SigLIP2. This is the one
layer that may use both stages (e.g. `predict` composes extract's encoders with train's model).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from typing import Any, Callable

from mmfer.pipeline.config import TRAIN_PRESETS, DemoConfig, ExtractConfig, TrainConfig
from mmfer.pipeline.overrides import (
    ConfigError, apply_overrides, leaf_fields, load_yaml_overrides, parse_key_values)

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
                     skip: tuple[str, ...] = ()) -> None:
    """One flag per config field, its help the field's docstring and default."""
    alias_of = {v: k for k, v in (aliases or {}).items()}
    group = parser.add_argument_group(f"{cfg_type.__name__} (also settable as key=value or in --config YAML)")
    for key, annotation, default, doc in leaf_fields(cfg_type):
        if key in skip:
            continue
        names = [_flag(key)] + ([f"--{alias_of[key]}"] if key in alias_of else [])
        kwargs: dict[str, Any] = {"dest": "cfg:" + key, "default": argparse.SUPPRESS, "help": f"{doc} (default: {default})"}
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


def resolve_config(cfg_type: type, args: argparse.Namespace) -> Any:
    """Defaults <- preset (TrainConfig --preset tiny) <- --config YAML <- flags <- key=value overrides.

    The preset goes in first, so any value the user gives wins, also one equal to the full default.
    """
    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        overrides.update(load_yaml_overrides(args.config, cfg_type))
    overrides.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")})
    overrides.update(parse_key_values(getattr(args, "overrides", None) or []))
    cfg = cfg_type()
    if cfg_type is TrainConfig:
        preset = apply_overrides(cfg, {"preset": overrides["preset"]}).preset if "preset" in overrides else cfg.preset
        cfg = apply_overrides(cfg, TRAIN_PRESETS.get(preset, {}))
    return apply_overrides(cfg, overrides)


def _common(parser: argparse.ArgumentParser, with_overrides: bool = True) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    if with_overrides:
        parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values (flags and key=value win).")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="Config overrides, e.g. training.max_epochs=30.")


# ----------------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------------


def cmd_extract(args: argparse.Namespace) -> int:
    cfg: ExtractConfig = resolve_config(ExtractConfig, args)
    if not cfg.root:
        raise ConfigError("extract needs --root (the dataset folder; e.g. `mmfer make-demo --out demo_data` first)")
    from mmfer.data.ravdess import scan_ravdess   # imported here: each subcommand loads only what it uses
    from mmfer.extract.run import extract_all

    channels = ("speech", "song") if cfg.vocal_channels == "both" else (cfg.vocal_channels,)
    manifest = scan_ravdess(cfg.root, vocal_channels=channels, modalities=("av",))
    summary = extract_all(cfg, manifest)
    print(summary.format())
    if summary.num_ok == 0 and summary.num_selected > 0:
        return 1
    return 1 if cfg.strict and summary.num_failed else 0


def cmd_train_fusion(args: argparse.Namespace) -> int:
    cfg: TrainConfig = resolve_config(TrainConfig, args)
    if args.dry_run:
        from mmfer.train.dryrun import dry_run_for_cache, format_dry_run

        result = dry_run_for_cache(cfg)
        print(json.dumps(result, indent=2) if args.json else format_dry_run(result))
        return 0
    from mmfer.train.loop import train
    from mmfer.train.report import format_summary_table

    summary = train(cfg)
    print(format_summary_table(summary))
    return 0


def cmd_make_demo(args: argparse.Namespace) -> int:
    cfg: DemoConfig = resolve_config(DemoConfig, args)
    from mmfer.data.demo import make_demo

    manifest = make_demo(cfg.out, seed=cfg.seed, num_actors=cfg.num_actors, clips_per_emotion=cfg.clips_per_emotion,
                         size_px=cfg.size_px, duration_s=cfg.duration_s)
    print(f"wrote {len(manifest)} demo clips ({cfg.num_actors} actors) to {cfg.out}")
    return 0


def cmd_cache_info(args: argparse.Namespace) -> int:
    from mmfer.pipeline.cache_report import cache_info, format_cache_info

    info = cache_info(args.cache)
    print(json.dumps(info, indent=2) if args.json else format_cache_info(info))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from mmfer.pipeline.store import verify_store

    report = verify_store(args.cache, repair=args.repair)
    print(report.format())
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------------


def _extract_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = "Stage 1: decode each clip, run the frozen SigLIP2 + FastConformer encoders once, write their tokens to a Zarr feature store. Reruns skip finished clips."
    add_config_flags(parser, ExtractConfig)
    _common(parser)
    parser.set_defaults(handler=cmd_extract)


def _train_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = "Stage 2: train the fusion model from the feature store only (6-fold speaker-independent CV by default)."
    parser.add_argument("--dry-run", action="store_true", help="Print parameters, FLOPs per clip and GPU memory estimates; train nothing.")
    parser.add_argument("--json", action="store_true", help="With --dry-run: print one JSON object.")
    add_config_flags(parser, TrainConfig, TRAIN_ALIASES)
    _common(parser)
    parser.set_defaults(handler=cmd_train_fusion)


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def _register(name: str, help_text: str):
    def wrap(fn):
        SUBCOMMANDS[name] = (help_text, fn)
        return fn
    return wrap


@_register("make-demo", "Write the synthetic RAVDESS-format demo dataset (real mp4 files).")
def _demo_parser(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, DemoConfig)
    _common(parser)
    parser.set_defaults(handler=cmd_make_demo)


@_register("cache-info", "Print what a feature store holds.")
def _info_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", help="Feature store folder.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    _common(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_cache_info)


@_register("verify", "Re-read every chunk of a feature store; name damaged clips; clean leftovers of interrupted writes.")
def _verify_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", help="Feature store folder.")
    parser.add_argument("--repair", action="store_true", help="Mark damaged clips pending so the next extract redoes them.")
    _common(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_verify)


@_register("predict", "Emotions for your videos with a trained run or an exported model (the run's exact extraction).")
def _predict_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.predict import add_predict_arguments, cmd_predict

    add_predict_arguments(parser)
    _common(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_predict)


@_register("export", "Write a self-contained model folder from a run, for `mmfer predict --model`.")
def _export_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.export import add_export_arguments, cmd_export

    add_export_arguments(parser)
    _common(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_export)


@_register("ablate", "Ablation study from one cache: audio/visual/early/LFM2 and recipe variants, same folds and seeds.")
def _ablate_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.train.ablate import add_ablate_arguments, cmd_ablate   # light module: torch loads only when it runs

    add_ablate_arguments(parser)
    _common(parser)
    parser.set_defaults(handler=cmd_ablate)


@_register("tune", "Optuna search over the recipe (objective: mean validation macro-F1), resumable SQLite study.")
def _tune_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.train.tune import add_tune_arguments, cmd_tune

    add_tune_arguments(parser)
    _common(parser)
    parser.set_defaults(handler=cmd_tune)


@_register("bench", "Measure this machine: cached vs online epochs, loader overhead, extract efficiency, storage, scaling.")
def _bench_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.bench import add_bench_arguments, cmd_bench   # light import; stages load inside cmd_bench

    add_bench_arguments(parser)
    _common(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfer", description="Audio-visual emotion recognition from cached frozen-encoder features.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _extract_parser(sub.add_parser("extract", help="Stage 1: frozen encoders -> Zarr feature store."))
    _train_parser(sub.add_parser("train-fusion", help="Stage 2: train the fusion model from the store."))
    for name, (help_text, fn) in SUBCOMMANDS.items():
        fn(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("nemo_logger", "numba", "matplotlib", "PIL", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but `key=value` overrides may stand anywhere, also between flags (argparse only
    takes one contiguous run of positionals; the rest come back as extras)."""
    args, extras = parser.parse_known_args(argv)
    stray = [e for e in extras if "=" not in e or e.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extras:
        if not hasattr(args, "overrides"):
            parser.error(f"this command takes no key=value overrides: {' '.join(extras)}")
        args.overrides = [*(args.overrides or []), *extras]
    return args


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = _parse(parser, argv)
    _setup_logging(args.verbose)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.verbose or not _is_user_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1 if isinstance(err, OSError) else 2


def _is_user_error(err: Exception) -> bool:
    """Errors of mmfer's own exception classes (StoreError, CheckpointError, DecodeError, ...) and OS errors
    name the file and the fix: print that line instead of a traceback (-v shows the traceback)."""
    return isinstance(err, OSError) or type(err).__module__.startswith("mmfer.")


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser(), argv)


def extract_main() -> None:
    parser = argparse.ArgumentParser(prog="extract")
    _extract_parser(parser)
    sys.exit(_run(parser, None))


def train_fusion_main() -> None:
    parser = argparse.ArgumentParser(prog="train-fusion")
    _train_parser(parser)
    sys.exit(_run(parser, None))


if __name__ == "__main__":
    sys.exit(main())
