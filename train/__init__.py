"""Stage 2: train the light fusion model from the feature store only."""
