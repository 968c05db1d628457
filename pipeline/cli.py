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
import os
import sys
from collections import Counter
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from mmfer.pipeline.flags import (TRAIN_ALIASES, add_common_arguments, add_config_flags, resolve_config,
                                  resolve_train_config)
from mmfer.core.config import ExtractConfig, TrainConfig
from mmfer.pipeline.command_config import DemoConfig
from mmfer.core.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, BadInputError, ConfigError, MmferError

log = logging.getLogger("mmfer")

# ----------------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------------


def cmd_extract(args: argparse.Namespace) -> int:
    cfg: ExtractConfig = resolve_config(ExtractConfig, args)
    if cfg.dataset == "manifest" and not cfg.manifest:
        raise ConfigError("extract --dataset manifest needs --manifest FILE (.csv or .jsonl, one row per clip)")
    if cfg.dataset != "manifest" and not cfg.root:
        cfg = replace(cfg, root=str(_default_root(cfg.dataset)))
    from mmfer.data.datasets import build_manifest  # imported here: each subcommand loads only what it uses
    from mmfer.extract.run import extract_all, select_clips

    manifest = build_manifest(cfg)   # refuses a root without clips, before any model or --out
    if cfg.select is not None and select_clips(manifest, cfg.select, None).empty:
        examples = ", ".join(manifest["clip_id"].head(3))
        raise ConfigError(f"--select {cfg.select!r} matches none of the {len(manifest)} clips in the manifest "
                          f"(clip ids look like {examples}); nothing written")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise BadInputError(f"{cfg.out}: --out is a file, not a folder; give a folder for the feature store")
    from mmfer.core.distributed import current_world

    summary = extract_all(cfg, manifest)
    if current_world().is_main:   # under torchrun: one summary (of every rank's clips), from rank 0
        print(summary.format())
    if summary.num_ok == 0 and summary.num_selected > 0:
        return 1
    return 1 if cfg.strict and summary.num_failed else 0


def _default_root(dataset: str) -> Path:
    """The data home's folder of `dataset` (core/data_home.py); refused, saying how to fill it, when empty."""
    from mmfer.core.data_home import DATA_HOME_RULE, dataset_root, is_missing_or_empty

    root = dataset_root(dataset)
    if is_missing_or_empty(root):
        from mmfer.data.download import how_to_fill

        raise BadInputError(f"{root}: no {dataset} data here (extract's default --root: {DATA_HOME_RULE}); "
                            f"{how_to_fill(dataset, root)}")
    log.info("--root %s (the data home's %s folder)", root, dataset)
    return root


def cmd_download(args: argparse.Namespace) -> int:
    from mmfer.data import download
    from mmfer.core.data_home import dataset_root

    out = Path(args.out).expanduser() if args.out else dataset_root(args.dataset)
    if args.dataset in ("dfew", "mafw"):
        print(download.access_message(args.dataset, out), file=sys.stderr)
        return 1
    if args.actors and args.dataset != "ravdess":
        raise ConfigError(f"--actors picks RAVDESS actors; {args.dataset} is fetched whole")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: --out is a file, not a folder; give a folder for the dataset")
    if args.dataset == "ravdess":
        summary = download.download_ravdess(out, download.parse_actors(args.actors) if args.actors else None)
    else:
        summary = download.download_crema_d(out)
    print(summary.format())
    return 1 if summary.failures else 0


def cmd_train_fusion(args: argparse.Namespace) -> int:
    cfg, facts = resolve_train_config(args)   # the cache read once, here; train and the dry run reuse it
    if args.dry_run:
        from mmfer.train.dryrun import dry_run_for_cache, format_dry_run

        result = dry_run_for_cache(cfg, facts)
        print(json.dumps(result, indent=2) if args.json else format_dry_run(result))
        return 0
    from mmfer.core.distributed import current_world
    from mmfer.train.cross_validation import train
    from mmfer.train.report import format_summary_table

    summary = train(cfg, facts)
    if current_world().is_main:   # under torchrun every rank returns the same summary: one table
        print(format_summary_table(summary))
        _write_run_report(cfg.out)
    return 0


def _write_run_report(run_dir: str) -> None:
    """RUN/report.html after a finished training; a report that fails is a warning (the run itself is complete)."""
    from mmfer.pipeline.command_config import ReportConfig
    from mmfer.pipeline.report import write_report

    try:
        out, selections = write_report(ReportConfig(run=run_dir))
        print(f"{selections}\nreport: {out}")
    except (MmferError, OSError, ValueError) as err:
        log.warning("%s: report.html not written (%s); `mmfer report %s` retries", run_dir, err, run_dir)


