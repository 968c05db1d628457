#!/usr/bin/env bash
# The whole chain: demo data (or --root PATH for real RAVDESS) -> extract -> train-fusion -> results table.
#   bash run_all.sh                 # demo: 24 actors x 8 emotions x 2 clips, tiny encoders, 6-fold CV on CPU
#   bash run_all.sh --root DATA     # real RAVDESS with the pretrained encoders (GPU recommended)
# Expected for the demo on a quiet 2-core CPU (measured in a fresh clone): demo data ~1 min, extract ~2 min
# (384 clips), train-fusion (6 folds x up to 30 epochs) ~11 min; it ends with the results table,
# mean macro-F1 0.897 over the 6 folds (README "Demo result"; the report's headline),
# and the run's report, work/runs/lfm2/report.html (+ report.png, its top, when Chromium is installed).
set -euo pipefail
ROOT=""
WORK="${MMFER_WORK:-work}"
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    *) echo "unknown option $1 (use --root PATH, --work DIR)" >&2; exit 2 ;;
  esac
done
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"   # read when transformers is imported: set before any command
if [ -z "$ROOT" ]; then
  # a rerun keeps the demo it made (make-demo refuses a non-empty --out; extract then skips finished clips)
  [ -d "$WORK/demo_data" ] || mmfer make-demo --out "$WORK/demo_data"
  extract --dataset ravdess --root "$WORK/demo_data" --out "$WORK/cache" --preset tiny --models-dir "$WORK/models"
  mmfer cache-info "$WORK/cache"
  train-fusion --cache "$WORK/cache" --out "$WORK/runs/lfm2" --preset tiny
else
  extract --dataset ravdess --root "$ROOT" --out "$WORK/cache"
  mmfer cache-info "$WORK/cache"
  train-fusion --cache "$WORK/cache" --out "$WORK/runs/lfm2"
fi
# train-fusion wrote the report (RUN/report.html); its top as a picture for docs/results.md when Chromium is here
if command -v chromium >/dev/null 2>&1; then
  mmfer report "$WORK/runs/lfm2" --screenshot "$WORK/runs/lfm2/report.png"
else
  echo "report: $WORK/runs/lfm2/report.html (install chromium for its screenshot: mmfer report RUN --screenshot FILE.png)"
fi
