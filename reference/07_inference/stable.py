"""Softmax, log-softmax and cross-entropy written by hand, numerically stable.

float32 ``exp`` overflows to inf above about 88.7 and underflows to 0 below about -103,
and real logits reach both: a confident model, a large learning rate, a long training run.
These functions must return the right finite answer for any finite logits, as
``torch.nn.functional`` does.
"""

import torch


def softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Probabilities along ``dim``: non-negative and summing to one. Same shape as ``logits``."""
    exps = (logits - logits.amax(dim=dim, keepdim=True)).exp()  # the largest entry is exp(0)
    return exps / exps.sum(dim=dim, keepdim=True)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-probabilities along ``dim``, finite for any finite logits. Same shape as ``logits``."""
    shifted = logits - logits.amax(dim=dim, keepdim=True)  # (..., C), the largest entry is 0
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the true classes, as ``nn.functional.cross_entropy``.

    logits: (B, C) raw scores; targets: (B,) class indices. Returns a scalar tensor.
    """
    log_probs = log_softmax(logits, dim=1)  # (B, C)
    picked = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)  # (B,): log p(true class)
    return -picked.mean()