def cmd_make_demo(args: argparse.Namespace) -> int:
    cfg: DemoConfig = resolve_config(DemoConfig, args)
    from mmfer.data.demo import make_crema_d_demo, make_demo

    write = make_crema_d_demo if cfg.layout == "crema-d" else make_demo
    manifest = write(cfg.out, seed=cfg.seed, num_actors=cfg.num_actors, clips_per_emotion=cfg.clips_per_emotion,
                     size_px=cfg.size_px, duration_s=cfg.duration_s, overwrite=cfg.overwrite)
    print(f"wrote {len(manifest)} demo clips ({cfg.num_actors} actors, {cfg.layout} layout) to {cfg.out}")
    return 0


def cmd_cache_info(args: argparse.Namespace) -> int:
    from mmfer.pipeline.cache_info import cache_info, format_cache_info

    info = cache_info(args.cache)
    print(json.dumps(info, indent=2) if args.json else format_cache_info(info))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from mmfer.core.store.verify import verify_store

    report = verify_store(args.cache, repair=args.repair)
    print(report.format())
    if report.damaged and args.repair:
        print(f"repaired: marked {len(report.damaged)} damaged clip entries failed; the next `extract` with the "
              "same settings redoes them")
        return 0
    return 0 if report.ok else 1


def cmd_cache_export(args: argparse.Namespace) -> int:
    from mmfer.core.store.export import export_h5

    result = export_h5(args.cache, args.h5)
    clips = ", ".join(f"{k}: {v} done clips" for k, v in result["clips_done"].items())
    print(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB; {clips}); read it with --cache {result['path']}")
    return 0


# ----------------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------------


def _extract_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = "Stage 1: decode each clip, run the frozen SigLIP2 + FastConformer encoders once, write their tokens to a Zarr feature store. Reruns skip finished clips."
    from mmfer.core.data_home import DATA_HOME_RULE, data_home

    parser.epilog = f"Without --root: {DATA_HOME_RULE}, here {data_home()}/<dataset> (fill it with `mmfer download ravdess` or `mmfer download crema-d`)."
    add_config_flags(parser, ExtractConfig)
    add_common_arguments(parser, example="batch_size=8")
    parser.set_defaults(handler=cmd_extract)


def _train_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = "Stage 2: train the fusion model from the feature store only (by default the dataset's own speaker-independent folds: RAVDESS 6, CREMA-D 5, a manifest's fold column or 5 speaker folds). Ends by writing the run's page, RUN/report.html (`mmfer report`)."
    parser.add_argument("--dry-run", action="store_true", help="Print parameters, FLOPs per clip and GPU memory estimates; train nothing.")
    parser.add_argument("--json", action="store_true", help="With --dry-run: print one JSON object.")
    add_config_flags(parser, TrainConfig, TRAIN_ALIASES)
    add_common_arguments(parser)
    parser.set_defaults(handler=cmd_train_fusion)


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def _register(name: str, help_text: str):
    def wrap(fn):
        SUBCOMMANDS[name] = (help_text, fn)
        return fn
    return wrap


@_register("make-demo", "Write the synthetic demo dataset (real files; RAVDESS layout, or --layout crema-d).")
def _demo_parser(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, DemoConfig)
    add_common_arguments(parser, example="num_actors=2")
    parser.set_defaults(handler=cmd_make_demo)


@_register("download", "Fetch a public dataset (ravdess, crema-d) into the data home, verified against the published "
                       "checksums; resumes, skips what is done. dfew, mafw: where to request them.")
def _download_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.core.data_home import DATA_HOME_RULE

    parser.add_argument("dataset", choices=("ravdess", "crema-d", "dfew", "mafw"), help="Dataset to fetch.")
    parser.add_argument("--out", metavar="DIR", help=f"Folder to fill (default: {DATA_HOME_RULE}, where extract looks).")
    parser.add_argument("--actors", metavar="LIST", help="RAVDESS: only these actors, e.g. 1-4 or 1,3,5-8 (default: all 24).")
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_download)


@_register("cache-info", "Print what a feature store holds.")
def _info_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", help="Feature store folder, or its HDF5 export (.h5).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_cache_info)


