"""Linear regression by plain gradient descent, with autograd computing the gradients.

    python linreg.py    # recover known weights from noisy synthetic data

No optimizer and no nn.Module: parameters are tensors that require grad, ``backward()``
fills their ``.grad``, and the update is written out by hand.
"""

import argparse

import torch


def make_data(
    n: int = 200, w_true: tuple[float, ...] = (2.0, -3.0, 0.5), b_true: float = 1.0,
    noise: float = 0.1, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, d) standard normal and y = x @ w_true + b_true + noise, y of shape (n,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(w_true), generator=g)  # (n, d)
    y = x @ torch.tensor(w_true) + b_true + noise * torch.randn(n, generator=g)  # (n,)
    return x, y


def fit_linear(
    x: torch.Tensor, y: torch.Tensor, lr: float = 0.1, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fit y ~ x @ w + b by gradient descent on the mean squared error, from w = 0, b = 0.

    x (N, d), y (N,). Returns w (d,) and b () as plain tensors without autograd history,
    and the loss before each step.
    """
    w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)  # (d,)
    b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)  # ()
    losses = []
    for _ in range(steps):
        loss = ((x @ w + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w = w - lr * w.grad
            b = b - lr * b.grad
        w.grad = None
        b.grad = None
        losses.append(loss.item())
    return w.detach(), b.detach(), losses


def positive(kind: type):
    """argparse type: a number of ``kind`` (int or float) greater than zero."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=positive(float), default=0.1, help="default: %(default)s")
    parser.add_argument("--steps", type=positive(int), default=200, help="default: %(default)s")
    args = parser.parse_args(argv)

    x, y = make_data()
    w, b, losses = fit_linear(x, y, lr=args.lr, steps=args.steps)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.4f} after {args.steps} steps")
    print(f"w = {[round(v, 3) for v in w.tolist()]} (true: [2.0, -3.0, 0.5])")
    print(f"b = {b.item():.3f} (true: 1.0)")


if __name__ == "__main__":
    main()
