"""The report's pictures as inline `data:image/png;base64,...` strings: curves, confusion matrices, thumbnails.

In: plain values read from a run folder (epoch records, a confusion matrix) or a clip's media path. Out: the
strings the page embeds, so the HTML file needs nothing beside it. Laying them out is report_page.py's job.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

THUMBNAIL_SIDE_PX = 160   # a thumbnail's longer side; enough to see a face, small enough for 48 inline
THUMBNAIL_TIMEOUT_S = 30.0


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(fig) -> str:
    """A matplotlib figure as an inline PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return png_uri(buf.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_uri(records: list[dict], *, fold: str, monitor: str, selected_epoch: int | None,
               oracle_epoch: int | None) -> str:
    """Two panels of one fold's metrics.jsonl records: the training loss; training accuracy, validation
    `monitor` and (when recorded) test `monitor`, with the validation-selected and test-selected epochs marked."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.8))
    left.plot(epochs, [r.get("loss") for r in records], marker="o", ms=3, label="training loss")
    if any("val_nll" in r for r in records):
        left.plot(epochs, [r.get("val_nll") for r in records], marker="o", ms=3, label="validation cross-entropy")
    left.set_xlabel("epoch")
    left.legend(fontsize=7)
    right.plot(epochs, [r.get("accuracy") for r in records], marker="o", ms=3, label="training accuracy")
    right.plot(epochs, [r.get(f"val_{monitor}") for r in records], marker="o", ms=3, label=f"validation {monitor}")
    if all(f"test_{monitor}" in r for r in records):
        right.plot(epochs, [r[f"test_{monitor}"] for r in records], ls="--", color="grey",
                   label=f"test {monitor} (recorded, never selects)")
    if selected_epoch is not None:
        right.axvline(selected_epoch, color="green", lw=1, label=f"selected on validation: {selected_epoch}")
    if oracle_epoch is not None:
        right.axvline(oracle_epoch, color="red", lw=1, ls=":", label=f"test-selected (oracle): {oracle_epoch}")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("epoch")
    right.legend(fontsize=7, loc="best")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(fold, fontsize=10)
    fig.tight_layout()
    return figure_uri(fig)


def confusion_uri(matrix: np.ndarray, class_names: tuple[str, ...]) -> str:
    """Counts and row-normalised (each true class sums to 1) heat maps side by side."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.int64)
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = 0.55 * len(class_names) + 2
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "{:d}"), (axes[1], normalised, "row-normalised (recall)", "{:.2f}")):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
        top = values.max() if values.size else 0
        for (r, c), value in np.ndenumerate(values):
            ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=7,
                    color="white" if top and value > top / 2 else "black")
    fig.tight_layout()
    return figure_uri(fig)


def thumbnail_uri(path: str | None) -> tuple[str | None, str]:
    """(inline PNG of the clip's middle frame, "") or (None, why there is none): decoded by extract's own
    decode_clip (ffmpeg); a missing or unreadable file is said, never raised."""
    from mmfer.core.config import ExtractConfig
    from mmfer.core.errors import MmferError
    from mmfer.extract.decode import DecodeError, decode_clip

    if not path:
        return None, "no media path recorded"
    if not Path(path).is_file():
        return None, f"media not found: {path}"
    try:   # one frame at the clip's middle; the audio pass is kept to a token 0.1 s
        clip = decode_clip(path, num_frames=1, sample_rate_hz=ExtractConfig.sample_rate_hz, timeout_s=THUMBNAIL_TIMEOUT_S, max_audio_s=0.1,
                           max_side_px=THUMBNAIL_SIDE_PX)
    except DecodeError as err:
        log.warning("report thumbnail: %s", err)
        return None, f"cannot decode: {err.reason}"
    except MmferError as err:   # no usable ffmpeg: the table still stands
        log.warning("report thumbnail: %s: %s", path, err)
        return None, f"cannot decode: {err}"
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, clip.frames[0], format="png")
    return png_uri(buf.getvalue()), ""


def file_uri(path: Path) -> str | None:
    """An existing PNG file (robustness.png, ablation.png, an evaluation's confusion matrix) inline."""
    return png_uri(path.read_bytes()) if path.is_file() else None