@_register("verify", "Re-read every chunk of a feature store and name damaged clips; read only, safe while an extract "
                     "writes. Exits 1 when damage is found and not repaired.")
def _verify_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", help="Feature store folder, or its HDF5 export (.h5; checked, never repaired).")
    parser.add_argument("--repair", action="store_true",
                        help="Mark damaged clips failed ('damaged: ...'), so the next extract redoes them, and delete "
                             "leftovers of interrupted writes; takes the writer lock (refused while an extract writes); "
                             "exits 0 once marked.")
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_verify)


@_register("cache-export", "Write a feature store as one HDF5 file (one chunk per clip, fletcher32 checksums), "
                           "readable by train-fusion, cache-info, verify and predict as --cache FILE.h5.")
def _export_h5_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", help="Feature store folder (Zarr) to export.")
    parser.add_argument("--h5", required=True, help="HDF5 file to write (.h5 or .hdf5; must not exist).")
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_cache_export)


@_register("predict", "Emotions for your videos with a trained run or an exported model (the run's exact extraction).")
def _predict_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.predict import add_predict_arguments, cmd_predict  # light: the stages load in cmd_predict

    add_predict_arguments(parser)
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_predict)


@_register("export", "Write a self-contained model folder from a run, for `mmfer predict --model`.")
def _export_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.export import add_export_arguments, cmd_export

    add_export_arguments(parser)
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_export)


@_register("convert-encoder", "Convert a FastConformer .nemo file into a transformers folder (no NeMo needed) for "
                               "--audio-encoder DIR; refuses settings the conversion cannot represent.")
def _convert_encoder_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.convert_encoder import add_convert_encoder_arguments, cmd_convert_encoder

    add_convert_encoder_arguments(parser)
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_convert_encoder)


@_register("evaluate", "Cross-corpus evaluation on another dataset's cache, or robustness (--corrupt) on the run's own test clips.")
def _evaluate_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.evaluate import add_evaluate_arguments, cmd_evaluate

    add_evaluate_arguments(parser)
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_evaluate)


@_register("report", "One self-contained HTML page of a run (RUN/report.html): protocol, three selections, spread, curves, errors.")
def _report_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.report import add_report_arguments, cmd_report

    add_report_arguments(parser)
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_report)


@_register("ablate", "Ablation study from one cache: audio/visual/early/LFM2 and recipe variants, same folds and seeds.")
def _ablate_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.ablate import add_ablate_arguments, cmd_ablate  # light: torch loads only when it runs

    add_ablate_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(handler=cmd_ablate)


@_register("tune", "Nested Optuna search over the recipe (per outer fold; objective: its validation macro-F1), resumable SQLite study.")
def _tune_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.tune import add_tune_arguments, cmd_tune

    add_tune_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(handler=cmd_tune)


@_register("bench", "Measure this machine: cached vs online epochs, loader overhead, extract efficiency, storage, scaling.")
def _bench_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.bench import add_bench_arguments, cmd_bench  # light import; stages load inside cmd_bench

    add_bench_arguments(parser)
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_bench)


@_register("robustness", "Same as `mmfer evaluate --corrupt` (its first name; --corrupt defaults to all).")
def _robustness_parser(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.evaluate import add_evaluate_arguments, cmd_robustness

    add_evaluate_arguments(parser)
    add_common_arguments(parser, with_overrides=False)
    parser.set_defaults(handler=cmd_robustness)


def mmfer_version() -> str:
    try:
        return version("mmfer")
    except PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {mmfer_version()}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mmfer", description="Audio-visual emotion recognition from cached frozen-encoder features.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _extract_parser(sub.add_parser("extract", help="Stage 1: frozen encoders -> Zarr feature store."))
    _train_parser(sub.add_parser("train-fusion", help="Stage 2: train the fusion model from the store."))
    for name, (help_text, fn) in SUBCOMMANDS.items():
        fn(sub.add_parser(name, help=help_text, description=help_text))
    return parser


class _ThirdPartyLines(logging.Filter):
    """On mmfer's stderr handler: without -v, another library's info lines (and nv_one_logger's notices that
    its telemetry is off) are counted instead of shown; the command ends with one line giving the counts."""

    HIDE_BELOW = {"nv_one_logger": logging.ERROR}   # telemetry notices: warnings a user can do nothing about

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose, self.hidden = verbose, Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".")[0]
        if top == "mmfer" or self.verbose or record.levelno >= self.HIDE_BELOW.get(top, logging.WARNING):
            return True
        self.hidden[{"nemo_logger": "NeMo"}.get(top, top)] += 1
        return False


