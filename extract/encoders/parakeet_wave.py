"""The transformers FastConformer kind's forward as one torch module: 16 kHz waves in, encoder frames out.

`WaveEncoder` computes the folder's ParakeetFeatureExtractor settings and mel filters in torch ops on a padded
batch (NeMo's inference preprocessing), then runs ParakeetEncoder. It is what `parakeet.AudioEncoder.encode`
runs and what `mmfer export --onnx-encoders` exports. Kept apart from parakeet.py, the kind's registry module,
because defining it imports torch, and the registry is imported by predict's onnxruntime path, which has none.
"""

from __future__ import annotations

from typing import Any

import torch

LOG_ZERO_GUARD = 2 ** -24   # added before the log, as NeMo's log_zero_guard_value and ParakeetFeatureExtractor do
NORMALIZE_EPS = 1e-5        # added to each feature's std (NeMo's CONSTANT, the extractor's EPSILON)


class WaveEncoder(torch.nn.Module):
    """Wave -> log-mel -> ParakeetEncoder as one module (what `encode` runs and `export --onnx-encoders` exports):
    ParakeetFeatureExtractor's computation in torch ops on a padded batch, NeMo's inference preprocessing
    (pre-emphasis, Hann STFT, slaney mel, log(x + 2^-24), per-feature normalisation over valid frames)."""

    def __init__(self, model: torch.nn.Module, feature_extractor: Any) -> None:
        super().__init__()
        fe = feature_extractor
        self.model = model
        self.hop_length, self.n_fft, self.win_length = int(fe.hop_length), int(fe.n_fft), int(fe.win_length)
        self.preemphasis = float(fe.preemphasis or 0.0)
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=False), persistent=False)
        self.register_buffer("mel_filters", fe.mel_filters.clone().float(), persistent=False)   # (80, n_fft/2+1)

    def features(self, wave: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave float32 (B, S) zero-padded, length long (B,) -> (features (B, 80, T_mel), zero past each clip's
        valid frames; valid frames (B,)). Valid frames: floor(S / hop), NeMo's get_seq_len (center-padded STFT)."""
        keep = torch.arange(wave.shape[1], device=wave.device)[None, :] < length[:, None]   # True = a real sample
        if self.preemphasis:
            wave = torch.cat([wave[:, :1], wave[:, 1:] - self.preemphasis * wave[:, :-1]], dim=1)
        wave = wave.masked_fill(~keep, 0.0)
        spec = torch.stft(wave, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="constant", return_complex=True)
        power = torch.view_as_real(spec).pow(2).sum(-1).sqrt().pow(2)          # (B, n_fft/2+1, T_mel); NeMo's order
        mel = torch.log(self.mel_filters @ power + LOG_ZERO_GUARD)             # (B, 80, T_mel)
        num_frames = torch.div(length + self.n_fft // 2 * 2 - self.n_fft, self.hop_length, rounding_mode="floor")
        valid = (torch.arange(mel.shape[-1], device=mel.device)[None, :] < num_frames[:, None])[:, None, :]
        count = num_frames[:, None, None].to(mel.dtype)
        mean = torch.where(valid, mel, 0.0).sum(-1, keepdim=True) / count
        std = (torch.where(valid, mel - mean, 0.0).pow(2).sum(-1, keepdim=True) / (count - 1)).sqrt()
        return torch.where(valid, (mel - mean) / (std + NORMALIZE_EPS), 0.0), num_frames

    def forward(self, wave: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave float32 (B, S), length long (B,) -> (frames float32 (B, Ta, Da), valid frames long (B,))."""
        feats, num_frames = self.features(wave, length)
        mel_mask = torch.arange(feats.shape[-1], device=feats.device)[None, :] < num_frames[:, None]   # True = real
        out = self.model(input_features=feats.transpose(1, 2), attention_mask=mel_mask)
        return out.last_hidden_state, out.attention_mask.sum(-1)
