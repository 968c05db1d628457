"""The stages' settings (extract, model, training, split), as typed dataclasses: the one place where their
defaults are written. The commands' own settings (predict, export, ...) are in `pipeline/command_config.py`.

The CLI (`pipeline/flags.py`) is generated from these classes, YAML files and `key=value` overrides only
override them (`core/overrides.py`), and `__post_init__` checks that fields agree. Presets are named
override sets (`TINY_*_OVERRIDES`), not second copies of the defaults. "The design guide" in the field docs
is the training recipe this project implements: docs/design-guide/ (an English summary and the original).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from mmfer.core.labels import NUM_CLASSES


def check_finite(cfg: object, section: str) -> None:
    """Refuse nan and inf in every float field (and float tuple) of a config section; names the field."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{section + '.' if section else ''}{f.name} must be a finite number, got {value}")


# ---------------------------------------------------------------------------------------------------
# Stage 1: extract
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractConfig:
    dataset: Literal["ravdess", "crema-d", "dfew", "mafw", "manifest"] = "ravdess"
    """Dataset adapter that turns --root (or --manifest) into a manifest (README "Datasets")."""
    root: str = ""
    """Dataset folder; empty: the data home's <dataset> folder ($MMFER_DATA/<dataset>, else ~/.cache/mmfer/datasets/<dataset>; `mmfer download` fills it) (RAVDESS: the Actor_01..Actor_24 folders; CREMA-D: the folder holding VideoFlash; DFEW, MAFW: the official release's top folder)."""
    manifest: str | None = None
    """--dataset manifest: a .csv or .jsonl file, one row per clip (clip_id, video_path, label, speaker, ...)."""
    labels: str | None = None
    """--dataset manifest: comma-separated label names fixing the classes and their order (default: the names found, sorted)."""
    out: str = "cache"
    """Output feature store (a Zarr v3 folder); created if absent, completed if present."""
    preset: Literal["full", "tiny"] = "full"
    """full: the pretrained encoders named below; tiny: small random encoders of the same classes, saved to --models-dir (demo, tests, no download)."""
    models_dir: str = "models"
    """Where --preset tiny writes (once) and loads its tiny encoders."""
    visual_encoder: str = "google/siglip2-base-patch16-224"
    """SigLIP2 vision encoder: Hugging Face id or local directory."""
    visual_revision: str | None = None
    """Hub revision (branch, tag or commit) of --visual-encoder; recorded in the store."""
    audio_encoder: str = "nvidia/stt_en_fastconformer_ctc_large"
    """FastConformer ASR checkpoint: NGC/HF name, a local .nemo file (NeMo), or a transformers FastConformer folder (`mmfer convert-encoder`; no NeMo needed)."""
    num_frames: int = 16
    """Tv: frames sampled at uniform timestamps over each clip."""
    sample_rate_hz: int = 16_000
    """Audio is resampled to this rate, mono, before the audio encoder."""
    max_audio_s: float = 20.0
    """Audio longer than this is cut (RAVDESS clips are 3-5 s); the store records the true duration."""
    face_crop: Literal["none", "center", "detect"] = "detect"
    """Crop before the visual encoder: none (full frame), center (central square) or detect (OpenCV Haar face box, smoothed over the clip)."""
    decode_timeout_s: float = 120.0
    """Each ffmpeg call is killed after this many seconds and the clip is marked failed with reason timeout."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (cuda when available)."""
    batch_size: int = 4
    """Clips per encoder batch (x num_frames frames for SigLIP2)."""
    num_workers: int = 2
    """Decoding worker processes that run ahead of the encoders."""
    dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the token arrays."""
    token_pool: int = 1
    """Average the visual patch grid in k x k blocks before storing (2: 196 -> 49 tokens per frame, 4x smaller); 1 keeps every patch."""
    token_dtype: Literal["float", "int8"] = "float"
    """Visual tokens stored as --dtype floats, or as int8 with one scale per token (2x smaller than float16); training reads both."""
    views: int = 0
    """Augmented views stored per clip besides the clean one (video crop/flip/colour jitter, audio tempo/pitch/noise); 0 = none."""
    vocal_channels: Literal["speech", "song", "both"] = "speech"
    """RAVDESS vocal channel to select."""
    select: str | None = None
    """Only clips whose clip_id matches this glob (e.g. '*-12' for actor 12)."""
    limit: int | None = None
    """Only the first N selected clips (in clip_id order)."""
    overwrite: bool = False
    """Replace features made with another encoder/preprocessing instead of refusing."""
    strict: bool = False
    """Exit non-zero when any clip failed (default: only when none succeeded)."""

    def __post_init__(self) -> None:
        check_finite(self, "")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.token_pool < 1:
            raise ValueError(f"token_pool must be >= 1, got {self.token_pool}")
        if self.views < 0:
            raise ValueError(f"views must be >= 0, got {self.views}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.decode_timeout_s <= 0 or self.max_audio_s <= 0:
            raise ValueError("decode_timeout_s and max_audio_s must be > 0")


# ---------------------------------------------------------------------------------------------------
# Stage 2: the model
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisualBranchConfig:
    num_keep_tokens: int = 64
    """K: patch tokens kept per frame by the ROI step."""
    roi_dim: int = 256
    """Narrow width in which the ROI step scores and attends over the P patch tokens (keeps its cost low)."""
    out_dim: int = 768
    """Width of the visual feature sequence (768 = SigLIP2-base width, as the design guide's Linear(768, 8))."""
    temporal_depth: int = 6
    """Transformer layers over time."""
    num_heads: int = 8
    """Attention heads in the temporal encoder."""
    max_frames: int = 64
    """Longest clip, in sampled frames, the time embedding covers."""
    num_segments: int = 16
    """Lv: time segments the visual sequence is pooled into (16 = one per frame at 16 frames; tokens LFM2 sees)."""


@dataclass(frozen=True)
class AudioBranchConfig:
    feature_dim: int = 512
    """Width of the audio branch (the design guide's feature_dim)."""
    num_layers: int = 4
    """Light transformer layers over the FastConformer frames."""
    num_heads: int = 8
    """Attention heads in the audio layers."""
    num_segments: int = 8
    """Segment tokens the audio sequence is pooled into."""
    max_frames: int = 512
    """Longest audio, in 80 ms encoder frames, the position table covers (512 = 41 s)."""


@dataclass(frozen=True)
class FusionConfig:
    pretrained_model: str = "LiquidAI/LFM2-700M"
    """LFM2 checkpoint (hub id or local directory) whose first layers form the fusion backbone."""
    use_pretrained: bool = True
    """Load its pretrained weights; False builds the same architecture with random weights."""
    num_layers: int = 6
    """First LFM2 layers kept (LFM2-700M: conv, conv, attention, conv, conv, attention)."""
    mode: Literal["finetune", "frozen", "lora"] = "finetune"
    """How LFM2 trains: all weights, none (freeze_backbone), or LoRA adapters only."""
    lora_rank: int = 8
    """LoRA rank when mode=lora."""
    lora_alpha: int = 16
    """LoRA scaling when mode=lora."""
    gradient_checkpointing: bool = False
    """Recompute LFM2 layer activations in backward to save memory."""
    tiny_hidden_size: int = 0
    """>0 builds a tiny random LFM2 of this width instead of loading pretrained_model's config (tests, demo)."""


@dataclass(frozen=True)
class ModelConfig:
    variant: Literal["lfm2", "early", "audio", "visual"] = "lfm2"
    """lfm2: full model; early: concatenated pooled branch features -> MLP; audio / visual: one branch only."""
    num_classes: int = NUM_CLASSES
    """C: emotion classes; train-fusion sets it from the cache's label_names."""
    visual: VisualBranchConfig = field(default_factory=VisualBranchConfig)
    audio: AudioBranchConfig = field(default_factory=AudioBranchConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    @property
    def uses_audio(self) -> bool:
        """The variant reads the audio tokens (lfm2, early, audio)."""
        return self.variant != "visual"

    @property
    def uses_video(self) -> bool:
        """The variant reads the visual tokens (lfm2, early, visual)."""
        return self.variant != "audio"

    @property
    def is_fused(self) -> bool:
        """The variant combines both branches (lfm2, early): contrastive and auxiliary losses apply."""
        return self.uses_audio and self.uses_video

    @property
    def uses_lfm2(self) -> bool:
        """The variant has the truncated LFM2 trunk (and so its fusion modes)."""
        return self.variant == "lfm2"


# ---------------------------------------------------------------------------------------------------
# Stage 2: the recipe (keys as in the design guide's `training:` YAML block)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 4
    """Clips per step."""
    gradient_accumulation_steps: int = 4
    """Steps per optimizer update (effective batch = batch_size x this)."""
    max_epochs: int = 100
    """Upper bound on epochs (early stopping usually ends sooner)."""
    optimizer: Literal["AdamW"] = "AdamW"
    """Optimizer (the design guide's)."""
    lr: float = 1e-4
    """Learning rate of the classifier heads."""
    lr_fusion: float = 5e-5
    """Learning rate of the fusion backbone (LFM2) and its projections."""
    lr_branches: float = 1e-4
    """Learning rate of the audio/visual branches. The guide's 1e-5 assumes pretrained branches; from scratch 1e-4 trains them (set 1e-5 with --audio-branch/--visual-branch)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    scheduler: Literal["CosineAnnealingWarmRestarts", "ReduceLROnPlateau", "none"] = "CosineAnnealingWarmRestarts"
    """Learning-rate schedule after warmup."""
    warmup_epochs: int = 5
    """Linear warmup from lr/100 to lr over these epochs."""
    cosine_t0: int = 10
    """CosineAnnealingWarmRestarts T_0 (epochs)."""
    cosine_t_mult: int = 2
    """CosineAnnealingWarmRestarts T_mult."""
    eta_min: float = 1e-6
    """CosineAnnealingWarmRestarts eta_min."""
    plateau_factor: float = 0.5
    """ReduceLROnPlateau factor (mode max on the monitored metric)."""
    plateau_patience: int = 5
    """ReduceLROnPlateau patience (epochs)."""
    loss: Literal["CrossEntropyLoss"] = "CrossEntropyLoss"
    """Classification loss (the design guide's)."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing."""
    class_weights: str = "none"
    """none, auto (inverse class frequency of the training split) or 8 comma-separated weights."""
    loss_weight_fusion: float = 1.0
    """Weight of the fused classifier's loss."""
    loss_weight_audio: float = 0.3
    """Weight of the auxiliary audio classifier's loss (0 turns it off)."""
    loss_weight_visual: float = 0.3
    """Weight of the auxiliary visual classifier's loss (0 turns it off)."""
    contrastive_weight: float = 0.0
    """Weight of the audio-visual InfoNCE loss (0 = off)."""
    contrastive_temperature: float = 0.07
    """InfoNCE temperature."""
    dropout: float = 0.1
    """Dropout in the trainable modules."""
    mixup_alpha: float = 0.2
    """Mixup Beta(alpha, alpha) on cached features and labels (0 = off)."""
    video_frame_drop: float = 0.0
    """Training only: probability that each visual frame is dropped (masked out of attention; one always stays)."""
    video_time_mask: float = 0.0
    """Training only: longest share of the visual frames hidden in one contiguous block (set to the training mean)."""
    patch_drop: float = 0.0
    """Training only: probability that each SigLIP2 patch token of a frame is replaced by the training mean."""
    audio_time_mask: float = 0.0
    """Training only: SpecAugment time mask, longest share of a clip's audio frames hidden in one block."""
    audio_channel_mask: float = 0.0
    """Training only: SpecAugment channel mask, longest share of the audio channels (Da) hidden in one block."""
    modality_dropout: float = 0.0
    """Training only: per clip with both, drop audio with this probability, else video with it (learned missing embedding; <= 0.5)."""
    feature_noise: float = 0.0
    """Training only: std of Gaussian noise added to the standardized cached tokens (0 = off)."""
    cutmix_prob: float = 0.0
    """Training only: probability that a batch uses CutMix in time (a block of frames from a partner clip, labels mixed by share) instead of mixup."""
    cutmix_alpha: float = 1.0
    """CutMix share of the clip's own frames ~ Beta(alpha, alpha)."""
    view_sampling: Literal["clean", "uniform"] = "clean"
    """Training only: clean, or uniform = per clip and epoch one of the clean + K views of `extract --views K`, seeded by (seed, epoch, clip)."""
    gradient_clip: float = 1.0
    """Max gradient norm (after unscaling)."""
    mixed_precision: bool = True
    """AMP on CUDA (bf16 where supported, else fp16 with GradScaler); always fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (LFM2 and temporal layers) to save GPU memory."""
    early_stopping_patience: int = 15
    """Epochs without improvement of the monitored metric before stopping."""
    early_stopping_min_delta: float = 0.001
    """Smallest improvement that counts."""
    monitor: Literal["f1_macro", "accuracy", "uar", "f1_weighted"] = "f1_macro"
    """Validation metric for early stopping, best checkpoint and ReduceLROnPlateau (mode max)."""
    tie_break: Literal["val_nll", "none"] = "val_nll"
    """When the validation metric ties the best (not lower, gain < min delta): val_nll = the epoch with the lower validation cross-entropy is the new best (and resets patience); none = the earliest stays."""
    curriculum: str | None = None
    """A previous run's predictions.csv: train on its most confident (easy) clips first."""
    curriculum_epochs: int = 5
    """Epochs over which the curriculum grows from the easiest half to all clips."""

    def __post_init__(self) -> None:
        check_finite(self, "training")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("training.batch_size and training.gradient_accumulation_steps must be >= 1")
        if self.max_epochs < 1:
            raise ValueError(f"training.max_epochs must be >= 1, got {self.max_epochs}")
        for name in ("lr", "lr_fusion", "lr_branches", "gradient_clip", "contrastive_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"training.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "mixup_alpha", "eta_min", "warmup_epochs", "early_stopping_patience",
                     "early_stopping_min_delta", "curriculum_epochs", "loss_weight_fusion", "loss_weight_audio",
                     "loss_weight_visual", "contrastive_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"training.dropout must be in [0, 1), got {self.dropout}")
        for name in ("video_frame_drop", "video_time_mask", "patch_drop", "audio_time_mask", "audio_channel_mask",
                     "cutmix_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.modality_dropout <= 0.5:
            raise ValueError(f"training.modality_dropout must be in [0, 0.5], got {self.modality_dropout}")
        if self.feature_noise < 0 or self.cutmix_alpha <= 0:
            raise ValueError("training.feature_noise must be >= 0 and training.cutmix_alpha > 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"training.betas must be in [0, 1), got {list(self.betas)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"training.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.class_weights not in ("none", "auto"):   # their count is checked against the cache's classes
            try:
                [float(v) for v in self.class_weights.split(",")]
            except ValueError:
                raise ValueError("training.class_weights must be none, auto or one comma-separated number per class") from None


@dataclass(frozen=True)
class SplitConfig:
    protocol: Literal["auto", "ravdess-6fold", "crema-d-5fold", "manifest", "speaker-kfold", "fixed", "file"] = "auto"
    """auto: the cache's dataset's own (ravdess-6fold, crema-d-5fold; DFEW/MAFW: their official sets via the fold column; a manifest's fold/split column, else speaker-kfold); ravdess-6fold: fold k tests actors 4k-3..4k (published AV protocol); crema-d-5fold: HiCMAE's 5 blocks of actors; manifest: the fold or split column; speaker-kfold: num_folds consecutive blocks of speakers; fixed: one RAVDESS train/val/test split by actor; file: --split.fold-file."""
    num_folds: int = 5
    """Folds of speaker-kfold."""
    fold_file: str | None = None
    """YAML/JSON with folds: [{name, test_actors, val_actors}] (protocol=file)."""
    num_val_actors: int = 2
    """Validation actors taken from each fold's training actors the cache holds, the next fold's group first (RAVDESS: one male, one female)."""
    val_fraction: float = 0.1
    """Clip-level data (each clip its own speaker: DFEW, MAFW, a manifest of one clip per speaker): the class-stratified share of each fold's training clips that validates."""
    val_seed: int = 0
    """Seed of the clip-level validation draw (not --seed, so runs of several seeds share one split)."""
    allow_small_val: bool = False
    """Train even when a fold's validation clips lack a class its training clips hold (default: refuse; such a set cannot choose the epoch)."""

    def __post_init__(self) -> None:
        if self.num_folds < 2:
            raise ValueError(f"split.num_folds must be >= 2, got {self.num_folds}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"split.val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")


@dataclass(frozen=True)
class TrainConfig:
    cache: str = "cache"
    """Feature store written by `extract`."""
    out: str = "runs/fusion"
    """Run directory (config, metrics, checkpoints, predictions, summary)."""
    preset: Literal["full", "tiny"] = "full"
    """full: the design guide's sizes; tiny: small widths and a tiny random LFM2 (demo, tests, CPU)."""
    folds: str = "all"
    """Folds to run: all, or comma-separated fold numbers (1-based)."""
    seed: int = 0
    """Seed for weights, shuffling and mixup; the same command twice gives the same metrics on CPU."""
    seeds: str | None = None
    """Comma-separated seeds (e.g. 0,1,2): train every fold once per seed into this run (folders <fold>-seed<S>); the summary gives the mean, and the sample std and 95-percent t-interval over the folds, each fold the mean of its seeds. Default: --seed alone."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    preload: Literal["auto", "yes", "no"] = "auto"
    """Keep the cache in RAM (auto: when it fits in a quarter of free memory)."""
    num_workers: int = 0
    """DataLoader worker processes (spawned; each opens the store itself)."""
    compute_threads: int = 0
    """Torch threads of the training process; 0: the cores left after the loader workers (one thread each), at least 1."""
    resume: bool = False
    """Continue an interrupted run in --out from its last checkpoints."""
    allow_writing_cache: bool = False
    """Train even while an extract is still writing --cache (trains on the clips done so far); default: refuse."""
    pretrain: Literal["none", "audio", "visual"] = "none"
    """Train one branch alone with its own classifier and save its weights (the design guide's stage 1)."""
    audio_branch: str | None = None
    """Pretrained audio-branch weights (a run dir of --pretrain audio, or a .safetensors file)."""
    visual_branch: str | None = None
    """Pretrained visual-branch weights (a run dir of --pretrain visual, or a .safetensors file)."""
    freeze_branches: bool = False
    """Freeze loaded pretrained branches (the design guide's 2.1)."""
    video_entry: str | None = None
    """Fingerprint of the video features to read when the cache holds several."""
    audio_entry: str | None = None
    """Fingerprint of the audio features to read when the cache holds several."""
    tuned_on_actors: str | None = None
    """Comma-separated actors whose scores chose this config (`mmfer tune` writes it into best_config.yaml); a run testing any of them warns and lists them in summary.json as tuned_on_test_actors."""
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if self.tuned_on_actors is not None and not all(a.strip().isdigit() for a in self.tuned_on_actors.split(",")):
            raise ValueError(f"tuned_on_actors must be comma-separated actor numbers, got {self.tuned_on_actors!r}")
        if self.num_workers < 0 or self.compute_threads < 0:
            raise ValueError(f"num_workers and compute_threads must be >= 0, got {self.num_workers}, {self.compute_threads}")
        if self.folds != "all":
            try:
                numbers = [int(f) for f in self.folds.split(",")]
            except ValueError:
                raise ValueError(f"folds must be 'all' or comma-separated numbers, got {self.folds!r}") from None
            if any(n < 1 for n in numbers):
                raise ValueError(f"folds are 1-based, got {self.folds!r}")
        if self.seeds is not None:
            try:
                seeds = [int(s) for s in str(self.seeds).split(",")]
            except ValueError:
                raise ValueError(f"seeds must be comma-separated integers, got {self.seeds!r}") from None
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seeds must differ, got {self.seeds!r}")

    @property
    def seed_list(self) -> list[int]:
        """The seeds every fold trains with: --seeds, else --seed alone."""
        return [int(s) for s in str(self.seeds).split(",")] if self.seeds is not None else [self.seed]


TINY_TRAIN_OVERRIDES: dict[str, object] = {
    # Widths a 2-core CPU trains in seconds per epoch; same architecture, smaller numbers.
    "model.visual.num_keep_tokens": 16,
    "model.visual.roi_dim": 64,
    "model.visual.out_dim": 128,
    "model.visual.temporal_depth": 2,
    "model.visual.num_heads": 4,
    "model.audio.feature_dim": 128,
    "model.audio.num_layers": 2,
    "model.audio.num_heads": 4,
    "model.fusion.use_pretrained": False,
    "model.fusion.tiny_hidden_size": 128,
    # Everything starts from random weights, so the design guide's rates for pretrained parts (1e-5 .. 1e-4,
    # 5 warmup epochs) barely move it in 30 epochs; measured on the demo (README "Demo result").
    "training.lr": 1e-3,
    "training.lr_fusion": 1e-3,
    "training.lr_branches": 1e-3,
    "training.warmup_epochs": 2,
    "training.batch_size": 16,
    "training.gradient_accumulation_steps": 1,
    "training.max_epochs": 30,
    "training.early_stopping_patience": 10,
}


TRAIN_PRESETS: dict[str, dict[str, object]] = {"full": {}, "tiny": TINY_TRAIN_OVERRIDES}
"""The named override sets of `--preset`; applied by `train_config_with_preset`, the one preset rule."""


def train_config_with_preset(overrides: dict[str, object]) -> TrainConfig:
    """The one preset rule, for the CLI and for code alike: defaults <- the preset's values <- `overrides`.

    The preset goes in first, so every value the caller gives wins, also one equal to the full default
    (`--preset tiny --epochs 100` trains 100 epochs).
    """
    from mmfer.core.overrides import apply_overrides  # overrides.py is the floor's parser; no cycle at import

    base = TrainConfig()
    preset = apply_overrides(base, {"preset": overrides["preset"]}).preset if "preset" in overrides else base.preset
    return apply_overrides(apply_overrides(base, TRAIN_PRESETS[preset]), overrides)
