"""Frozen SigLIP2 vision tower: RGB frames in, patch tokens + pooled embedding out.

`load_visual_encoder` reads a hub id or a local folder with transformers' own loaders (config, image
processor, vision tower); `VisualEncoder.encode` runs the model's own image processor and returns float32
tokens (N, P, Dv) and pooled (N, Dv). `.identity` and `.preprocessing` fingerprint the feature cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmfer.extract.encoders.common import EncoderLoadError, offline_advice, walk

if TYPE_CHECKING:   # torch is imported where a model runs: predict's onnxruntime path never imports it
    import torch

log = logging.getLogger(__name__)

# This kind's entry in the encoder registry (extract/encoders/__init__.py)
KIND = "siglip"
MODALITY = "video"
BACKEND = "transformers"

_SIGLIP_TYPES = {"siglip", "siglip_vision_model"}  # full SigLIP checkpoint, or a saved vision tower
_SIGLIP2_TYPES = {"siglip2", "siglip2_vision_model"}  # NaFlex checkpoints
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMAGE_PROCESSOR_BACKEND = "pil"   # transformers' PIL image processors, never the torchvision ones


class VisualEncoder:
    """A loaded, frozen SigLIP/SigLIP2 vision tower with its image processor."""

    def __init__(self, model: torch.nn.Module, processor: Any, *, device: torch.device,
                 autocast_dtype: torch.dtype | None, identity: dict, preprocessing: dict) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.autocast_dtype = autocast_dtype  # None = plain fp32
        self.identity = identity
        self.preprocessing = preprocessing

    def preprocess(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """The checkpoint's own image processor on `frames`; see `preprocess_frames`."""
        return preprocess_frames(self.processor, frames)

    def encode(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode RGB frames.

        frames: uint8 (N, H, W, 3) RGB
        returns (tokens float32 (N, P, Dv): every patch token of the last layer, pooled float32 (N, Dv))
        """
        return self.encode_inputs(self.preprocess(frames))

    def encode_inputs(self, inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode frames already run through `preprocess_frames` (e.g. in a decoding worker).

        inputs: pixel_values float32 (N, 3, 224, 224) [+ NaFlex masks]
        returns (tokens float32 (N, P, Dv), pooled float32 (N, Dv)) on the CPU
        """
        import torch

        inputs = {key: torch.from_numpy(value).to(self.device) for key, value in inputs.items()}
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            out = self.model(**inputs)
        return out.last_hidden_state.float().cpu(), out.pooler_output.float().cpu()


def claims(name_or_path: str) -> bool:
    """A local folder whose config.json names a SigLIP or SigLIP2 model; hub ids are the default kind's."""
    config = Path(name_or_path) / "config.json"
    if not config.is_file():
        return False
    import json

    return json.loads(config.read_text()).get("model_type") in _SIGLIP_TYPES | _SIGLIP2_TYPES


def load(name_or_path: str, *, revision: str | None, device: torch.device, dtype_policy: str = "auto",
         processor: Any = None) -> VisualEncoder:
    """The registry's entry point: `load_visual_encoder`."""
    return load_visual_encoder(name_or_path, revision=revision, device=device, dtype_policy=dtype_policy,
                               processor=processor)


def is_complete(path: Path) -> bool:
    """A folder `write_random` finished (its rename is the last step)."""
    return all((path / name).is_file() for name in ("config.json", "model.safetensors", "preprocessor_config.json"))


def find_local(record: dict, folder: Path) -> Path | None:
    """A model folder under `folder` whose weights hash is the recorded one (same-named folders first)."""
    name = Path(str(record.get("name", ""))).name
    folders = sorted({p.parent for p in walk(folder) if p.name == "config.json"}, key=lambda p: p.name != name)
    for candidate in folders:
        try:
            if _hash_files(_weight_files(str(candidate), True, None)) == record.get("weights_sha256"):
                return candidate
        except (EncoderLoadError, OSError):
            continue
    return None


def cached_copy(name: str, revision: str | None) -> Path | None:
    """A hub id's snapshot folder in the local HF cache, or None."""
    from transformers.utils import cached_file

    try:
        return Path(cached_file(name, "config.json", revision=revision, local_files_only=True)).parent
    except OSError:
        return None


def preprocess_frames(processor: Any, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Run the checkpoint's own image processor (resize, rescale, normalize) on RGB frames.

    A plain function of the processor so decoding workers can run it without the model, and without torch
    (numpy out), as predict's onnxruntime path does.
    frames: uint8 (N, H, W, 3) RGB
    returns dict with pixel_values float32 (N, 3, 224, 224) for fixed-resolution SigLIP; for NaFlex
    SigLIP2 pixel_values (N, max_num_patches, 3 * patch^2), pixel_attention_mask and spatial_shapes.

    Raises:
        ValueError: bad frames, or NaFlex frames that leave padding patches (the store has no patch mask).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"want uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
    batch = processor(images=list(frames), return_tensors="np")
    mask = batch.get("pixel_attention_mask")   # NaFlex only: (N, max_num_patches), 1 = a real patch
    if mask is not None and not bool(mask.all()):
        raise ValueError(
            f"NaFlex SigLIP2 left {int((mask == 0).sum())} of {mask.size} patches as padding for "
            f"{frames.shape[1]}x{frames.shape[2]} frames; the store keeps no patch mask, so NaFlex checkpoints "
            "take square crops only (--face-crop center or detect, and a square max_num_patches)")
    return {key: value for key, value in batch.items() if isinstance(value, np.ndarray)}


def load_image_processor(name_or_path: str, *, revision: str | None) -> Any:
    """The checkpoint's own image processor alone (small files, no weights): what the decode workers run,
    so extract starts them before the vision tower loads. Pass it on to `load_visual_encoder`.

    Raises:
        EncoderLoadError: as `load_visual_encoder`.
    """
    from transformers import AutoImageProcessor

    # Pinned: left to itself transformers picks the torchvision backend where torchvision is installed and
    # PIL elsewhere, whose pixels (resize, rounding) and class differ, so features and fingerprint would
    # depend on the machine. PIL is what every install has.
    return _from_pretrained(AutoImageProcessor.from_pretrained, name_or_path, revision=revision,
                            backend=IMAGE_PROCESSOR_BACKEND)


def _from_pretrained(loader, name_or_path: str, *, revision: str | None, **extra):
    """`loader(name_or_path)` for a local folder or a hub id, the local HF cache first (no network and no retry
    delays when the model is already there).

    Raises:
        EncoderLoadError: not a folder, not cached and not downloadable; the message says what to do.
    """
    is_local = Path(name_or_path).is_dir()
    if not is_local and (os.path.isabs(name_or_path) or name_or_path.startswith((".", "~"))
                         or name_or_path.count("/") > 1):
        raise EncoderLoadError(f"{name_or_path}: no such model folder; check the path")
    kwargs = {} if is_local else {"revision": revision}
    if not is_local:
        try:
            return loader(name_or_path, local_files_only=True, **kwargs, **extra)
        except OSError:
            pass
    try:
        return loader(name_or_path, **kwargs, **extra)
    except OSError as err:
        raise EncoderLoadError(
            f"{name_or_path}: cannot load the SigLIP2 visual encoder ({err}). "
            f"To fix it, {offline_advice(name_or_path)}"
        ) from err


def load_visual_encoder(name_or_path: str, *, revision: str | None = None,
                        device: str | torch.device = "cpu", dtype_policy: str = "auto",
                        processor: Any = None) -> VisualEncoder:
    """Load a frozen SigLIP/SigLIP2 vision tower and its image processor.

    Args:
        name_or_path: hub id (read from the HF cache when it is there, else downloaded) or a local folder.
        revision: hub branch, tag or commit; ignored for a local folder.
        device: where the model runs.
        dtype_policy: "auto" (bf16 autocast on CUDA when supported, else fp16; fp32 on CPU), "fp32",
            "bf16" or "fp16".
        processor: this checkpoint's `load_image_processor`, when already loaded (None: load it here).

    Raises:
        EncoderLoadError: the checkpoint is not on disk and cannot be downloaded, or is not SigLIP.
    """
    import torch
    from transformers import AutoConfig, Siglip2VisionModel, SiglipVisionModel

    device = torch.device(device)
    is_local = Path(name_or_path).is_dir()

    def from_pretrained(loader, **extra):
        return _from_pretrained(loader, name_or_path, revision=revision, **extra)

    config = from_pretrained(AutoConfig.from_pretrained)
    if config.model_type in _SIGLIP_TYPES:
        model_class = SiglipVisionModel  # loads the vision tower of a full SiglipModel checkpoint too
    elif config.model_type in _SIGLIP2_TYPES:
        model_class = Siglip2VisionModel
    else:
        raise EncoderLoadError(f"{name_or_path}: model_type {config.model_type!r} is not SigLIP/SigLIP2; "
                               "pass a SigLIP2 checkpoint")
    if processor is None:
        processor = load_image_processor(name_or_path, revision=revision)
    model, info = from_pretrained(model_class.from_pretrained, output_loading_info=True)
    if info.get("missing_keys"):
        raise EncoderLoadError(f"{name_or_path}: checkpoint lacks vision weights "
                               f"{sorted(info['missing_keys'])[:5]}...; is it a SigLIP vision checkpoint?")
    model.eval().requires_grad_(False).to(device)  # weights stay fp32; autocast picks the compute dtype

    vision_cfg = model.config
    num_patches = (vision_cfg.image_size // vision_cfg.patch_size) ** 2 if model_class is SiglipVisionModel \
        else getattr(vision_cfg, "num_patches", None)  # NaFlex: an upper bound, real count varies by aspect
    weight_files = _weight_files(name_or_path, is_local, revision)
    identity = {
        "name": name_or_path,
        "revision": None if is_local else revision,   # the loader ignores it for a folder
        "commit_hash": _commit_hash(weight_files),
        "weights_sha256": _hash_files(weight_files),
        "model_class": model_class.__name__,
        "model_type": vision_cfg.model_type,
        "hidden_size": vision_cfg.hidden_size,
        "num_patches": num_patches,
        "image_size": getattr(vision_cfg, "image_size", None),
        "patch_size": vision_cfg.patch_size,
    }
    autocast_dtype = encoder_autocast_dtype(device, dtype_policy)
    preprocessing = {**_jsonable(processor.to_dict()), "processor_class": type(processor).__name__,
                     "processor_backend": IMAGE_PROCESSOR_BACKEND,
                     "autocast_dtype": str(autocast_dtype).removeprefix("torch.") if autocast_dtype else "float32"}
    log.info("visual encoder %s (%s, Dv=%d, P=%s) on %s, compute %s", name_or_path, model_class.__name__,
             vision_cfg.hidden_size, num_patches, device, preprocessing["autocast_dtype"])
    return VisualEncoder(model, processor, device=device, autocast_dtype=autocast_dtype,
                         identity=identity, preprocessing=preprocessing)


def encoder_autocast_dtype(device: torch.device, dtype_policy: str) -> torch.dtype | None:
    if dtype_policy not in {"auto", "fp32", "bf16", "fp16"}:
        raise ValueError(f"dtype_policy must be auto|fp32|bf16|fp16, got {dtype_policy!r}")
    if dtype_policy == "fp32" or device.type != "cuda":
        return None  # CPU always runs fp32
    import torch

    if dtype_policy == "auto":   # the rule training follows: bf16 only where the chosen GPU has it natively
        from mmfer.core.device import has_native_bf16

        return torch.bfloat16 if has_native_bf16(device) else torch.float16
    return torch.bfloat16 if dtype_policy == "bf16" else torch.float16


def _weight_files(name_or_path: str, is_local: bool, revision: str | None) -> list[Path]:
    if is_local:
        folder = Path(name_or_path)
    else:
        from transformers.utils import cached_file

        folder = Path(cached_file(name_or_path, "config.json", revision=revision, local_files_only=True)).parent
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise EncoderLoadError(f"{folder}: no weight files (*.safetensors) next to config.json")
    return files


def _commit_hash(weight_files: list[Path]) -> str | None:
    """Hub snapshots live in .../snapshots/<commit>/; a local folder has no commit."""
    parent = weight_files[0].parent
    return parent.name if parent.parent.name == "snapshots" else None


def _hash_files(files: list[Path]) -> str:
    """sha256 over (name, file sha256) of every weight file.

    A hub-cache file is a link to blobs/<sha256 of its content> (the git-LFS oid), so its hash is read off
    the name instead of re-reading ~1.5 GB on every run.
    """
    outer = hashlib.sha256()
    for path in files:
        blob_name = Path(os.path.realpath(path)).name
        if path.is_symlink() and _SHA256_RE.match(blob_name):
            digest = blob_name
        else:
            inner = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    inner.update(chunk)
            digest = inner.hexdigest()
        outer.update(f"{path.name}:{digest}\n".encode())
    return outer.hexdigest()


def _jsonable(value: Any) -> Any:
    """Image-processor settings as plain JSON values (resample enums become their int)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool, type(None))):
        return value
    if isinstance(value, (int, float)):
        return value
    if hasattr(value, "value"):  # enum.Enum such as PIL Resampling
        return _jsonable(value.value)
    return str(value)


def write_random(visual_dir: Path, widths: dict, *, seed: int) -> None:
    """A random SigLIP vision tower of `widths` + the siglip2-base image processor, saved with transformers' own
    savers into `visual_dir` (via a temporary folder, so a crash leaves no half model)."""
    import torch
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    # 224 / 16 = 14 -> P = 196 patches, as in siglip2-base-patch16-224
    cfg = SiglipVisionConfig(image_size=224, patch_size=16, **widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipVisionModel(cfg).eval()
    # Same processing as google/siglip2-base-patch16-224: 224x224 bilinear resize (resample=2), /255,
    # mean = std = 0.5.
    processor = SiglipImageProcessor(
        size={"height": 224, "width": 224}, resample=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
    )
    if visual_dir.exists():  # an incomplete earlier attempt
        shutil.rmtree(visual_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=visual_dir.name + ".tmp-", dir=visual_dir.parent))
    try:
        model.save_pretrained(tmp_dir)  # safetensors by default
        processor.save_pretrained(tmp_dir)
        tmp_dir.rename(visual_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    log.info("wrote random SigLIP vision encoder (%s) to %s", widths, visual_dir)
