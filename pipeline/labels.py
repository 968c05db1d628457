"""Emotion label set and RAVDESS's actor count, shared by every stage.

RAVDESS codes emotions 01..08 in this order; index = code - 1 is the class id everywhere
(manifest `label`, store clip table, model logits, predictions).
"""

EMOTIONS: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
NUM_CLASSES = len(EMOTIONS)   # C = 8
RAVDESS_NUM_ACTORS = 24       # Actor_01 .. Actor_24: the name check, the 6-fold protocol and the demo
