"""The package's layers, read from the source: a wrong arrow fails here with the file and the import.

    commands  pipeline/                  may import everything below (the CLI, command configs, predict, ...)
    stages    data/  extract/  train/    import the floor only, never each other or the commands
    floor     core/                      imports nothing above it

Also: only the store's backends (core/store/zarr_store.py, h5_store.py) and its HDF5 export writer (export.py)
import zarr, h5py or tensorstore; only extract/ imports NeMo or the SigLIP classes;
no import cycle among mmfer's modules; a test module does not import another test module. Every import
counts, also one inside a function (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "mmfer.core", "pipeline": "mmfer.pipeline", "extract": "mmfer.extract", "train": "mmfer.train", "data": "mmfer.data"}
STORE_MODULES = {"mmfer.core.store.zarr_store", "mmfer.core.store.h5_store", "mmfer.core.store.export"}
STORE_LIBRARIES = ("zarr", "h5py", "tensorstore")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["mmfer", *parts])


def source_files() -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py"))}


def imports_of(path: Path, source: str) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, imported names) for every import statement in the file, at any depth."""
    tree = ast.parse(source, filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base, tuple(alias.name for alias in node.names)))
    return found


def layer_of(module: str) -> str:
    """floor, commands, data, extract or train for an mmfer module; '' for anything else."""
    if module == "mmfer.pipeline" or module.startswith("mmfer.pipeline."):
        return "commands"
    for layer in ("data", "extract", "train"):
        if module == f"mmfer.{layer}" or module.startswith(f"mmfer.{layer}."):
            return layer
    if module == "mmfer.core" or module.startswith("mmfer.core.") or module == "mmfer":
        return "floor"
    return ""


ALLOWED = {   # layer -> the mmfer layers it may import
    "floor": {"floor"},
    "data": {"floor", "data"},
    "extract": {"floor", "extract"},
    "train": {"floor", "train"},
    "commands": {"floor", "data", "extract", "train", "commands"},
}


def layer_violations(files: dict[Path, str]) -> list[str]:
    out = []
    for path, source in files.items():
        layer = layer_of(module_name(path))
        rel = path.relative_to(ROOT)
        for line, module, names in imports_of(path, source):
            targets = [module] if module != "mmfer" else [f"mmfer.{n}" for n in names]
            for target in targets:
                target_layer = layer_of(target)
                if target_layer and target_layer not in ALLOWED[layer]:
                    out.append(f"{rel}:{line}: {layer} code imports {target} ({target_layer}); "
                               f"{layer} may import only {sorted(ALLOWED[layer])}")
            top = module.split(".")[0]
            if top in STORE_LIBRARIES and module_name(path) not in STORE_MODULES:
                out.append(f"{rel}:{line}: imports {module}; only {sorted(STORE_MODULES)} may touch the store's files")
            is_siglip = "siglip" in module.lower() or any("siglip" in n.lower() for n in names if top == "transformers")
            if (top == "nemo" or is_siglip) and layer != "extract":
                out.append(f"{rel}:{line}: imports {module} {list(names)}; only extract/ loads NeMo or SigLIP")
    return out


def import_cycles(files: dict[Path, str]) -> list[list[str]]:
    """Strongly connected components of more than one module in the mmfer import graph (Tarjan)."""
    known = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {m: set() for m in known}
    for path, source in files.items():
        name = module_name(path)
        for _, module, names in imports_of(path, source):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in known and target != name:
                    graph[name].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_every_import_points_down_the_layers():
    violations = layer_violations(source_files())
    assert not violations, "wrong arrows:\n" + "\n".join(violations)


def test_no_import_cycle():
    cycles = import_cycles(source_files())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_test_modules_do_not_import_each_other():
    tests = sorted((ROOT / "tests").glob("test_*.py"))
    names = {p.stem for p in tests} | {"conftest"}
    bad = [f"{p.relative_to(ROOT)}:{line}: imports {module}" for p in tests
           for line, module, _ in imports_of(p, p.read_text()) if module.split(".")[0] in names]
    assert not bad, "tests import other test modules (move shared helpers into a helper module):\n" + "\n".join(bad)


# The checker itself must catch each kind of wrong arrow the layering exists to prevent.
@pytest.mark.parametrize("relpath, code, expected", [
    ("core/bad.py", "from mmfer.train.loop import train\n", "floor code imports mmfer.train.loop"),
    ("core/bad.py", "def f():\n    from mmfer.pipeline.cli import main\n", "floor code imports mmfer.pipeline.cli"),
    ("core/bad.py", "from ..pipeline import predict\n", "floor code imports mmfer.pipeline (commands)"),
    ("extract/bad.py", "from mmfer.train import dataset\n", "extract code imports mmfer.train"),
    ("train/bad.py", "import mmfer.extract.decode\n", "train code imports mmfer.extract.decode"),
    ("train/bad.py", "from mmfer import extract\n", "train code imports mmfer.extract"),
    ("train/studies/bad.py", "from mmfer.pipeline.cli import resolve_config\n", "train code imports mmfer.pipeline.cli"),
    ("data/bad.py", "from ..extract import run\n", "data code imports mmfer.extract"),
    ("train/bad.py", "import zarr\n", "only ['mmfer.core.store.export', 'mmfer.core.store.h5_store', 'mmfer.core.store.zarr_store'] may touch"),
    ("pipeline/bad.py", "import h5py\n", "only ['mmfer.core.store.export', 'mmfer.core.store.h5_store', 'mmfer.core.store.zarr_store'] may touch"),
    ("core/store/zarr_entry.py", "import zarr\n", "imports zarr; only ['mmfer.core.store.export',"),
    ("core/store/verify.py", "import h5py\n", "imports h5py; only ['mmfer.core.store.export',"),
    ("pipeline/bad.py", "from nemo.collections.asr.models import ASRModel\n", "only extract/ loads NeMo"),
    ("pipeline/bad.py", "from transformers import SiglipVisionModel\n", "only extract/ loads NeMo or SigLIP"),
])
def test_checker_names_the_file_and_the_forbidden_import(relpath, code, expected):
    (violation,) = layer_violations({ROOT / relpath: code})
    assert violation.startswith(f"{relpath}:") and expected in violation, violation


