"""Stage 1: decode clips, run the frozen encoders once, write their tokens to the store."""
