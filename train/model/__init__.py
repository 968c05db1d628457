"""The trainable model, in data-flow order: normalize (input standardization) -> compress (ROI token
compression) -> temporal -> visual_branch / audio_branch -> fusion (truncated LFM2) -> heads;
builder.py turns a ModelConfig into the assembled FusionModel."""
