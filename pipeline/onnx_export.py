"""`mmfer export --onnx`: the trainable stage (a fold's FusionModel) as one ONNX file per fold model.

The graph takes the collated batch's tensors of the modalities the variant reads (`fusion_inputs`: tokens
float32, masks bool) and returns probabilities (B, C); batch, video frames Tv and audio frames Ta are dynamic
axes. torch's dynamo exporter (torch.export + onnxscript) writes it; onnxruntime runs it (pipeline/runtime.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

MODALITY_INPUTS = {"video": ("video_tokens", "frame_mask", "has_video"),
                   "audio": ("audio_tokens", "audio_mask", "has_audio")}
OUTPUT = "probabilities"
OPSET = 18


def fusion_inputs(model) -> list[str]:
    """The batch keys the ONNX graph of `model` takes, in order (video's, then audio's)."""
    used = [m for m, branch in (("video", model.visual), ("audio", model.audio)) if branch is not None]
    return [name for m in used for name in MODALITY_INPUTS[m]]


class FusionGraph(nn.Module):
    """`FusionModel.forward` over positional tensors (the keys `fusion_inputs` names) -> probabilities (B, C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.names = model, fusion_inputs(model)

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.model(dict(zip(self.names, tensors)))[OUTPUT]


def _example(model, name: str, batch: int, frames: int, audio_frames: int) -> Tensor:
    """A small batch of the real shapes, with one clip padded and missing its modality (both paths traced)."""
    if name == "video_tokens":
        return torch.randn(batch, frames, model.visual.num_patches, model.visual.video_dim)
    if name == "audio_tokens":
        return torch.randn(batch, audio_frames, model.audio.audio_dim)
    if name in ("frame_mask", "audio_mask"):
        length = frames if name == "frame_mask" else audio_frames
        return torch.arange(length)[None].repeat(batch, 1) < torch.tensor([length] + [length - 1] * (batch - 1))[:, None]
    return torch.tensor([True] + [False] * (batch - 1))   # has_video / has_audio


def export_fusion(model: nn.Module, path: Path) -> Path:
    """Write `model` (eval mode, weights loaded) as ONNX to `path`: dynamic batch, Tv and Ta axes."""
    from torch.export import Dim

    graph = FusionGraph(model.eval()).eval()
    batch = Dim("batch", min=1, max=4096)
    axes = {"video_tokens": {0: batch, 1: Dim("frames", min=1, max=model.visual.temporal.max_frames)} if model.visual else None,
            "audio_tokens": {0: batch, 1: Dim("audio_frames", min=1, max=model.audio.max_frames)} if model.audio else None}
    shapes = {"video_tokens": axes["video_tokens"], "frame_mask": axes["video_tokens"], "has_video": {0: batch},
              "audio_tokens": axes["audio_tokens"], "audio_mask": axes["audio_tokens"], "has_audio": {0: batch}}
    args = tuple(_example(model, n, batch=2, frames=3, audio_frames=5) for n in graph.names)
    with torch.no_grad():
        program = torch.onnx.export(graph, args, dynamo=True, dynamic_shapes=(tuple(shapes[n] for n in graph.names),),
                                    input_names=graph.names, output_names=[OUTPUT], opset_version=OPSET,
                                    verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
