"""Security by inspection and by trying: no pickle loading and no remote code in the package's
sources; names from a dataset or a manifest never choose where the store writes."""

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmfer.data.ravdess import RavdessNameError, parse_ravdess_name, scan_ravdess
from mmfer.core.store import ArraySpec, create_store, open_store

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("pipeline", "extract", "train", "data")
CLIP_ID = re.compile(r"^\d\d(-\d\d){6}$")


def package_sources() -> dict[Path, ast.Module]:
    # The package is these folders plus the root __init__.py (pyproject's package-dir); a .venv or a
    # build folder inside the checkout (CI makes one) is not ours to scan.
    files = [REPO / "__init__.py", *(p for folder in PACKAGE_FOLDERS for p in (REPO / folder).rglob("*.py"))]
    assert len(files) > 20, files   # the scan really sees the package
    return {p: ast.parse(p.read_text(), filename=str(p)) for p in files}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_no_pickle_loading_in_the_package():
    """torch.load only with weights_only=True (a literal); no pickle/dill/joblib loads; no allow_pickle=True."""
    found = []
    for path, tree in package_sources().items():
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.keyword) and node.arg in ("weights_only", "allow_pickle"):
                bad_value = False if node.arg == "weights_only" else True
                if isinstance(node.value, ast.Constant) and node.value.value is bad_value:
                    found.append(f"{where}: {node.arg}={bad_value}")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name in ("torch.load",):
                kwargs = {k.arg: k.value for k in node.keywords}
                value = kwargs.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    found.append(f"{where}: torch.load without weights_only=True")
            if re.fullmatch(r"(c?pickle|dill|joblib|_pickle)\.(load|loads|Unpickler)", name) or name == "Unpickler":
                found.append(f"{where}: {name}")
    assert not found, "\n".join(found)


def test_trust_remote_code_is_never_on_by_default():
    """Neither a call nor a config default nor a from_pretrained(**kwargs) dict turns it on."""
    found = []
    for path, tree in package_sources().items():
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False) and not (
                        isinstance(node.value, ast.Attribute | ast.Name)):   # passing a user's opt-in through is fine
                    found.append(f"{where}: trust_remote_code={ast.unparse(node.value)}")
            if isinstance(node, ast.AnnAssign) and _dotted(node.target) == "trust_remote_code":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    found.append(f"{where}: default {ast.unparse(node.value) if node.value else 'missing'}")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and not (
                            isinstance(value, ast.Constant) and value.value is False):
                        found.append(f"{where}: {{'trust_remote_code': {ast.unparse(value)}}}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "..-01-01-01-01-01-01.mp4", "01-01-01-01-01-01-../01.mp4", "/abs/01-01-01-01-01-01.mp4",
    "01-01-01-01-01-01-01/../x.mp4", "01-01-01-01-01-01-0\x00.mp4", "01-01-01-01-01-01-٠١.mp4"])
def test_names_that_are_not_ravdess_are_rejected(name):
    with pytest.raises(RavdessNameError):
        parse_ravdess_name(name)


def test_scanned_clip_ids_are_plain_stems(tmp_path):
    """A folder name with '..' or odd characters never leaks into clip_id: it is the 7-part stem only."""
    folder = tmp_path / "data" / "..weird ; rm -rf" / "sub..dir"
    folder.mkdir(parents=True)
    for stem in ("01-01-03-01-01-01-01", "01-01-04-01-01-01-01"):
        (folder / f"{stem}.mp4").write_bytes(b"not decoded here")
    (folder / "..-01-01-01-01-01-01.mp4").write_bytes(b"")
    assert parse_ravdess_name("../../x/01-01-03-01-01-01-01.mp4")["clip_id"] == "01-01-03-01-01-01-01"
    manifest = scan_ravdess(tmp_path / "data")
    assert list(manifest["clip_id"]) == ["01-01-03-01-01-01-01", "01-01-04-01-01-01-01"]
    assert all(CLIP_ID.match(c) for c in manifest["clip_id"])


def test_hostile_clip_ids_from_a_manifest_never_write_outside_the_store(tmp_path):
    """Another manifest may hold any clip_id: the store keys chunks by row index, not by name."""
    hostile = ["../../escaped", "/tmp/absolute", "..", "a/../../b", "ok"]
    table = pd.DataFrame({"clip_id": hostile, "path": [f"/data/{c}.mp4" for c in hostile], "label": [0] * 5})
    out = tmp_path / "inner" / "cache"
    store = create_store(out, table, {"dataset": "other"})
    spec = {"tokens": ArraySpec((2, 3), "float16")}
    video = store.ensure_entry("video", "fp", {"encoder": {"name": "x"}}, spec)
    for i, clip_id in enumerate(hostile):
        video.write_clip(clip_id, {"tokens": np.full((2, 3), i)}, "1:1")
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    outside = sorted(str(p) for p in written if out not in p.parents)
    assert outside == [], outside
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute").exists()
    reread = open_store(out).entry("video")
    assert [int(reread.read_clip(c)["tokens"][0, 0]) for c in hostile] == list(range(5))
    assert all(p.name.isdigit() for p in (out / "video" / "fp" / "tokens" / "c").iterdir())
