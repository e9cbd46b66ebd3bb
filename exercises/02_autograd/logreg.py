"""Logistic regression on real data, trained by gradient descent with autograd.

    python logreg.py    # 569 breast-cancer biopsies, 30 features each (ships with scikit-learn)

The model is one linear score per sample, its logit z = x @ w + b; the probability of class
1 is sigmoid(z), and the loss is the binary cross-entropy between that and the label.
"""

import argparse

import torch
from torch.nn import functional as F


def logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Raw scores z = x @ w + b, any real number: (N, d) -> (N,)."""
    return x @ w + b


def predict_proba(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The probability of class 1 for each row of x: (N,), in [0, 1]."""
    return torch.sigmoid(logits(x, w, b))


def bce_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between predict_proba(x, w, b) and labels y (N,) in {0., 1.}."""
    return F.binary_cross_entropy(logits(x, w, b), y)


def train_logistic(
    x: torch.Tensor, y: torch.Tensor, lr: float = 0.5, steps: int = 300
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Gradient descent on bce_loss from w = 0, b = 0: each step w <- w - lr * dL/dw.

    Returns w (d,) and b () as plain tensors without autograd history, and the loss before
    each step.
    """
    w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)  # (d,)
    b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)  # ()
    losses = []
    for _ in range(steps):
        loss = bce_loss(x, y, w, b)
        loss.backward()
        w -= lr * w.grad
        b -= lr * b.grad
        losses.append(loss.item())
    return w.detach(), b.detach(), losses


def accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of rows whose predicted class (probability >= 0.5) is the label."""
    predicted = (predict_proba(x, w, b) >= 0.5).to(y.dtype)  # (N,)
    return (predicted == y).float().mean().item()


def load_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): a quarter held out, standardised by training stats."""
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    x, y = torch.from_numpy(raw.data).float(), torch.from_numpy(raw.target).float()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[: len(x) // 4], order[len(x) // 4 :]
    mean, std = x[train].mean(dim=0), x[train].std(dim=0)
    return (x[train] - mean) / std, y[train], (x[test] - mean) / std, y[test]


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
    parser.add_argument("--lr", type=positive(float), default=0.5, help="default: %(default)s")
    parser.add_argument("--steps", type=positive(int), default=300, help="default: %(default)s")
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_data()
    w, b, losses = train_logistic(x_train, y_train, lr=args.lr, steps=args.steps)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.4f} after {args.steps} steps")
    print(f"accuracy: train {accuracy(x_train, y_train, w, b):.1%}, "
          f"test {accuracy(x_test, y_test, w, b):.1%} ({len(y_test)} held-out tumours)")


if __name__ == "__main__":
    main()
