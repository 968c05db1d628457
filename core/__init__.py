"""The floor both stages stand on: config, overrides, errors, store, media, device, labels, splits,
faults. Nothing here imports data/, extract/ or train/; the commands above the stages are in pipeline/."""
