"""Optimizer, learning-rate schedule and early stopping, all stepped once per epoch.

AdamW gets one parameter group per part of the model (branches, fusion, classifier) with its own rate.
The schedule warms up linearly from lr/100 to lr over `warmup_epochs`, then hands over to
CosineAnnealingWarmRestarts or ReduceLROnPlateau (mode max on the monitored metric), or keeps lr.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, ReduceLROnPlateau

WARMUP_START_FRACTION = 0.01   # warmup starts at lr/100


def build_optimizer(groups: dict[str, list[nn.Parameter]], *, lr_branches: float, lr_fusion: float, lr: float,
                    weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over `groups` ({"branches", "fusion", "classifier"} -> params); empty groups are dropped."""
    rates = {"branches": lr_branches, "fusion": lr_fusion, "classifier": lr}
    param_groups = []
    for name, params in groups.items():
        params = [p for p in params if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": rates[name], "name": name})
    if not param_groups:
        raise ValueError("no trainable parameters: every group is empty or frozen")
    # fused: one kernel for all tensors instead of a Python loop per tensor (a third of a CPU step otherwise)
    return torch.optim.AdamW(param_groups, weight_decay=weight_decay, betas=tuple(betas), fused=True)


class EpochSchedule:
    """Warmup, then the chosen scheduler; `step(metric)` at each epoch's end sets the next epoch's rates."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, kind: str, warmup_epochs: int, cosine_t0: int,
                 cosine_t_mult: int, eta_min: float, plateau_factor: float, plateau_patience: int) -> None:
        self.optimizer = optimizer
        self.warmup_epochs = warmup_epochs
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.epoch = 0   # epochs finished
        self.after = None
        if kind == "CosineAnnealingWarmRestarts":
            self.after = CosineAnnealingWarmRestarts(optimizer, T_0=cosine_t0, T_mult=cosine_t_mult, eta_min=eta_min)
        elif kind == "ReduceLROnPlateau":
            self.after = ReduceLROnPlateau(optimizer, mode="max", factor=plateau_factor, patience=plateau_patience)
        elif kind != "none":
            raise ValueError(f"training.scheduler must be CosineAnnealingWarmRestarts, ReduceLROnPlateau or none, got {kind!r}")
        self._set(self._warmup_factor(0))

    def _warmup_factor(self, epoch: int) -> float:
        if epoch >= self.warmup_epochs:
            return 1.0
        return WARMUP_START_FRACTION + (1 - WARMUP_START_FRACTION) * epoch / self.warmup_epochs

    def _set(self, factor: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self, metric: float | None = None) -> None:
        self.epoch += 1
        if self.epoch <= self.warmup_epochs:
            self._set(self._warmup_factor(self.epoch))   # the last warmup step lands exactly on lr
        elif isinstance(self.after, CosineAnnealingWarmRestarts):
            self.after.step(self.epoch - self.warmup_epochs)
        elif isinstance(self.after, ReduceLROnPlateau):
            self.after.step(metric if metric is not None and math.isfinite(metric) else float("-inf"))

    def lrs(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "base_lrs": list(self.base_lrs),
                "after": self.after.state_dict() if self.after is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.base_lrs = state["epoch"], list(state["base_lrs"])
        if self.after is not None:
            self.after.load_state_dict(state["after"])


@dataclass
class EarlyStopping:
    """Mode max: stop after `patience` epochs without an improvement larger than `min_delta`.

    With a tie-break loss (validation NLL), an epoch whose metric ties the best (not lower, gained less than
    `min_delta`) but whose loss is lower is a new best too: on a few validation clips macro-F1 saturates
    (1.0 on the demo's 32 from epoch 7 on), and then the first epoch to reach it would win on nothing.
    """

    patience: int
    min_delta: float
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_loss: float = math.inf

    def update(self, value: float, epoch: int, tie_loss: float = math.inf) -> bool:
        """Record an epoch's metric (and tie-break loss); True when it is a new best (save the best checkpoint)."""
        improved = value > self.best + self.min_delta
        tie_won = value >= self.best and tie_loss < self.best_loss
        if improved or tie_won or self.best_epoch < 0:
            self.best, self.best_epoch, self.bad_epochs, self.best_loss = value, epoch, 0, tie_loss
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
