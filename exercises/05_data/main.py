"""Look at a data pipeline, then train a small classifier through it.

    python main.py                                  # 5,000 real digits that ship offline
    python main.py --dataset cifar10 --download     # torchvision's CIFAR-10 (downloads once)
    python main.py --epochs 1 --batch-size 32       # a quicker look

A picture of one augmented training batch goes to runs/batch.png beside this script unless
--grid says otherwise; data sets live in data/ beside it unless --root says otherwise.
"""

import argparse
import sys
from pathlib import Path

import torch
from pipeline import REGISTRY, make_datasets, make_loaders
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"  # what the script writes, whatever the current directory


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Accuracy of ``model`` over every batch of ``loader``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.to(device)).argmax(dim=1).cpu() == y).sum().item()
            total += len(y)
    return correct / max(total, 1)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(REGISTRY), default="digits",
                        help="default: %(default)s (5,000 digits that ship offline)")
    parser.add_argument("--root", type=Path, default=HERE / "data",
                        help="where data sets live (default: data/ beside this script)")
    parser.add_argument("--download", action="store_true",
                        help="download the data set when it is missing (needs the internet)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="default: %(default)s")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="default: %(default)s")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda if available (default: %(default)s)")
    parser.add_argument("--grid", type=Path, default=RUNS / "batch.png",
                        help="where to save a picture of one augmented training batch")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available here")
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")

    torch.manual_seed(0)
    try:
        train, test = make_datasets(args.dataset, str(args.root), download=args.download)
    except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True"
        if "not found" not in str(exc).lower():
            raise
        raise SystemExit(f"error: {args.dataset} is not in {args.root}; run again with "
                         f"--download (needs the internet), or use --dataset digits") from None
    train_loader, test_loader = make_loaders(train, test, args.batch_size)
    x, y = next(iter(train_loader))  # (B, C, H, W), (B,)
    print(f"{args.dataset}: {len(train)} training and {len(test)} test images")
    print(f"one batch: images {tuple(x.shape)} {x.dtype}, labels {tuple(y.shape)} {y.dtype}")
    print(f"per-channel mean {x.mean(dim=(0, 2, 3))}, std {x.std(dim=(0, 2, 3))} (near 0 and 1)")
    from torchvision.utils import save_image

    args.grid.parent.mkdir(parents=True, exist_ok=True)
    save_image(x, args.grid, normalize=True)  # rescaled to [0, 1] for viewing
    print(f"saved a training batch to {args.grid}")

    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        for x, y in tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}",
                         disable=not sys.stderr.isatty()):  # quiet in logs and tests
            optimizer.zero_grad()
            loss = loss_fn(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
    accuracy = evaluate(model, test_loader, device)
    print(f"test accuracy: {accuracy:.2%}")
    return accuracy


if __name__ == "__main__":
    main()
