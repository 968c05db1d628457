"""The run report's HTML: one page, CSS inline, images as data: URIs, no script and no link out of the file.

In: the plain values of report.read_run. Out: the page's text. Every section is always there (with a line
saying why when it is empty), with the ids SECTIONS names, so a reader (and the browser test) finds each one.
"""

from __future__ import annotations

import html
import math

from mmfer.pipeline.report_figures import confusion_uri, curves_uri

SELECTIONS = {   # key: (column title, what it means); the order of the headline table's columns
    "validation": ("validation-selected (headline)",
                   "each fold's epoch chosen on its validation actors only: the number to report"),
    "last": ("last epoch", "no selection: each fold's last epoch trained"),
    "oracle": ("test-selected: ORACLE",
               "each fold's epoch with the best TEST score: optimistic, not a result; only for comparing with "
               "papers that choose the epoch on the test fold"),
}

SECTIONS = {"protocol": "Protocol", "headline": "Headline: three selections", "folds": "Per fold",
            "curves": "Training and validation curves", "confusion": "Confusion matrix",
            "per-class": "Per-class recall and F1", "misclassified": "Misclassified test clips",
            "robustness": "Robustness", "cross-corpus": "Cross-corpus", "ablation": "Ablation"}

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 40px; color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; margin-top: 28px; }
nav a { margin-right: 10px; } table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: middle; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; } .note { color: #555; font-size: 13px; }
.oracle { background: #fde8e8; color: #8a1010; } th.oracle { background: #f7caca; }
.headline { background: #e6f4e6; font-weight: 600; } th.headline { background: #cde9cd; }
.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; }
img { max-width: 100%; } td img { max-width: 160px; } code { background: #f4f4f4; padding: 0 3px; }
"""


def esc(value) -> str:
    return html.escape(str(value))


def num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def spread(stats: dict | None) -> str:
    """mean ± sample std [95% t-interval] (n), n/a where undefined (one row)."""
    if stats is None:
        return "not recorded"
    interval = "n/a" if math.isnan(stats["ci_low"]) else f"{stats['ci_low']:.3f}, {stats['ci_high']:.3f}"
    return f"{stats['mean']:.3f} ± {num(stats['std'], 3)} [{interval}]"


def table(header: list[str] | None, rows: list[list], *, classes: list[str] | None = None, raw: bool = False) -> str:
    """A table (no header row for None); cells are escaped unless `raw`; classes[i] is the class of column i."""
    classes = classes or [""] * len(header or rows[0])
    head = "".join(f'<th class="{c}">{esc(h)}</th>' for h, c in zip(header, classes)) if header else ""
    body = "".join("<tr>" + "".join(f'<td class="{c}">{cell if raw else esc(cell)}</td>' for cell, c in zip(row, classes))
                   + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def markdown_table(text: str) -> str:
    """A markdown pipe table (robustness.md, ablation.md: the commands' own tables) as HTML; other lines as notes."""
    rows, notes = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif line.strip():
            notes.append(line.strip())
    out = table(rows[0], rows[1:], classes=["l"] + [""] * (len(rows[0]) - 1)) if rows else ""
    return out + "".join(f'<p class="note">{esc(n)}</p>' for n in notes)


def actors(values: list) -> str:
    return ", ".join(map(str, values)) if len(values) <= 12 else f"{len(values)} speakers"


def render_page(report: dict) -> str:
    parts = [_protocol(report), _headline(report), _folds(report), _curves(report), _confusion(report),
             _per_class(report), _misclassified(report), *_evaluations(report), _ablation(report)]
    nav = " ".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in SECTIONS.items())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>mmfer report: {esc(report["run"])}</title>'
            f"<style>{CSS}</style></head><body><h1>mmfer run report</h1><p class=\"note\">{esc(report['run'])}</p>"
            f"<nav>{nav}</nav>{''.join(parts)}</body></html>\n")


def section(key: str, body: str) -> str:
    return f'<section id="{key}"><h2>{esc(SECTIONS[key])}</h2>{body}</section>'


def _protocol(report: dict) -> str:
    summary, config = report["summary"], report["config"]
    split = config.get("split") or {}
    seeds = sorted({f["seed"] for f in report["folds"] if f["seed"] is not None})
    facts = [("dataset", report["dataset"] or "unknown (" + (report["store_note"] or "the cache records none") + ")"),
             ("cache", config.get("cache", "?")), ("protocol", split.get("protocol", "?")),
             ("model variant", summary.get("variant", "?")), ("preset", config.get("preset", "?")),
             ("seeds", ", ".join(map(str, seeds)) or "?"), ("selection rule", summary.get("selection", "?")),
             ("spread", summary.get("std_kind", "?") + "; interval: 95% Student-t over the folds"),
             ("tuned on actors", config.get("tuned_on_actors") or "none (not a tuned config)"),
             ("device", f"{summary.get('device', '?')} ({summary.get('amp_dtype', '?')})")]
    body = table(None, [[k, v] for k, v in facts], classes=["l", "l"])
    if summary.get("optimistic"):
        body += f'<p class="warn">{esc(summary["optimistic"])}</p>'
    rows = [[f["fold"], f["fold_number"] if f["fold_number"] is not None else "", f["seed"], actors(f["train_actors"]),
             actors(f["val_actors"]),
             sum(f["val_clips_per_class"].values()) if f["val_clips_per_class"] else "?",
             actors(f["test_actors"]), f["num_test_clips"] if f["num_test_clips"] is not None else "?",
             f"{f['selected_epoch']} of {f['epochs_run']}"] for f in report["folds"]]
    body += table(["fold", "number", "seed", "train actors", "validation actors", "validation clips", "test actors",
                   "test clips", "selected epoch"], rows, classes=["l", "", "", "l", "l", "", "l", "", ""])
    return section("protocol", body)


def _selection_classes() -> list[str]:
    return [{"validation": "headline", "oracle": "oracle"}.get(k, "") for k in SELECTIONS]


def _headline(report: dict) -> str:
    agg, monitor = report["aggregate"], report["monitor"]
    metrics = list(next(v for v in agg.values() if v is not None)) if any(agg.values()) else []
    rows = [[m] + [spread(agg[k][m] if agg[k] else None) for k in SELECTIONS] for m in metrics]
    n = len(report["folds"])
    body = table(["metric (test clips)"] + [SELECTIONS[k][0] for k in SELECTIONS], rows,
                 classes=["l"] + _selection_classes())
    body += "".join(f'<p class="note"><b>{esc(title)}</b>: {esc(meaning)}.</p>' for title, meaning in SELECTIONS.values())
    body += f'<p class="note">mean ± sample std [95% t-interval] over {n} fold row(s); selections use {esc(monitor)}.</p>'
    if agg["oracle"] is None:
        body += ('<p class="note">The oracle column needs per-epoch test scores (<code>test_*</code> in each fold\'s '
                 "metrics.jsonl); this run was trained before they were recorded.</p>")
    return section("headline", body)


def _folds(report: dict) -> str:
    monitor = report["monitor"]
    header = ["fold", "seed"] + [f"{SELECTIONS[k][0]}: {monitor}" for k in SELECTIONS] + ["accuracy (validation-selected)",
                                                                                         "epoch: selected / oracle / run"]
    rows = []
    for f in report["folds"]:
        s = f["selections"]
        rows.append([f["fold"], f["seed"]] + [num(s[k][monitor]) if s[k] else "n/a" for k in SELECTIONS]
                    + [num(s["validation"]["accuracy"]),
                       f"{f['selected_epoch']} / {f['oracle_epoch'] if f['oracle_epoch'] else 'n/a'} / {f['epochs_run']}"])
    for label, key in (("mean", "mean"), ("sample std", "std"), ("95% CI low", "ci_low"), ("95% CI high", "ci_high")):
        rows.append([label, ""] + [num(report["aggregate"][k][monitor][key]) if report["aggregate"][k] else "n/a"
                                   for k in SELECTIONS] + [num(report["aggregate"]["validation"]["accuracy"][key]), ""])
    classes = ["l", ""] + _selection_classes() + ["", ""]
    return section("folds", table(header, rows, classes=classes))


def _curves(report: dict) -> str:
    images = [f'<img alt="curves of {esc(f["fold"])}" src="{curves_uri(f["records"], fold=f["fold"], monitor=report["monitor"], selected_epoch=f["selected_epoch"], oracle_epoch=f["oracle_epoch"])}">'
              for f in report["folds"] if f["records"]]
    missing = [f["fold"] for f in report["folds"] if not f["records"]]
    note = f'<p class="note">no metrics.jsonl for {esc(", ".join(missing))}</p>' if missing else ""
    return section("curves", "".join(images) + note)


def _confusion(report: dict) -> str:
    pooled = report["pooled"]
    if pooled is None:
        return section("confusion", '<p class="note">no predictions.csv in the run folder</p>')
    names = report["class_names"]
    matrix = pooled["confusion_matrix"]
    counts = table(["true \\ predicted", *names], [[names[i], *row] for i, row in enumerate(matrix)],
                   classes=["l"] + [""] * len(names))
    return section("confusion", f'<img alt="confusion matrix" src="{confusion_uri(matrix, names)}">'
                                f"<p class=\"note\">the test clips of every fold, each predicted by its own fold's model "
                                f"(validation-selected epoch); rows: true class</p>{counts}")


def _per_class(report: dict) -> str:
    pooled = report["pooled"]
    if pooled is None:
        return section("per-class", '<p class="note">no predictions.csv in the run folder</p>')
    rows = [[name, num(c["recall"]), num(c["f1"]), num(c["precision"]), c["support"]] for name, c in pooled["per_class"].items()]
    return section("per-class", table(["class", "recall", "F1", "precision", "test clips"], rows,
                                      classes=["l", "", "", "", ""]))


def _misclassified(report: dict) -> str:
    wrong = report["misclassified"]
    if wrong is None:
        return section("misclassified", '<p class="note">no predictions.csv in the run folder</p>')
    rows = []
    for r in wrong["rows"]:
        picture = f'<img alt="{esc(r["clip_id"])}" src="{r["thumbnail"]}">' if r["thumbnail"] else esc(r["thumbnail_note"])
        rows.append([picture, esc(r["clip_id"]), esc(r["fold"]), esc(r["path"]), esc(r["speaker"]), esc(r["label"]),
                     esc(r["prediction"]), num(r["confidence"], 3)])
    note = (f'<p class="note">{wrong["num_wrong"]} of {wrong["num_clips"]} test clips misclassified; '
            f'{len(wrong["rows"])} shown, the most confident first (confidence: the predicted class\'s probability)</p>')
    body = table(["frame", "clip", "fold", "path", "speaker", "truth", "prediction", "confidence"], rows, raw=True,
                 classes=["", "l", "l", "l", "l", "l", "l", ""]) if rows else ""
    return section("misclassified", note + body)


def _picture(uri: str | None, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="{uri}">' if uri else ""


def _evaluations(report: dict) -> list[str]:
    robust = [e for e in report["evaluations"] if e["kind"] == "robustness"]
    cross = [e for e in report["evaluations"] if e["kind"] == "cross-corpus"]
    body = "".join(f'<p class="note">{esc(e["folder"])}</p>{markdown_table(e["table"])}{_picture(e["plot"], "robustness")}'
                   for e in robust) or ('<p class="note">none for this run: <code>mmfer evaluate --run RUN --corrupt all '
                                        "--out RUN/robustness</code> makes one (folders inside the run are found; others: "
                                        "<code>--evaluations DIR</code>)</p>")
    rows = []
    for e in cross:
        result, m = e["result"], e["result"].get("metrics", {})
        rows.append([e["folder"], result.get("cache", "?"), result.get("dataset", "?"), ", ".join(result.get("classes", [])),
                     result.get("num_clips", "?"), num(m.get("accuracy")), num(m.get("uar")), num(m.get("f1_macro")),
                     num(m.get("f1_weighted")), result.get("num_overlap", "unchecked")])
    cross_body = (table(["evaluation", "cache", "dataset", "shared classes", "clips", "accuracy", "UAR", "macro-F1",
                         "weighted-F1", "overlap"], rows, classes=["l", "l", "l", "l"] + [""] * 6)
                  + "".join(_picture(e["plot"], "cross-corpus confusion matrix") for e in cross)) if cross else (
        '<p class="note">none for this run: <code>mmfer evaluate --run RUN --cache OTHER --out RUN/cross-OTHER</code> '
        "makes one</p>")
    return [section("robustness", body), section("cross-corpus", cross_body)]


def _ablation(report: dict) -> str:
    study = report["ablation"]
    if study is None:
        return section("ablation", '<p class="note">none: this run is not an entry of an <code>mmfer ablate</code> study '
                                   "(its folder's parent holds no ablation.md)</p>")
    return section("ablation", f'<p class="note">study {esc(study["folder"])}; this run is entry '
                               f'<b>{esc(study["entry"])}</b></p>{markdown_table(study["table"])}'
                               f'{_picture(study["plot"], "ablation")}')
