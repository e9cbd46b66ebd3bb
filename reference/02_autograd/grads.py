"""Gradients by hand: what autograd computes for you, written out so it can be checked.

Two kinds: the gradient of a whole loss, derived on paper (``linear_mse_grads``), and the
backward rule of one operation, which autograd chains with all the others (``Sigmoid``).
"""

import torch


def linear_mse_grads(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of L(w, b) = mean((x @ w + b - y) ** 2), derived by hand.

    x (N, d), y (N,), w (d,), b (). Returns (dL/dw of shape (d,), dL/db of shape ()).
    """
    residual = x @ w + b - y  # (N,)
    grad_w = 2 * x.T @ residual / len(x)  # (d,)
    grad_b = 2 * residual.mean()  # ()
    return grad_w, grad_b


class Sigmoid(torch.autograd.Function):
    """sigmoid(z) = 1 / (1 + exp(-z)), elementwise, with a hand-written backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        s = 1 / (1 + torch.exp(-z))  # exp(-z) = inf for very negative z gives s = 0, not NaN
        ctx.save_for_backward(s)  # the derivative is cheapest to compute from the output
        return s

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        """Given dL/ds (one number per element of s), return dL/dz."""
        (s,) = ctx.saved_tensors
        return grad_output * s * (1 - s)  # ds/dz = s * (1 - s)


def sigmoid(z: torch.Tensor) -> torch.Tensor:
    """Apply :class:`Sigmoid` (custom Functions are called through ``.apply``)."""
    return Sigmoid.apply(z)
