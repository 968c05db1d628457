"""Emotion label set shared by every stage.

RAVDESS codes emotions 01..08 in this order; index = code - 1 is the class id everywhere
(manifest `label`, store clip table, model logits, predictions).
"""

EMOTIONS: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
NUM_CLASSES = len(EMOTIONS)   # C = 8
