"""Draw the synthetic demo's faces: one clip of RGB frames for a face code, an actor and a seed.

A big, high-contrast cartoon face starts neutral and develops one of four expressions (flat, smile,
frown, open) with redundant cues: mouth curve / openness / width / teeth, eye openness, brow height and
angle, cheeks and a head movement. Actors differ a little in face shape, skin tone and position.
"""

from __future__ import annotations

import cv2
import numpy as np

NUM_FACE_CODES = 4
FACE_CODE_NAMES = ("flat", "smile", "frown", "open")
SUBPIXEL_BITS = 4                 # cv2 drawing `shift`: coordinates in 1/16 px
PIXEL_NOISE_STD = 2.0             # low on purpose: tiny random encoders drown in pixel noise

# Full-strength expression per face code (0 = the neutral face).
# mouth_curve >0 smiles; mouth_open 0..1; brow_raise >0 up; brow_tilt >0 inner ends down (a V).
_EXPRESSIONS = {
    0: dict(mouth_curve=0.0, mouth_open=0.0, mouth_width=1.0, eye_open=1.0, brow_raise=0.0, brow_tilt=0.0, cheek=0.0),
    1: dict(mouth_curve=1.0, mouth_open=0.45, mouth_width=1.3, eye_open=0.55, brow_raise=0.25, brow_tilt=-0.2, cheek=1.0),
    2: dict(mouth_curve=-0.9, mouth_open=0.0, mouth_width=0.85, eye_open=0.5, brow_raise=-1.0, brow_tilt=1.0, cheek=0.0),
    3: dict(mouth_curve=0.0, mouth_open=1.0, mouth_width=0.65, eye_open=1.6, brow_raise=1.2, brow_tilt=-0.4, cheek=0.0),
}


def actor_look(actor: int, seed: int) -> dict:
    """Small per-actor nuisance: face shape, skin tone, background, offset (same for every clip)."""
    rng = np.random.default_rng([seed, 1, actor])
    skin = np.array([214.0, 172.0, 140.0]) + rng.uniform(-14, 14) + rng.uniform(-6, 6, size=3)
    return dict(
        face_w=rng.uniform(0.36, 0.40), face_h=rng.uniform(0.44, 0.47),
        skin=np.clip(skin, 0, 255), background=np.clip(60 + rng.uniform(-8, 8, size=3), 0, 255),
        dx=rng.uniform(-0.015, 0.015), dy=rng.uniform(-0.015, 0.015),
        eye_gap=rng.uniform(0.15, 0.17), brow_thick=0.035 if actor % 2 == 1 else 0.028,
    )


def render_face_frames(
    face_code: int, actor: int, *, num_frames: int, size_px: int, strength: float = 1.0,
    seed: int = 0, clip_seed: int | tuple = 0, fps: float = 25.0,
) -> np.ndarray:
    """Draw one clip. Returns uint8 [Tv, H, W, 3] RGB with H = W = size_px.

    strength scales the expression (RAVDESS normal ~0.75, strong 1.0); clip_seed gives the clip's own
    jitter (onset time, small parameter noise, pixel noise) so repeated takes are not identical.
    """
    if face_code not in _EXPRESSIONS:
        raise ValueError(f"face_code must be 0..{NUM_FACE_CODES - 1}, got {face_code}")
    look = actor_look(actor, seed)
    rng = np.random.default_rng([seed, 2, *np.atleast_1d(clip_seed)])
    target = {k: v + rng.normal(0, 0.06) for k, v in _EXPRESSIONS[face_code].items()}
    neutral = _EXPRESSIONS[0]
    t = np.arange(num_frames) / fps
    duration_s = max(num_frames / fps, 1e-6)
    onset_s = duration_s * rng.uniform(0.12, 0.22)
    ramp_s = duration_s * rng.uniform(0.25, 0.35)
    progress = np.clip((t - onset_s) / ramp_s, 0.0, 1.0)
    progress = strength * (3 * progress**2 - 2 * progress**3)      # smoothstep from neutral
    frames = np.empty((num_frames, size_px, size_px, 3), dtype=np.uint8)
    for i in range(num_frames):
        p = progress[i]
        expr = {k: neutral[k] + p * (target[k] - neutral[k]) for k in neutral}
        head = _head_motion(face_code, p, t[i])
        frames[i] = _draw_face(size_px, look, expr, head)
    noise = rng.normal(0.0, PIXEL_NOISE_STD, size=frames.shape)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def _head_motion(face_code: int, p: float, t_s: float) -> tuple[float, float, float]:
    """(dx, dy, scale) in face-size units: nod for smile, drop for frown, pull back for open."""
    if face_code == 1:
        return 0.0, p * 0.02 * np.sin(2 * np.pi * 1.5 * t_s), 1.0
    if face_code == 2:
        return 0.0, p * 0.03, 1.0 - 0.02 * p
    if face_code == 3:
        return 0.0, -p * 0.03, 1.0 + 0.04 * p
    return 0.0, 0.0, 1.0


