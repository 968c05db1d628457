"""What `mmfer predict` hands back: a `ClipResult` per file (or per face track), and how it is written.

The table on stdout, `--out` as CSV or JSON (one row per file or track, all C probabilities), a windowed file's
timeline CSV and PNG, and the per-file summary of its windows. predict.py walks the inputs and fills the results;
predict_faces.py does the same for `--faces all`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfer.core.labels import EMOTIONS

log = logging.getLogger(__name__)


@dataclass
class ClipResult:
    """One input file: probabilities (C,) (the mean over windows when windowed) or an error."""

    clip_id: str
    path: str
    probabilities: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    windows: list[tuple[float, float, np.ndarray]] | None = None   # (start_s, end_s, probabilities)
    timeline: list[str] = field(default_factory=list)              # written CSV / PNG paths
    label_names: tuple[str, ...] = EMOTIONS                        # the model's C class names (its cache's)
    track: int | None = None                                       # --faces all: the face track (a row per track)
    box_px: tuple[float, float, float, float] | None = None        # its median face box, x0, y0, x1, y1 pixels
    span_s: tuple[float, float] | None = None                      # its first and last detection, s

    @property
    def prediction(self) -> str:
        return self.label_names[int(self.probabilities.argmax())] if self.probabilities is not None else ""


def error_line(err: Exception, path: Path) -> str:
    """A file's error as its row's one line, starting at the file's name (logged as a warning)."""
    message = str(err).splitlines()[0]
    start = message.find(str(path))   # decode_job prefixes the reason to a message that names the file
    message = message[start:] if start > 0 else message
    log.warning("%s: %s", path, message)
    return message


def summarize_windows(result: ClipResult, windows: list) -> None:
    """Fill a result from its windows (pipeline/predict_stream.py's WindowPrediction): the timeline rows, the
    mean probabilities, and each note with the count of windows it held in."""
    notes = Counter(n for w in windows for n in set(w.notes))
    result.windows = [(w.start_s, w.end_s, w.probabilities) for w in windows]
    result.probabilities = np.mean([w.probabilities for w in windows], axis=0)
    result.notes = [n if k == len(windows) else f"{n} ({k} of {len(windows)} windows)" for n, k in sorted(notes.items())]
    result.notes.append(f"mean of {len(windows)} windows")


def write_timeline(result: ClipResult, folder: Path) -> list[str]:
    """`<clip_id>.timeline.csv` (start_s, end_s, prob_<emotion> x C) and a PNG of the same curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / f"{result.clip_id}.timeline.csv", folder / f"{result.clip_id}.timeline.png"
    frame = pd.DataFrame({"start_s": [s for s, _, _ in result.windows], "end_s": [e for _, e, _ in result.windows]})
    for i, name in enumerate(result.label_names):
        frame[f"prob_{name}"] = [float(p[i]) for _, _, p in result.windows]
    frame["prediction"] = [result.label_names[int(p.argmax())] for _, _, p in result.windows]
    frame.to_csv(csv_path, index=False, float_format="%.6f")
    centers = (frame["start_s"] + frame["end_s"]) / 2
    fig, ax = plt.subplots(figsize=(9, 4))
    for name in result.label_names:
        ax.plot(centers, frame[f"prob_{name}"], marker="o", markersize=3, label=name)
    ax.set_xlabel("time (s, window centre)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(f"{result.clip_id}: emotion over time")
    ax.legend(loc="upper right", ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [str(csv_path), str(png_path)]


def result_rows(results: list[ClipResult]) -> list[dict]:
    rows = []
    has_tracks = any(r.track is not None for r in results)   # --faces all: the track, its box and time span
    for r in results:
        row = {"clip_id": r.clip_id}
        if has_tracks:
            row["track"] = r.track
            row.update(zip(("x0", "y0", "x1", "y1"), r.box_px or (None,) * 4))
            row.update(zip(("start_s", "end_s"), r.span_s or (None,) * 2))
        row |= {"path": r.path, "prediction": r.prediction,
               "probability": float(r.probabilities.max()) if r.probabilities is not None else None}
        for i, name in enumerate(r.label_names):
            row[f"prob_{name}"] = float(r.probabilities[i]) if r.probabilities is not None else None
        row.update(note="; ".join(r.notes), error=r.error or "", timeline=" ".join(r.timeline))
        rows.append(row)
    return rows


def write_results(results: list[ClipResult], out: Path, model: dict) -> None:
    """--out FILE.csv (one row per file, all C probabilities) or FILE.json (the same plus the model used)."""
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps({"model": model, "clips": result_rows(results)}, indent=2))
    else:
        pd.DataFrame(result_rows(results)).to_csv(out, index=False, float_format="%.6f")


def model_record(bundle) -> dict:
    """The model a --out file's predictions came from (its JSON's "model")."""
    return {"source": bundle.source, "folds": bundle.fold_names, "ensemble": bundle.is_ensemble,
            "description": bundle.describe()}


def format_table(results: list[ClipResult], header: str) -> str:
    names = [r.clip_id if r.track is None else f"{r.clip_id} face {r.track}" for r in results]
    width = max([len(n) for n in names] + [4])
    lines = [header, f"{'clip':<{width}}  {'emotion':<10} {'prob':>6}  note", "-" * (width + 30)]
    for r, name in zip(results, names):
        if r.error:
            lines.append(f"{name:<{width}}  {'ERROR':<10} {'':>6}  {r.error}")
        else:
            box = [f"box {' '.join(f'{v:.0f}' for v in r.box_px)} px, {r.span_s[0]:g}-{r.span_s[1]:g} s"] if r.box_px else []
            note = "; ".join(box + r.notes + ([f"timeline: {r.timeline[0]}"] if r.timeline else []))
            lines.append(f"{name:<{width}}  {r.prediction:<10} {r.probabilities.max():>6.3f}  {note}")
    num_failed = sum(r.error is not None for r in results)
    lines.append(f"{len(results) - num_failed} predicted, {num_failed} failed")
    return "\n".join(lines)
