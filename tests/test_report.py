"""`mmfer report`: the page of a real tiny run (2 folds x 3 epochs on the demo cache, trained through the
`train-fusion` command, which writes RUN/report.html itself), opened in headless Chromium.

The browser checks: every section renders, every image decodes (naturalWidth > 0, read back from the DOM),
and no request leaves the file (Chromium's net log holds no request made by the page; a page that does
make one is caught, so the check can fail). Chromium is Debian's `chromium` package (.ci/run installs it).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from train_helpers import ONE_THREAD_ARG

from mmfer.pipeline.cli import main as mmfer_main
from mmfer.pipeline.report_page import SECTIONS

ENTRY = "full-0123456789ab"   # the run sits in an ablate-style study folder: entry name, then a config hash


def mmfer(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = mmfer_main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def run(demo_cache, tmp_path_factory) -> Path:
    """fold1 tests actor 1 (validates on 2), fold2 tests actor 3 (validates on 4); 3 epochs."""
    root = tmp_path_factory.mktemp("report_run")
    fold_file = root / "folds.json"
    fold_file.write_text(json.dumps([{"name": "fold1", "test_actors": [1], "val_actors": [2]},
                                     {"name": "fold2", "test_actors": [3], "val_actors": [4]}]))
    run = root / "study" / ENTRY
    code, printed = mmfer("train-fusion", "--cache", demo_cache, "--out", run, "--preset", "tiny", "--device", "cpu",
                          "split.protocol=file", f"split.fold_file={fold_file}", "model.visual.num_keep_tokens=8",
                          "training.max_epochs=3", "training.warmup_epochs=1", "training.batch_size=4",
                          "training.gradient_accumulation_steps=1", ONE_THREAD_ARG)
    assert code == 0
    assert f"report: {run / 'report.html'}" in printed, printed   # train-fusion's own report
    return run


def chromium() -> str:
    from mmfer.pipeline.browser import BrowserError, find_chromium

    try:
        return find_chromium()
    except BrowserError as err:
        pytest.fail(f"the report's browser test needs headless Chromium: {err} (.ci/run installs it when missing)")


IMAGE_PROBE = ("<script>addEventListener('load', () => { const im = [...document.images]; "
               "document.body.dataset.images = im.length; "
               "document.body.dataset.decoded = im.filter(i => i.complete && i.naturalWidth > 0).length; });</script>")


def open_in_chromium(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """(the DOM after load, with the probe's image counts on <body>; the URLs of requests the page made), from
    a copy of `page` with IMAGE_PROBE added (the report itself carries no script)."""
    from mmfer.pipeline.browser import run_chromium

    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    net_log = tmp_path / f"{page.stem}.netlog.json"
    dom = run_chromium(probed, "--dump-dom", "--virtual-time-budget=5000", net_log=net_log)
    return dom, page_requests(net_log)


def page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for. Chromium's own background requests (updates, accounts) carry the initiator
    'not an origin' and no file:// isolation key; a request made by a file:// page carries both of the page's."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"] if e["type"] == start and "url" in e.get("params", {})
            and (e["params"].get("initiator") != "not an origin"
                 or "file://" in e["params"].get("network_isolation_key", ""))]


def test_the_leak_check_sees_a_page_that_fetches(tmp_path):
    chromium()
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<html><body><img src="http://example.com/x.png">'
                     '<link rel="stylesheet" href="https://cdn.example.org/a.css"></body></html>')
    _, requests = open_in_chromium(leaky, tmp_path)
    assert sorted(requests) == ["http://example.com/x.png", "https://cdn.example.org/a.css"], requests


def test_three_selections_come_from_the_runs_own_records(run):
    from mmfer.pipeline.command_config import ReportConfig
    from mmfer.pipeline.report import read_run

    summary = json.loads((run / "summary.json").read_text())
    report = read_run(run, ReportConfig(run=str(run), thumbnails=False))
    for fold in report["folds"]:
        records, metrics = fold["records"], summary["folds"][fold["fold"]]
        assert len(records) == metrics["epochs_run"] == 3
        chosen = records[fold["selected_epoch"] - 1]   # this epoch's recorded test score is the summary's
        assert chosen["test_f1_macro"] == pytest.approx(metrics["f1_macro"], abs=1e-6)
        assert records[-1]["test_f1_macro"] == pytest.approx(metrics["last_epoch"]["f1_macro"], abs=1e-6)
        s = fold["selections"]
        assert s["oracle"]["f1_macro"] == max(r["test_f1_macro"] for r in records)
        assert s["oracle"]["f1_macro"] >= max(s["validation"]["f1_macro"], s["last"]["f1_macro"])
        assert records[fold["oracle_epoch"] - 1]["test_f1_macro"] == s["oracle"]["f1_macro"]
    mean = report["aggregate"]["validation"]["f1_macro"]
    assert mean["mean"] == pytest.approx(summary["mean"]["f1_macro"]) and mean["std"] == pytest.approx(summary["std"]["f1_macro"])
    assert mean["ci_low"] < mean["mean"] < mean["ci_high"] and mean["n"] == 2
    predictions = pd.read_csv(run / "predictions.csv")
    wrong = report["misclassified"]
    assert wrong["num_wrong"] == int((predictions["label"] != predictions["prediction"]).sum())
    assert [r["confidence"] for r in wrong["rows"]] == sorted((r["confidence"] for r in wrong["rows"]), reverse=True)
    assert all(r["path"].endswith(".mp4") and r["speaker"] in ("1", "3") for r in wrong["rows"])


@pytest.mark.slow   # a headless Chromium process: ~11 s of the fast tier on 2 cores
def test_report_renders_in_chromium_with_every_section_and_no_request(run, demo_cache, tmp_path):
    from mmfer.train.studies.ablate import format_markdown, summarize, write_outputs

    chromium()
    # the run's other tables, made by the real commands: robustness inside the run, cross-corpus elsewhere
    # (named with --evaluations), and the ablation table of the study folder the run sits in
    assert mmfer("evaluate", "--run", run, "--corrupt", "no-audio", "--out", run / "robustness", "--device", "cpu")[0] == 0
    cross = tmp_path / "cross"
    assert mmfer("evaluate", "--run", run, "--cache", demo_cache, "--allow-overlap", "--out", cross, "--device", "cpu")[0] == 0
    rows = summarize({"full": [(0, json.loads((run / "summary.json").read_text()))]}, "full")
    write_outputs(rows, format_markdown(rows, "full"), run.parent)

    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    code, printed = mmfer("report", run, "--out", page, "--evaluations", cross, "--screenshot", shot)
    assert code == 0 and f"wrote {page}" in printed
    assert re.search(r"f1_macro over 2 fold row\(s\): validation-selected \(headline\) [\d.]+ ± [\d.]+ \[.*\] \| "
                     r"last epoch .* \| test-selected: ORACLE [\d.]+", printed), printed
    text = page.read_text()
    # nothing outside the file: every src and href is inline data or a link inside the page
    links = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links), \
        [link[:60] for link in links if not link.startswith(("data:", "#"))]
    assert "<script" not in text

    dom, requests = open_in_chromium(page, tmp_path)
    assert requests == [], f"the report made requests: {requests}"
    for key, title in SECTIONS.items():
        assert f'<section id="{key}"><h2>{title}</h2>' in dom, key
    for missing in ("none for this run", "none: this run is not"):
        assert missing not in dom   # robustness, cross-corpus and ablation each found theirs
    body = re.search(r"<body[^>]*>", dom).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    decoded = int(re.search(r'data-decoded="(\d+)"', body).group(1))
    num_wrong = len(re.findall(r'<img alt="01-', dom))   # one thumbnail per misclassified clip
    # 2 fold curves + confusion + thumbnails + robustness plot + cross-corpus confusion + ablation plot
    assert num_wrong > 0 and images == 2 + 1 + num_wrong + 3 and decoded == images, body
    assert "ORACLE" in dom and f"this run is entry <b>{ENTRY.rsplit('-', 1)[0]}</b>" in dom

    import matplotlib.image

    pixels = matplotlib.image.imread(shot)   # kept in tmp_path beside the page
    assert pixels.shape[:2] == (1800, 1280) and pixels.std() > 0.05, (pixels.shape, pixels.std())


def test_a_moved_run_and_missing_media_are_said_in_the_page(run, tmp_path):
    from mmfer.pipeline.command_config import ReportConfig
    from mmfer.pipeline.report import misclassified, read_run

    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("checkpoints", "tb", "robustness", "report.html"))
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config.update(cache=str(tmp_path / "gone"), cache_location={"resolved": str(tmp_path / "gone")})
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    code, printed = mmfer("report", moved)
    assert code == 0
    text = (moved / "report.html").read_text()
    assert "the run&#x27;s cache is gone" in text and "none: this run is not an entry" in text

    predictions = pd.read_csv(run / "predictions.csv", dtype={"clip_id": str})
    clips = pd.DataFrame({"clip_id": predictions["clip_id"], "path": str(tmp_path / "deleted.mp4"), "actor": 1})
    names = tuple(read_run(run, ReportConfig(run=str(run), thumbnails=False))["class_names"])
    rows = misclassified(predictions, clips, names, max_clips=3, thumbnails=True, store_note="")["rows"]
    assert rows and all(r["thumbnail"] is None and r["thumbnail_note"] == f"media not found: {tmp_path / 'deleted.mp4'}"
                        for r in rows)


def test_report_refuses_a_folder_that_is_not_a_finished_run(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    assert mmfer_main(["report", str(tmp_path / "half")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no summary.json" in err and str(tmp_path / "half") in err
    assert mmfer_main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "half" / "summary.json").write_text("{")
    assert mmfer_main(["report", str(tmp_path / "half")]) == 2
    assert "summary.json: not valid JSON" in capsys.readouterr().err
    (tmp_path / "half" / "summary.json").write_text("{}")
    assert mmfer_main(["report", str(tmp_path / "half")]) == 2
    assert "holds no per-fold results" in capsys.readouterr().err
    (tmp_path / "half" / "summary.json").write_text('{"folds": {"fold1": {}}}')
    assert mmfer_main(["report", str(tmp_path / "half"), "--evaluations", str(tmp_path / "eval")]) == 2
    assert f"{tmp_path / 'eval'}: no such folder (--evaluations)" in capsys.readouterr().err
    (tmp_path / "eval").mkdir()
    assert mmfer_main(["report", str(tmp_path / "half"), "--evaluations", str(tmp_path / "eval")]) == 2
    assert "holds neither robustness.csv nor metrics.json" in capsys.readouterr().err


def test_spread_with_seeds_is_over_folds_each_the_mean_of_its_seeds():
    """Two folds x two seeds are two samples (a fold's seeds share its test clips): the interval's n is 2, its
    std that of the two fold means, not of the four rows."""
    from mmfer.pipeline.report import aggregate
    from mmfer.train.studies.stats import mean_std_ci

    values = {(1, 7): 0.5, (1, 8): 0.7, (2, 7): 0.9, (2, 8): 0.9}
    rows = [{"fold": f"fold{number}-seed{seed}", "fold_number": number, "seed": seed,
             "selections": {"validation": {"f1_macro": v}, "last": None, "oracle": None}}
            for (number, seed), v in values.items()]
    got = aggregate(rows, ("f1_macro",))
    expected = mean_std_ci([0.6, 0.9])
    assert got["validation"]["f1_macro"] == pytest.approx(expected) and got["validation"]["f1_macro"]["n"] == 2
    assert got["last"] is None and got["oracle"] is None
    # the fold is the card's protocol number, whatever the folders are called
    renamed = aggregate([{**r, "fold": name} for r, name in zip(rows, "abcd")], ("f1_macro",))
    assert renamed["validation"]["f1_macro"] == pytest.approx(expected)
    # one seed per fold: the rows are the folds, as before (a card without numbers: each row its own fold)
    one_seed = aggregate([{**r, "fold": r["fold"].split("-")[0], "fold_number": None} for r in rows if r["seed"] == 7],
                         ("f1_macro",))
    assert one_seed["validation"]["f1_macro"] == pytest.approx(mean_std_ci([0.5, 0.9]))
