"""Robustness of a trained fold model to a missing or degraded modality, measured on the cached features.

`corrupt_batch` changes a raw loader batch (before standardization) the way one named corruption says;
`evaluate_fold` runs a fold's model over its test clips once per corruption and returns macro-F1 of the
fused classifier and of each single-modality (auxiliary) classifier. Every corruption acts on the cached
encoder tokens, not on the media: "audio-snr-10" is noise on the FastConformer tokens at 10 dB SNR, which is
not the same as a noisy recording. The command (pipeline/robustness.py) writes the table and the plot.
"""

from __future__ import annotations

import numpy as np
import torch

from mmfer.train.metrics import compute_metrics

FEATURE_CORRUPTIONS = ("no-audio", "no-video", "audio-snr-20", "audio-snr-10", "audio-snr-0", "frame-drop-50")
"""What each does, on the cached tokens of the test clips:
no-audio / no-video: the modality is marked absent (the model uses its learned missing embedding);
audio-snr-X: Gaussian noise added to the audio tokens, with power = the clip's token power / 10^(X/10),
  token power being the mean square of its real audio tokens around their per-channel clip mean;
frame-drop-50: every second visual frame masked out of attention (frames 1, 3, 5, ... of 0..Tv-1)."""
MEDIA_CORRUPTIONS = ("face-crop-off",)
"""Corruptions that need the test clips extracted again (their media files and the recorded encoders):
face-crop-off: the frames encoded whole, without the face crop the cache was made with. The caller builds their
batches; `evaluate_fold` takes them as `replaced`."""
CORRUPTIONS = FEATURE_CORRUPTIONS + MEDIA_CORRUPTIONS


def parse_corruptions(text: str) -> list[str]:
    """'no-audio,frame-drop-50' -> the names, checked against CORRUPTIONS ('all' gives every feature corruption;
    a media corruption re-extracts clips, so it is asked for by name)."""
    names = list(FEATURE_CORRUPTIONS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"--corrupt: unknown corruption(s) {unknown or [text]}; choose among {', '.join(CORRUPTIONS)} or all")
    return names


def corrupt_batch(batch: dict, name: str, generator: torch.Generator) -> dict:
    """A corrupted copy of a raw collate_clips batch; the input is left as it is. name: one of FEATURE_CORRUPTIONS
    or 'clean' (the batch itself)."""
    out = dict(batch)
    if name == "clean":
        return out
    if name == "no-audio":
        out.update(has_audio=torch.zeros_like(batch["has_audio"]), audio_mask=torch.zeros_like(batch["audio_mask"]))
    elif name == "no-video":
        out.update(has_video=torch.zeros_like(batch["has_video"]), frame_mask=torch.zeros_like(batch["frame_mask"]))
    elif name == "frame-drop-50":
        mask = batch["frame_mask"].clone()
        mask[:, 1::2] = False
        out["frame_mask"] = mask
    elif name.startswith("audio-snr-"):
        snr_db = float(name.removeprefix("audio-snr-"))
        real = batch["audio_mask"][:, :, None].float()                       # (B, Ta, 1)
        count = real.sum(1, keepdim=True).clamp(min=1)
        mean = (batch["audio_tokens"] * real).sum(1, keepdim=True) / count  # per clip and channel
        power = (((batch["audio_tokens"] - mean) * real) ** 2).sum((1, 2), keepdim=True) / (count * batch["audio_tokens"].shape[2])
        noise = torch.randn(batch["audio_tokens"].shape, generator=generator) * torch.sqrt(power / 10 ** (snr_db / 10))
        out["audio_tokens"] = batch["audio_tokens"] + noise.to(batch["audio_tokens"].device) * real
    else:
        raise ValueError(f"{name!r} is not a corruption of cached features; choose among {', '.join(FEATURE_CORRUPTIONS)}")
    return out


@torch.inference_mode()
def evaluate_fold(model, batches: list[dict], corruptions: list[str], *, seed: int, class_names: tuple[str, ...],
                  replaced: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{corruption: {'fusion': macro-F1, 'audio': ..., 'visual': ...}} over the test `batches` (raw loader
    batches on the model's device), 'clean' first. A head the model lacks is left out, and so is the head of
    a removed modality (no-audio has no audio score). The noise of each
    corruption is drawn from a CPU generator seeded with `seed`, so a rerun gives the same table. `replaced`
    gives a media corruption's own batches of the same clips (MEDIA_CORRUPTIONS), scored as they are."""
    model.eval()
    scores = {}
    for name in ["clean", *corruptions]:
        generator = torch.Generator().manual_seed(seed)
        labels, preds = [], {"fusion": [], "audio": [], "visual": []}
        for batch in replaced.get(name, batches):
            outputs = model(batch if name in replaced else corrupt_batch(batch, name, generator))
            labels.append(batch["labels"].cpu().numpy())
            for head, key in (("fusion", "logits"), ("audio", "audio_logits"), ("visual", "visual_logits")):
                if outputs.get(key) is not None:
                    preds[head].append(outputs[key].argmax(1).cpu().numpy())
        y = np.concatenate(labels)
        removed = {"no-audio": "audio", "no-video": "visual"}.get(name)   # that head sees only the missing embedding
        scores[name] = {head: compute_metrics(y, np.concatenate(p), class_names=class_names)["f1_macro"] for head, p in preds.items()
                        if p and head != removed}
    return scores
