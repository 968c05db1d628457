"""The commands' own settings (demo, predict, export, evaluate, report, bench, ablate, tune), as typed dataclasses.

The stages' settings (extract, model, training, split) are the floor's, in `core/config.py`; these are read
only by the commands in this folder. `pipeline/flags.py` turns both into the CLI's flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmfer.core.config import check_finite
from mmfer.core.labels import CREMA_D_ACTORS, RAVDESS_NUM_ACTORS


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo_data"
    """Folder to write the demo tree into."""
    layout: Literal["ravdess", "crema-d"] = "ravdess"
    """ravdess: Actor_XX/*.mp4, 8 emotions; crema-d: VideoFlash/*.flv + AudioWAV/*.wav + VideoDemographics.csv, 6 emotions, actors 1001..."""
    seed: int = 0
    """Same seed, same clips."""
    num_actors: int = 24
    """Actors (Actor_01 ..; CREMA-D ids spread over its 5 fold blocks: 1001, 1019, ...); 24 gives RAVDESS's full 6-fold protocol, 5 or more every fold of CREMA-D's."""
    clips_per_emotion: int = 2
    """Clips per actor and emotion."""
    size_px: int = 112
    """Frame width and height."""
    duration_s: float = 2.0
    """Clip length."""
    overwrite: bool = False
    """Write into a non-empty --out (demo clips replace files of the same names); default: refuse."""

    def __post_init__(self) -> None:
        check_finite(self, "")
        most = RAVDESS_NUM_ACTORS if self.layout == "ravdess" else len(CREMA_D_ACTORS)
        if not 1 <= self.num_actors <= most:
            raise ValueError(f"num_actors must be in 1..{most} for layout {self.layout}, got {self.num_actors}")
        if self.clips_per_emotion < 1 or self.size_px < 32 or self.duration_s <= 0:
            raise ValueError("clips_per_emotion >= 1, size_px >= 32 and duration_s > 0 are required")


@dataclass(frozen=True)
class PredictConfig:
    run: str | None = None
    """A train-fusion run folder (reads its cache's encoder records); give --run or --model."""
    model: str | None = None
    """A model folder written by `mmfer export`; give --run or --model."""
    fold: str | None = None
    """One fold model: its protocol fold number (as in train-fusion --folds; an untrained one is refused) or name (default: the only fold, or the ensemble)."""
    ensemble: bool = False
    """Average the probabilities of every fold model."""
    out: str | None = None
    """Write every probability to FILE.csv or FILE.json."""
    window_s: float | None = None
    """Predict over windows of this many seconds; writes an emotion timeline (CSV + PNG)."""
    hop_s: float | None = None
    """Seconds between window starts (default: the window length, no overlap)."""
    stream: str | None = None
    """Predict windows of one source as it is decoded (with --window): a file, a webcam (0 or /dev/videoN) or any URL ffmpeg reads; prints a JSON line per window, Ctrl-C stops and keeps the timeline."""
    faces: Literal["largest", "all"] = "largest"
    """largest: one crop per clip, the model's own face crop (the most certain face with detect); all: detect every face, track it over the sampled frames (IoU) and predict each track from its own crops: a row per face with its box and time span, a timeline line per face (frames where a track is not detected reuse its boxes interpolated from its nearest detections)."""
    cache: str | None = None
    """With --run: the run's feature store, if it moved (only runs trained before checkpoints carried their FeatureSpec need it)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    visual_encoder: str | None = None
    """Load the SigLIP2 encoder from here instead of the recorded name (its weights must match)."""
    audio_encoder: str | None = None
    """Load the audio encoder from here instead of the recorded name (its weights must match)."""
    models_dir: str | None = None
    """Folder searched for the model's encoders (SigLIP2 and transformers FastConformer folders by weights hash, .nemo files by name) when they are not where the run recorded them; default: $MMFER_MODELS."""
    allow_encoder_mismatch: bool = False
    """Predict even when the encoders differ from those the model was trained on."""
    runtime: Literal["torch", "onnx"] = "torch"
    """What runs the fold models: torch, or onnx (onnxruntime on the CPU; a --model folder exported with --onnx, pip install 'mmfer[onnx]'); with --onnx-encoders in the export, the encoders run in onnxruntime too."""

    def __post_init__(self) -> None:
        for name in ("window_s", "hop_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")


@dataclass(frozen=True)
class ExportConfig:
    run: str = ""
    """A train-fusion run folder (required)."""
    out: str = ""
    """The model folder to write (required; must not exist or be empty)."""
    fold: str | None = None
    """One fold model: its protocol fold number (as in train-fusion --folds; an untrained one is refused) or name."""
    ensemble: bool = False
    """Every fold model (predict averages them). Default with several folds."""
    cache: str | None = None
    """The run's feature store, if it moved."""
    include_encoders: bool = False
    """Copy the encoder files into the folder (a SigLIP2 folder, a .nemo file), so predict needs nothing else; default: name them by id and weights hash (predict finds them with --models-dir)."""
    onnx: bool = False
    """Also write each fold model as ONNX (onnx/<fold>.onnx; dynamic batch, frame and audio-frame axes) for `predict --runtime onnx` (pip install 'mmfer[onnx]')."""
    onnx_encoders: bool = False
    """Also write the SigLIP2 vision tower and the audio encoder as ONNX (onnx/encoders/), so `predict --runtime onnx` runs without PyTorch models; implies --onnx."""


@dataclass(frozen=True)
class EvaluateConfig:
    run: str = ""
    """A train-fusion run folder (required)."""
    cache: str = ""
    """Another dataset's feature store, extracted with the run's encoders and settings (required without --corrupt; with --corrupt: the run's own store, if it moved)."""
    label_map: str | None = None
    """YAML {cache label: run label}; default: the classes both name alike, reading DFEW's and MAFW's fear, surprise, anger, happiness, sadness as RAVDESS's fearful, surprised, angry, happy, sad (RAVDESS and CREMA-D share 6 classes, RAVDESS and DFEW or MAFW 7)."""
    out: str = "evaluation"
    """Folder for metrics.json, predictions.csv and the confusion matrix (with --corrupt: robustness.csv/.md/.png)."""
    fold: str | None = None
    """One fold model: its protocol fold number (as in train-fusion --folds; an untrained one is refused) or name; default: the ensemble of every fold model (with --corrupt: every fold model)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    batch_size: int = 16
    """Clips per forward pass (cross-corpus; --corrupt uses the run's batch size, as its own test pass did)."""
    corrupt: str | None = None
    """Robustness instead of cross-corpus: each fold model on its own test clips, clean and under each of these comma-separated corruptions (no-audio, no-video, audio-snr-20, audio-snr-10, audio-snr-0, frame-drop-50 on the cached features; face-crop-off re-extracts the test clips' frames without the face crop) or all (every cached-feature one); writes robustness.csv/.md/.png."""
    seed: int = 0
    """Seed of the noise that --corrupt adds (the same seed gives the same table)."""
    allow_overlap: bool = False
    """Score a cross-corpus --cache even when it holds clips (same source files) that the fold models trained or validated on; the count is reported beside the score. Default: refuse."""
    overwrite: bool = False
    """Write into a --out that already holds files (an earlier evaluation's are replaced); default: refuse."""
    visual_encoder: str | None = None
    """With --corrupt face-crop-off: load the SigLIP2 encoder from here instead of the recorded name (its weights must match)."""
    audio_encoder: str | None = None
    """With --corrupt face-crop-off: load the audio encoder from here instead of the recorded name (its weights must match)."""
    models_dir: str | None = None
    """With --corrupt face-crop-off: folder searched for the run's encoders when they are not where it recorded them; default: $MMFER_MODELS."""


@dataclass(frozen=True)
class ReportConfig:
    run: str = ""
    """A train-fusion run folder (required)."""
    out: str | None = None
    """The HTML file to write (default: RUN/report.html)."""
    evaluations: str | None = None
    """Comma-separated folders written by `mmfer evaluate` (cross-corpus or --corrupt) for this run, shown beside its own tables; folders inside RUN that hold them are found without this."""
    max_clips: int = 48
    """Misclassified test clips listed (the most confident first), each with a frame thumbnail."""
    thumbnails: bool = True
    """Decode one frame of each listed clip from its media file (--no-thumbnails: list the clips only)."""
    screenshot: str | None = None
    """Also write a PNG screenshot of the report's top (headless Chromium, e.g. for the docs)."""

    def __post_init__(self) -> None:
        if self.max_clips < 0:
            raise ValueError(f"max_clips must be >= 0, got {self.max_clips}")


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    clips: int = 8
    """Demo clips to measure on (full size on a 2-core CPU takes about 30 s per clip); at least 2."""
    preset: Literal["full", "tiny"] = "full"
    """full: real architectures with random weights; tiny: the tiny stand-ins (fast)."""
    json: str | None = None
    """Also write the results as JSON to this file."""
    work_dir: str | None = None
    """Parent of the temporary folder (default: the system temp)."""
    keep: bool = False
    """Keep the temporary folder (clips, encoders, stores, logs)."""
    scale_out: bool = True
    """Part 6: time extract again as 2 torchrun processes on the same clips (--no-scale-out skips it)."""

    def __post_init__(self) -> None:
        if self.clips < 2:
            raise ValueError(f"clips must be at least 2 (scaling needs two clip counts), got {self.clips}")


@dataclass(frozen=True)
class AblateConfig:
    out: str = "runs/ablate"
    """Study folder: one run folder per entry x seed, ablation.csv/.md/.png."""
    seeds: int = 1
    """Seeds per entry: seed .. seed+N-1."""
    entries: str | None = None
    """YAML file of entries to run (default: DEFAULT_ENTRIES in train/studies/ablate.py)."""
    only: str | None = None
    """Comma-separated entry names to run (e.g. audio,visual,early,full)."""
    keep_checkpoints: bool = False
    """Keep each run's checkpoints (default: delete them after the run)."""
    workers: int = 1
    """Jobs (entry x seed) trained at once on this machine, each in its own process; several machines may share --out."""
    devices: str | None = None
    """Comma-separated devices the --workers take in turn (e.g. cuda:0,cuda:1); default: --device for every worker."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")


@dataclass(frozen=True)
class TuneConfig:
    trials: int = 0
    """Finished trials the study should hold (required; a resumed study runs only the rest)."""
    study_dir: str = "runs/tune"
    """study.db, trials/, best_config.yaml, optimization_history.png."""
    storage: str | None = None
    """Optuna storage that several machines share: an RDB URL (postgresql://...) or a journal file path; default: SQLite <study_dir>/study.db."""
    keep_checkpoints: bool = False
    """Keep each trial's checkpoints (default: delete them)."""

    def __post_init__(self) -> None:
        if self.trials < 0:
            raise ValueError(f"trials must be >= 1, got {self.trials}")

