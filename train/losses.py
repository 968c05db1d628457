"""The guide's losses: label-smoothed cross-entropy, the multimodal loss with auxiliary heads, InfoNCE.

Inputs are the model's output dict (logits, audio_logits, visual_logits, audio_features, visual_features)
and labels; mixup is supported by passing the second label set and lambda. Class weights come from the
config (given) or from the training split's class frequencies (auto).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfer.core.errors import ConfigError


def class_weights_from_labels(labels: np.ndarray, num_classes: int) -> Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present; absent classes get 0.

    labels: (N,) int class ids of the training split. returns (C,) float32
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def resolve_class_weights(spec: str, labels: np.ndarray, num_classes: int) -> Tensor | None:
    """`training.class_weights`: none -> None, auto -> from frequencies, else C comma-separated numbers."""
    if spec == "none":
        return None
    if spec == "auto":
        return class_weights_from_labels(labels, num_classes)
    values = [float(v) for v in spec.split(",")]
    if len(values) != num_classes:
        raise ConfigError(f"training.class_weights has {len(values)} numbers, but the cache has {num_classes} classes; "
                          "give one number per class (in the cache's label_names order), or auto / none")
    return torch.tensor(values, dtype=torch.float32)


class EmotionLoss(nn.Module):
    """Cross-entropy with label smoothing and optional class weights; mixup-aware."""

    def __init__(self, *, label_smoothing: float, class_weights: Tensor | None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: Tensor, labels: Tensor, labels_b: Tensor | None = None, lam: float | Tensor = 1.0) -> Tensor:
        """logits (B, C), labels (B,) long; with mixup, lam * CE(labels) + (1 - lam) * CE(labels_b). `lam` is
        one number (mixup) or (B,) float, one weight per clip (CutMix in time: each clip's own share)."""
        logits = logits.float()
        if isinstance(lam, Tensor):
            return self._per_clip(logits, labels, labels_b, lam.to(logits.device, torch.float32))
        loss = F.cross_entropy(logits, labels, weight=self.class_weights, label_smoothing=self.label_smoothing)
        if labels_b is not None and lam < 1.0:
            loss_b = F.cross_entropy(logits, labels_b, weight=self.class_weights, label_smoothing=self.label_smoothing)
            loss = lam * loss + (1.0 - lam) * loss_b
        return loss

    def _per_clip(self, logits: Tensor, labels: Tensor, labels_b: Tensor | None, lam: Tensor) -> Tensor:
        """sum_i lam_i CE_i(labels) / norm + sum_i (1 - lam_i) CE_i(labels_b) / norm, norm = the weights of each
        label set summed (B without class weights): for one lam it equals the mean form above."""
        total = logits.new_zeros(())
        lam = lam if labels_b is not None else torch.ones_like(lam)
        for target, weight in ((labels, lam), (labels_b, 1.0 - lam)):
            if target is None:
                continue
            each = F.cross_entropy(logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing,
                                   reduction="none")
            norm = self.class_weights[target].sum() if self.class_weights is not None else logits.new_tensor(len(target))
            total = total + (weight * each).sum() / norm
        return total


class ContrastiveLoss(nn.Module):
    """Audio-visual InfoNCE: the clip's own audio and video are the positive pair.

    Features are mean-pooled over their sequence, projected to a common width when the widths differ
    (these Linear layers are trainable and go to the optimizer with the classifier group), normalised.
    """

    def __init__(self, audio_dim: int, visual_dim: int, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature
        common = min(audio_dim, visual_dim)
        self.audio_proj = nn.Linear(audio_dim, common) if audio_dim != common else nn.Identity()
        self.visual_proj = nn.Linear(visual_dim, common) if visual_dim != common else nn.Identity()

    def forward(self, audio_features: Tensor, visual_features: Tensor, has_both: Tensor) -> Tensor:
        """audio_features (B, La, Da), visual_features (B, Lv, Dvis), has_both (B,) bool -> scalar."""
        if int(has_both.sum()) < 2:
            return audio_features.new_zeros(())   # InfoNCE needs at least one negative
        audio = F.normalize(self.audio_proj(audio_features[has_both].float().mean(1)), dim=-1)
        visual = F.normalize(self.visual_proj(visual_features[has_both].float().mean(1)), dim=-1)
        similarity = audio @ visual.T / self.temperature      # (B', B')
        targets = torch.arange(len(audio), device=audio.device)
        return F.cross_entropy(similarity, targets)


class MultimodalLoss(nn.Module):
    """alpha_fusion * CE(fused) + alpha_audio * CE(audio aux) + alpha_visual * CE(visual aux) [+ w * InfoNCE].

    The auxiliary logits are the model's own heads (outputs "audio_logits"/"visual_logits"); a head that
    is None (branch absent) contributes nothing.
    """

    def __init__(self, *, label_smoothing: float, class_weights: Tensor | None, alpha_fusion: float,
                 alpha_audio: float, alpha_visual: float, contrastive: ContrastiveLoss | None,
                 contrastive_weight: float) -> None:
        super().__init__()
        self.ce = EmotionLoss(label_smoothing=label_smoothing, class_weights=class_weights)
        self.alpha_fusion, self.alpha_audio, self.alpha_visual = alpha_fusion, alpha_audio, alpha_visual
        self.contrastive = contrastive
        self.contrastive_weight = contrastive_weight

    def forward(self, outputs: dict, labels: Tensor, labels_b: Tensor | None = None, lam: float | Tensor = 1.0, *,
                has_audio: Tensor, has_video: Tensor) -> dict[str, Tensor]:
        """outputs: the model's dict; labels, labels_b (B,) long; has_audio, has_video (B,) bool.

        An auxiliary loss only counts the clips that have its modality (the model's aux logits of a clip
        without it are meaningless). Returns loss (to backpropagate) and its parts, as scalars.
        """
        parts = {"loss_fusion": self.ce(outputs["logits"], labels, labels_b, lam)}
        total = self.alpha_fusion * parts["loss_fusion"]
        for name, alpha, present in (("audio", self.alpha_audio, has_audio), ("visual", self.alpha_visual, has_video)):
            logits = outputs.get(f"{name}_logits")
            if alpha > 0 and logits is not None and bool(present.any()):
                parts[f"loss_{name}"] = self.ce(logits[present], labels[present],
                                                None if labels_b is None else labels_b[present],
                                                lam[present] if isinstance(lam, Tensor) else lam)
                total = total + alpha * parts[f"loss_{name}"]
        if (self.contrastive is not None and self.contrastive_weight > 0
                and outputs.get("audio_features") is not None and outputs.get("visual_features") is not None):
            parts["loss_contrastive"] = self.contrastive(outputs["audio_features"], outputs["visual_features"],
                                                         has_audio & has_video)
            total = total + self.contrastive_weight * parts["loss_contrastive"]
        return {"loss": total, **parts}
