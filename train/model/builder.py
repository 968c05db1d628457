"""The stage-2 model: branches + fusion + heads, built from a ModelConfig; reads cached tensors only.

`build_model` turns the config into plain constructor arguments; `FusionModel` connects the parts for the
four variants (lfm2, early, audio, visual) and returns the output dict of the batch contract
(the keys of `FusionModel.forward`). `param_groups` splits trainable parameters for differential learning
rates. `model_spec` is everything `build_model` takes, as plain JSON: checkpoints and exported weights carry
it, so `build_model_from_spec` rebuilds the model from the file alone (whisper's checkpoints do the same).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfer.core.config import ModelConfig
from mmfer.core.overrides import apply_overrides, flatten, to_dict
from mmfer.train.model.audio_branch import AudioBranch
from mmfer.train.model.fusion import LfmFusion, build_backbone, lfm2_config, resolve_checkpoint
from mmfer.train.model.heads import AuxHead, EmotionHead
from mmfer.train.model.normalize import FeatureNorm
from mmfer.train.model.visual_branch import VisualBranch


class FusionModel(nn.Module):
    """Audio/visual branches -> (LFM2 | concat | one branch) -> EmotionHead, plus auxiliary heads.

    A clip whose has_audio (has_video) is False gets the learned missing-audio (missing-video) embedding
    in place of its branch features, so its cached tokens are never read as data. The auxiliary logits
    of such a clip are meaningless: the trainer masks those losses with has_audio / has_video.
    """

    def __init__(
        self, variant: str, audio: AudioBranch | None, visual: VisualBranch | None, fusion: LfmFusion | None,
        head: EmotionHead, audio_head: AuxHead | None, visual_head: AuxHead | None,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.spec: dict = {}   # build_model's arguments (model_spec), saved with the weights
        self.audio, self.visual, self.fusion = audio, visual, fusion
        self.head, self.audio_head, self.visual_head = head, audio_head, visual_head
        self.audio_missing = nn.Parameter(torch.randn(audio.feature_dim) * 0.02) if audio else None
        self.visual_missing = nn.Parameter(torch.randn(visual.out_dim) * 0.02) if visual else None
        # Standardizes the cached tokens with the training clips' statistics (set by the trainer).
        self.input_norm = FeatureNorm((visual.num_patches, visual.video_dim) if visual else None,
                                      audio.audio_dim if audio else None)

    def forward_features(self, batch: dict[str, Tensor]) -> dict[str, Tensor | None]:
        """Branch features (B, S, Da') / (B, Lv, Dv') or None, and the fused clip vector (B, D)."""
        batch = self.input_norm(batch)
        audio_features = visual_features = None
        if self.audio is not None:
            has_audio = batch.get("has_audio", batch["audio_mask"].any(dim=1)).bool()
            a = self.audio(batch["audio_tokens"], batch["audio_mask"].bool() & has_audio[:, None])
            audio_features = torch.where(has_audio[:, None, None], a, self.audio_missing)
        if self.visual is not None:
            has_video = batch.get("has_video", batch["frame_mask"].any(dim=1)).bool()
            v = self.visual(batch["video_tokens"], batch["frame_mask"].bool() & has_video[:, None])
            visual_features = torch.where(has_video[:, None, None], v, self.visual_missing)
        if self.fusion is not None:
            fused = self.fusion(audio_features, visual_features)
        else:
            pooled = [f.mean(dim=1) for f in (audio_features, visual_features) if f is not None]
            fused = torch.cat(pooled, dim=-1)                                   # (B, Da' [+ Dv'])
        return {"audio_features": audio_features, "visual_features": visual_features, "fused": fused}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor | None]:
        """batch: the loader's dict (the keys of `ClipDataset` items, padded by `collate_clips`). Returns logits and probabilities (B, C),
        audio_features (B, S, Da'), visual_features (B, Lv, Dv'), fused (B, D), audio_logits and
        visual_logits (B, C); None where the variant has no such part."""
        out = self.forward_features(batch)
        logits = self.head(out["fused"])
        out.update(logits=logits, probabilities=logits.softmax(dim=-1), audio_logits=None, visual_logits=None)
        if self.audio_head is not None:
            out["audio_logits"] = self.audio_head(out["audio_features"])
        if self.visual_head is not None:
            out["visual_logits"] = self.visual_head(out["visual_features"])
        return out

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute LFM2, temporal and audio layers in backward to save activation memory."""
        if self.fusion is not None:
            self.fusion.set_gradient_checkpointing(enabled)
        if self.visual is not None:
            self.visual.temporal.gradient_checkpointing = enabled
        if self.audio is not None:
            self.audio.gradient_checkpointing = enabled

    def branch_state_dict(self, name: str) -> dict[str, Tensor]:
        """Weights of one branch ("audio" or "visual") for stage-1 pretraining."""
        return {k: v.detach().clone() for k, v in self._branch(name).state_dict().items()}

    def load_branch_state_dict(self, name: str, state: dict[str, Tensor], freeze: bool = False) -> None:
        """Load stage-1 weights into one branch; freeze=True stops its gradients (the design guide's 2.1)."""
        self._branch(name).load_state_dict(state, strict=True)
        if freeze:
            self._branch(name).requires_grad_(False)

    def _branch(self, name: str) -> nn.Module:
        branch = {"audio": self.audio, "visual": self.visual}.get(name)
        if branch is None:
            raise ValueError(f"variant {self.variant!r} has no {name!r} branch (want 'audio' or 'visual')")
        return branch


