"""Dataset adapters (RAVDESS) and the synthetic demo generator: dataset folder -> manifest."""
