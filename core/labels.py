"""Label sets and actor counts of the supported datasets, shared by every stage.

RAVDESS codes emotions 01..08 in this order; index = code - 1 is the class id (manifest `label`, store
clip table, model logits, predictions). A store records its own label names (root attr `label_names`,
written by extract); train/ and the commands read them there, so nothing assumes RAVDESS's 8 classes.
"""

EMOTIONS: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
NUM_CLASSES = len(EMOTIONS)   # C = 8 (RAVDESS; other datasets: len(label_names))
RAVDESS_NUM_ACTORS = 24       # Actor_01 .. Actor_24: the name check, the 6-fold protocol and the demo

# CREMA-D names emotions ANG DIS FEA HAP NEU SAD; class ids follow this order (HiCMAE's preprocess/creamd_av.py)
CREMA_D_CODES: tuple[str, ...] = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CREMA_D_EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fearful", "happy", "neutral", "sad")
CREMA_D_ACTORS = range(1001, 1092)   # actors 1001 .. 1091

# The default cross-corpus label map (`mmfer evaluate` without --label-map): two datasets' classes are the same
# when their names are, after these spellings are read as the RAVDESS name. The names of the supported datasets
# that differ: DFEW's fear, surprise; MAFW's anger, fear, happiness, sadness, surprise. Classes with no
# counterpart (RAVDESS's calm; MAFW's contempt, anxiety, helplessness, disappointment) are left out.
LABEL_SYNONYMS: dict[str, str] = {"anger": "angry", "fear": "fearful", "happiness": "happy", "sadness": "sad",
                                  "surprise": "surprised"}


def common_label(name: str) -> str:
    """The name a class is matched by across datasets: lower case, LABEL_SYNONYMS applied."""
    name = name.strip().lower()
    return LABEL_SYNONYMS.get(name, name)


def store_label_names(attrs: dict) -> tuple[str, ...]:
    """The class names of a store from its root attrs; stores written before label_names existed are RAVDESS's."""
    names = attrs.get("label_names")
    return tuple(names) if names else EMOTIONS