class _NemoToStderr(logging.Filter):
    """On NeMo's own logger (it does not propagate, and its handler writes info lines to stdout, where they
    would pollute `predict > file`): hand each record to mmfer's handlers instead, so NeMo writes nothing itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        logging.getLogger().handle(record)
        return False


def _setup_logging(verbose: bool) -> _ThirdPartyLines | None:
    """mmfer's lines at INFO (DEBUG with -v) on stderr; other libraries at INFO at most, so -v does not flood
    with zarr/numcodecs debug lines; stdout is left to results. Returns the filter counting hidden lines
    (None when logging was already set up by someone else, e.g. pytest)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "is_mmfer", False)]:
        root.removeHandler(handler)
    nemo = logging.getLogger("nemo_logger")   # a logger filter set now survives NeMo's own set-up at import
    for old in [f for f in nemo.filters if isinstance(f, _NemoToStderr)]:
        nemo.removeFilter(old)
    nemo.addFilter(_NemoToStderr())
    if not sys.stderr.isatty():   # HF's tqdm bars ("Loading weights") in a log file: noise; ours log lines instead
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if root.handlers:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.is_mmfer = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    quiet = _ThirdPartyLines(verbose)
    handler.addFilter(quiet)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("mmfer").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return quiet


def _report_hidden(quiet: _ThirdPartyLines | None) -> None:
    if quiet is not None and quiet.hidden:
        counts = ", ".join(f"{n} from {name}" for name, n in sorted(quiet.hidden.items()))
        log.info("hid %d info lines of other libraries (%s); -v shows them", sum(quiet.hidden.values()), counts)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not the usage block above it; --help still
    prints everything. Subcommand parsers are of this class too (add_subparsers uses the parent's class)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the subcommand that was given (the parser itself for `extract`/`train-fusion` entry points)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, action.dest, None), parser)
    return parser


def nearest_flag(parser: argparse.ArgumentParser, word: str) -> str | None:
    """The parser's flag closest to a mistyped `word` (`--epohcs` -> `--epochs`), or None when none is close."""
    import difflib

    flag = word.split("=", 1)[0]
    flags = [f for f in parser._option_string_actions if f.startswith("--")]
    close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
    return close[0] if close else None


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but `key=value` overrides may stand anywhere, also between flags (argparse only
    takes one contiguous run of positionals; the rest come back as extras). An unknown flag is one line
    naming the nearest real one."""
    args, extras = parser.parse_known_args(argv)
    stray = [e for e in extras if "=" not in e or e.startswith("-")]
    if stray:
        command = _command_parser(parser, args)
        hint = nearest_flag(command, stray[0]) if stray[0].startswith("-") else None
        more = [e for e in stray[1:] if e.startswith("-")]   # a bad flag's value is stray too: not worth naming
        command.error(f"unrecognized argument {stray[0]}" + (f"; did you mean {hint}?" if hint else "")
                      + (f" (also unknown: {' '.join(more)})" if more else ""))
    if extras:
        if not hasattr(args, "overrides"):
            _command_parser(parser, args).error(f"this command takes no key=value overrides: {' '.join(extras)}")
        args.overrides = [*(args.overrides or []), *extras]
    return args


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """The one error handler of every command: a project error (MmferError) or an OS error on a file
    prints one line to stderr and exits 2 (bad input) or 1 (failure); Ctrl-C exits 130; anything else
    is a bug and keeps its traceback (-v shows the traceback of project errors too)."""
    args = _parse(parser, argv)
    quiet = _setup_logging(args.verbose)
    try:
        code = args.handler(args)
        _report_hidden(quiet)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (MmferError, OSError) as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err)


def exit_code(err: BaseException) -> int:
    """2 for bad input (a project BadInputError, or a path that does not exist or is of the wrong kind),
    1 for any other failure."""
    if isinstance(err, MmferError):
        return err.exit_code
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser(), argv)


def extract_main() -> None:
    parser = OneLineParser(prog="extract")
    _add_version(parser)
    _extract_parser(parser)
    sys.exit(_run(parser, None))


def train_fusion_main() -> None:
    parser = OneLineParser(prog="train-fusion")
    _add_version(parser)
    _train_parser(parser)
    sys.exit(_run(parser, None))


if __name__ == "__main__":
    sys.exit(main())
