"""Early stopping: stop when validation stops improving, and keep the best weights seen."""

import math

from torch import nn


class EarlyStopping:
    """Watches the validation loss once per epoch.

    ``step`` returns True once the loss has failed to improve (by more than ``min_delta``)
    for ``patience`` epochs in a row. The weights of the best epoch are kept, so that
    ``restore`` can put them back after training has gone on past it.
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = math.inf
        self.best_epoch = -1  # 0-based index of the best epoch so far
        self.best_state: dict | None = None
        self.epochs_seen = 0
        self.bad_epochs = 0  # epochs in a row without improvement

    def step(self, val_loss: float, model: nn.Module) -> bool:
        """Record one epoch's validation loss; True means: stop training now."""
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss = val_loss
            self.best_epoch = self.epochs_seen
            self.best_state = model.state_dict()
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.epochs_seen += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the weights (and buffers) of the best epoch into ``model``."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