def param_groups(model: FusionModel) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters split as branches / fusion / classifier (the design guide's differential rates)."""
    groups: dict[str, list[nn.Parameter]] = {"branches": [], "fusion": [], "classifier": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        top = name.split(".")[0]
        key = "fusion" if top == "fusion" else "classifier" if top.endswith("head") else "branches"
        groups[key].append(param)
    return groups


def build_model(cfg: ModelConfig, *, video_dim: int, num_patches: int, audio_dim: int, dropout: float) -> FusionModel:
    """Build the variant named by cfg.variant; LFM2 weights are loaded only for variant lfm2.

    Raises:
        CheckpointNotFoundError: use_pretrained=True and the LFM2 checkpoint is neither local nor downloadable.
    """
    v, a, f = cfg.visual, cfg.audio, cfg.fusion
    use_audio, use_visual = cfg.uses_audio, cfg.uses_video
    audio = AudioBranch(audio_dim=audio_dim, feature_dim=a.feature_dim, num_layers=a.num_layers,
                        num_heads=a.num_heads, num_segments=a.num_segments, max_frames=a.max_frames,
                        dropout=dropout) if use_audio else None
    visual = VisualBranch(
        video_dim=video_dim, num_patches=num_patches, num_keep_tokens=v.num_keep_tokens, roi_dim=v.roi_dim,
        out_dim=v.out_dim, temporal_depth=v.temporal_depth, num_heads=v.num_heads, max_frames=v.max_frames,
        num_segments=v.num_segments, dropout=dropout,
    ) if use_visual else None
    fusion = None
    both = cfg.is_fused
    if cfg.uses_lfm2:
        config = lfm2_config(f.pretrained_model, f.use_pretrained, f.num_layers, f.tiny_hidden_size)
        is_loaded = f.use_pretrained and f.tiny_hidden_size == 0
        backbone = build_backbone(config, resolve_checkpoint(f.pretrained_model) if is_loaded else None)
        fusion = LfmFusion(backbone, a.feature_dim, v.out_dim, a.num_segments, v.num_segments)
        fusion.set_mode(f.mode, f.lora_rank, f.lora_alpha, dropout)
        head_dim = config.hidden_size
    else:
        head_dim = (a.feature_dim if use_audio else 0) + (v.out_dim if use_visual else 0)
    model = FusionModel(
        cfg.variant, audio, visual, fusion,
        head=EmotionHead(head_dim, cfg.num_classes, dropout),
        audio_head=AuxHead(a.feature_dim, cfg.num_classes) if both else None,
        visual_head=AuxHead(v.out_dim, cfg.num_classes) if both else None,
    )
    model.set_gradient_checkpointing(f.gradient_checkpointing)
    model.spec = model_spec(cfg, video_dim=video_dim, num_patches=num_patches, audio_dim=audio_dim, dropout=dropout)
    return model


def model_spec(cfg: ModelConfig, *, video_dim: int, num_patches: int, audio_dim: int, dropout: float) -> dict:
    """Every argument of `build_model`, as plain JSON (the model config nested, the cache's dims beside it)."""
    return {"model": to_dict(cfg), "video_dim": video_dim, "num_patches": num_patches, "audio_dim": audio_dim,
            "dropout": dropout}


def build_model_from_spec(spec: dict, model_overrides: dict[str, object] | None = None) -> FusionModel:
    """The model a checkpoint's or an export's `model_spec` describes, with random weights (load them next).

    `model_overrides` are dotted ModelConfig keys set on top (predict builds LFM2 from its config, offline).
    """
    cfg = apply_overrides(apply_overrides(ModelConfig(), flatten(spec["model"])), model_overrides or {})
    return build_model(cfg, video_dim=spec["video_dim"], num_patches=spec["num_patches"], audio_dim=spec["audio_dim"],
                       dropout=spec["dropout"])