def _draw_face(size: int, look: dict, expr: dict, head: tuple[float, float, float]) -> np.ndarray:
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = look["background"].astype(np.uint8)
    s = size * head[2]
    cx = size * (0.5 + look["dx"] + head[0])
    cy = size * (0.5 + look["dy"] + head[1])
    one = 1 << SUBPIXEL_BITS

    def pt(x: float, y: float) -> tuple[int, int]:      # face units (origin at face centre) -> fixed point
        return int(round((cx + x * s) * one)), int(round((cy + y * s) * one))

    def ln(u: float) -> int:
        return int(round(u * s * one))

    def thick(u: float) -> int:
        return max(1, int(round(u * s)))

    aa = dict(lineType=cv2.LINE_AA, shift=SUBPIXEL_BITS)
    skin = tuple(float(c) for c in look["skin"])
    dark = (35.0, 25.0, 25.0)
    cv2.ellipse(img, pt(0, 0), (ln(look["face_w"]), ln(look["face_h"])), 0, 0, 360, skin, -1, **aa)

    if expr["cheek"] > 0.05:   # raised, flushed cheeks of a smile
        flush = tuple(c - expr["cheek"] * d for c, d in zip(skin, (-10, 45, 40)))
        for side in (-1, 1):
            cv2.circle(img, pt(side * 0.21, 0.1 - 0.03 * expr["cheek"]), ln(0.07), flush, -1, **aa)

    eye_y, gap = -0.09, look["eye_gap"]
    eye_h = 0.045 * max(expr["eye_open"], 0.12)
    for side in (-1, 1):
        ex = side * gap
        cv2.ellipse(img, pt(ex, eye_y), (ln(0.075), ln(eye_h)), 0, 0, 360, (250, 250, 250), -1, **aa)
        cv2.ellipse(img, pt(ex, eye_y), (ln(0.032), ln(min(0.032, eye_h))), 0, 0, 360, (20, 20, 30), -1, **aa)
        cv2.ellipse(img, pt(ex, eye_y), (ln(0.075), ln(eye_h)), 0, 0, 360, dark, thick(0.012), **aa)
        # brow: outer end at x = side*(gap+0.09), inner end at side*(gap-0.08); tilt lowers the inner end
        brow_y = eye_y - 0.09 - 0.06 * expr["brow_raise"]
        inner = pt(side * (gap - 0.08), brow_y + 0.045 * expr["brow_tilt"])
        outer = pt(side * (gap + 0.09), brow_y - 0.02 * expr["brow_tilt"])
        cv2.line(img, inner, outer, dark, thick(look["brow_thick"]), **aa)

    cv2.line(img, pt(0, -0.02), pt(-0.025, 0.1), (150, 110, 95), thick(0.012), **aa)   # nose

    half_w = 0.13 * expr["mouth_width"]
    xs = np.linspace(-1.0, 1.0, 17)
    mouth_y = 0.24
    base = mouth_y - 0.07 * expr["mouth_curve"] * (xs**2 - 0.35)                     # corners up for smiles
    gape = 0.11 * expr["mouth_open"] * np.sqrt(np.clip(1 - xs**2, 0, 1))
    upper = np.array([pt(x * half_w, y) for x, y in zip(xs, base - 0.35 * gape)], dtype=np.int32)
    lower = np.array([pt(x * half_w, y) for x, y in zip(xs, base + 0.65 * gape)], dtype=np.int32)
    lip = (150.0, 40.0, 50.0)
    if expr["mouth_open"] > 0.05:
        cv2.fillPoly(img, [np.concatenate([upper, lower[::-1]])], (45, 10, 15), **aa)
        if expr["cheek"] > 0.3:   # teeth band under the upper lip of a smile
            teeth = np.array([pt(x * half_w * 0.85, y) for x, y in zip(xs, base - 0.35 * gape + 0.02)], dtype=np.int32)
            cv2.polylines(img, [teeth], False, (245, 245, 240), thick(0.035), **aa)
    cv2.polylines(img, [upper], False, lip, thick(0.03), **aa)
    cv2.polylines(img, [lower], False, lip, thick(0.03), **aa)
    return img