def test_checker_finds_a_cycle():
    """The cycle this layering removed: the CLI imported the ablation, which imported the CLI back."""
    sources = {ROOT / "pipeline" / "cli.py": "def f():\n    from mmfer.train.studies.ablate import run_ablation\n",
               ROOT / "train" / "studies" / "ablate.py": "def g():\n    from mmfer.pipeline.cli import resolve_config\n"}
    assert import_cycles(sources) == [["mmfer.pipeline.cli", "mmfer.train.studies.ablate"]]


# Parameters that share a config field's name but keep a default, each for a reason a reader can check.
DEFAULT_ALLOWED = {
    ("open_store", "mode"): "a file mode ('r'/'r+'), not FusionConfig.mode",
    ("ensure_entry", "overwrite"): "the store API never replaces features unless asked; extract passes ExtractConfig.overwrite",
    ("open_cache", "video_entry"): "None = the store's only entry; train passes TrainConfig.video_entry",
    ("open_cache", "audio_entry"): "None = the store's only entry; train passes TrainConfig.audio_entry",
    ("__init__", "preload"): "ClipDataset's bool (already decided), not TrainConfig.preload's auto/yes/no",
    ("load_visual_encoder", "device"): "library use keeps a loaded encoder on the CPU; commands pass the resolved device",
    ("load_audio_encoder", "device"): "library use keeps a loaded encoder on the CPU; commands pass the resolved device",
    ("scan_ravdess", "vocal_channels"): "RAVDESS's own subset for library use; build_manifest passes ExtractConfig's",
    ("write_demo_clip", "*"): "one demo clip's media format; make_demo passes DemoConfig's values",
    ("render_face_frames", "seed"): "one demo clip's drawing; make_demo passes DemoConfig.seed",
    ("synthesize_voice", "*"): "one demo clip's voice; make_demo passes its own values",
    ("make_demo", "sample_rate_hz"): "the demo files' audio rate (a file format, not ExtractConfig's resampling rate)",
}


def config_classes(module) -> list[type]:
    return [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__
            and hasattr(c, "__dataclass_fields__")]


def test_the_floors_config_holds_only_settings_the_floor_or_a_stage_reads():
    """A command's settings (predict's, export's, ...) live with the commands, in pipeline/command_config.py."""
    from mmfer.core import config

    below = {p: s for p, s in source_files().items()
             if layer_of(module_name(p)) != "commands" and p != ROOT / "core" / "config.py"}
    classes = config_classes(config)
    nested = {c.__name__ for parent in classes for f in parent.__dataclass_fields__.values()
              for c in classes if c.__name__ in str(f.type)}   # a section of a read config is read with it
    unread = [c.__name__ for c in classes
              if c.__name__ not in nested and not any(c.__name__ in source for source in below.values())]
    assert not unread, f"core/config.py holds settings only the commands read: {unread}"


def config_field_names() -> set[str]:
    from mmfer.core import config
    from mmfer.core.overrides import leaf_fields
    from mmfer.pipeline import command_config

    classes = config_classes(config) + config_classes(command_config)
    return {key.rsplit(".", 1)[-1] for cls in classes for key, *_ in leaf_fields(cls)} | {"timeout_s"}


def test_functions_below_the_commands_take_config_settings_without_their_own_default():
    """A setting's default lives in core/config.py only: a function that takes it has no default of
    its own (decode timeout was 120 s in ExtractConfig, 60 s in decode_clip and 30 s in probe_media)."""
    names, found = config_field_names(), []
    for path, source in source_files().items():
        if layer_of(module_name(path)) == "commands" or path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
            pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            for arg, default in pairs:
                allowed = (node.name, arg.arg) in DEFAULT_ALLOWED or (node.name, "*") in DEFAULT_ALLOWED
                if arg.arg in names and not allowed:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}({arg.arg}={ast.unparse(default)})")
    assert not found, "defaults written twice (take them as keyword-only arguments without a default):\n" + "\n".join(found)


def test_code_says_why_without_pointing_at_the_tracker():
    """A comment or docstring that points at a tracker's issue number explains nothing once the tracker is gone
    or renumbered: the text says the why itself. Every .py file we ship, benchmarks and tests included."""
    import re

    pattern = re.compile(r"\bissue[ #-]?\d+", re.IGNORECASE)
    files = [*source_files(), *sorted((ROOT / "benchmarks").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == [], "\n".join(found)
