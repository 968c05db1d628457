"""Where other code imports training from: `train(cfg)` and the pieces the commands and the bench reuse.

Training itself lives in three files: train/cross_validation.py (`train`: the folds of the protocol, the
run folder, the summary), train/fold.py (`train_fold`, `setup_fold`: one fold's model, epochs, checkpoints
and test) and train/steps.py (`train_epoch`, `predict`: one epoch's steps). Names kept here so that
`from mmfer.train.loop import train` goes on working.
"""

from mmfer.train.cross_validation import train, train_on
from mmfer.train.dataset import to_device
from mmfer.train.fold import FoldSetup, RunContext, derive_seed, epoch_streams, setup_fold, train_fold
from mmfer.train.steps import autocast_dtype, dtype_name, predict, train_epoch

__all__ = ["FoldSetup", "RunContext", "autocast_dtype", "derive_seed", "dtype_name", "epoch_streams", "predict",
           "setup_fold", "to_device", "train", "train_epoch", "train_fold", "train_on"]
