"""Synthesize the demo's voices: a mono waveform of vowel-like syllables for an arousal level and an actor.

Arousal (0 low, 1 mid, 2 high) is carried redundantly and speaker-relatively: pitch level relative to
the actor's base and its excursion, syllable rate, loudness, spectral tilt and breathiness. Actors
differ in base pitch (lower for the odd, male actors) and formant scale; each take gets a little jitter.
"""

from __future__ import annotations

import numpy as np

NUM_AROUSAL_LEVELS = 3
CONTROL_RATE_HZ = 200               # harmonic amplitudes are computed at this rate, then interpolated
MAX_HARMONIC_HZ = 5000.0
BACKGROUND_NOISE_STD = 0.002

# Per arousal level: pitch ratio to the actor's base, pitch excursion (fraction), syllables per s,
# RMS loudness while voiced, spectral tilt (dB per octave; steeper = darker) and breath-noise ratio.
_AROUSAL = {
    0: dict(pitch_ratio=0.85, excursion=0.04, syllable_rate=2.6, loudness=0.04, tilt_db=14.0, breath=0.05),
    1: dict(pitch_ratio=1.00, excursion=0.10, syllable_rate=4.0, loudness=0.09, tilt_db=9.0, breath=0.025),
    2: dict(pitch_ratio=1.30, excursion=0.22, syllable_rate=5.8, loudness=0.17, tilt_db=5.0, breath=0.01),
}
# Vowel formants (F1, F2, F3 in Hz, adult male); each statement walks its own vowel sequence.
_VOWELS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240), "e": (530, 1840, 2480), "o": (570, 840, 2410)}
_STATEMENT_VOWELS = {1: "aiueoa", 2: "oeaiuo"}


def actor_voice(actor: int, seed: int) -> dict:
    """Per-actor voice: base pitch by gender (odd actors are male) and a formant scale."""
    rng = np.random.default_rng([seed, 3, actor])
    is_male = actor % 2 == 1
    return dict(
        base_hz=(118.0 if is_male else 205.0) * rng.uniform(0.9, 1.1),
        formant_scale=(1.0 if is_male else 1.15) * rng.uniform(0.97, 1.03),
    )


def synthesize_voice(
    arousal: int, actor: int, *, duration_s: float, sample_rate_hz: int = 16000, strength: float = 1.0,
    statement: int = 1, seed: int = 0, clip_seed: int | tuple = 0,
) -> np.ndarray:
    """Return float32 [S] mono audio in [-1, 1], S = round(duration_s * sample_rate_hz).

    strength (normal ~0.75, strong 1.0) pushes the low and high levels further from mid; the mid
    level only gets a little louder, so the three levels never overlap.
    """
    if arousal not in _AROUSAL:
        raise ValueError(f"arousal must be 0..{NUM_AROUSAL_LEVELS - 1}, got {arousal}")
    rng = np.random.default_rng([seed, 4, *np.atleast_1d(clip_seed)])
    voice = actor_voice(actor, seed)
    push = 1.0 + 0.3 * (strength - 0.75)                      # 1.0 normal .. 1.075 strong
    mid = _AROUSAL[1]
    level = {k: (mid[k] + push * (v - mid[k])) * rng.uniform(0.95, 1.05) for k, v in _AROUSAL[arousal].items()}
    if arousal == 1:
        level["loudness"] *= push

    num_samples = int(round(duration_s * sample_rate_hz))
    t = np.arange(num_samples) / sample_rate_hz
    onset_s = rng.uniform(0.08, 0.2) * min(1.0, duration_s)
    offset_s = max(onset_s, duration_s - rng.uniform(0.08, 0.2) * min(1.0, duration_s))

    # syllable clock: phase in syllables since onset; envelope is a raised cosine over 70 % of each
    syllables = np.clip(t - onset_s, 0.0, None) * level["syllable_rate"]
    within = syllables % 1.0
    duty = 0.7
    envelope = np.where(within < duty, np.sin(np.pi * within / duty) ** 2, 0.0)
    envelope *= (t >= onset_s) & (t < offset_s)

    # pitch: level x (1 + excursion x accent), accents rise within each syllable and drift down overall
    progress = np.clip((t - onset_s) / max(offset_s - onset_s, 1e-3), 0.0, 1.0)
    accent = np.sin(np.pi * np.clip(within / duty, 0, 1)) - 0.5 * progress
    f0 = voice["base_hz"] * level["pitch_ratio"] * (1.0 + level["excursion"] * accent)
    f0 *= 1.0 + 0.005 * rng.standard_normal(num_samples).cumsum() / np.sqrt(sample_rate_hz)  # slow drift
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz

    # harmonic amplitudes at the control rate: tilt x formant resonances of the syllable's vowel
    num_ctrl = max(2, int(duration_s * CONTROL_RATE_HZ) + 1)
    t_ctrl = np.linspace(0.0, duration_s, num_ctrl)
    f0_ctrl = np.interp(t_ctrl, t, f0)
    vowels = _STATEMENT_VOWELS.get(statement, _STATEMENT_VOWELS[1])
    syl_ctrl = np.clip(t_ctrl - onset_s, 0, None) * level["syllable_rate"]
    formants = np.array([_VOWELS[vowels[int(s) % len(vowels)]] for s in syl_ctrl]) * voice["formant_scale"]
    num_harmonics = int(MAX_HARMONIC_HZ / voice["base_hz"] / 0.8)
    k = np.arange(1, num_harmonics + 1)[:, None]                         # [K, 1]
    freq = k * f0_ctrl[None, :]                                          # [K, num_ctrl]
    gain = freq / f0_ctrl[None, :]
    amp = gain ** (-level["tilt_db"] / 6.02)
    resonance = sum(np.exp(-0.5 * ((freq - formants[None, :, j]) / (80.0 + 40 * j)) ** 2) for j in range(3))
    amp = amp * (0.15 + resonance) * (freq < min(MAX_HARMONIC_HZ, 0.45 * sample_rate_hz))

    voiced = np.zeros(num_samples)
    for h in range(num_harmonics):
        voiced += np.interp(t, t_ctrl, amp[h]) * np.sin((h + 1) * phase)
    voiced /= np.sqrt(np.mean(voiced**2)) + 1e-9
    breath = rng.standard_normal(num_samples)
    breath = np.convolve(breath, np.ones(8) / 8, mode="same")              # low-pass (~2 kHz) aspiration
    breath /= np.sqrt(np.mean(breath**2)) + 1e-9
    speech = (voiced + level["breath"] * 3.0 * breath) * envelope
    audio = level["loudness"] * 1.6 * speech + BACKGROUND_NOISE_STD * rng.standard_normal(num_samples)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)
