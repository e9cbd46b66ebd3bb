"""Look at a data pipeline, then train a small classifier through it.

    python main.py                                  # 5,000 real digits that ship offline
    python main.py --dataset cifar10 --download     # torchvision's CIFAR-10 (downloads once)
    python main.py --grid batch.png                 # also save a picture of a training batch
"""

import argparse

import torch
from pipeline import REGISTRY, make_datasets, make_loaders
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Accuracy of ``model`` over every batch of ``loader``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.to(device)).argmax(dim=1).cpu() == y).sum().item()
            total += len(y)
    return correct / max(total, 1)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(REGISTRY), default="digits")
    parser.add_argument("--root", default="data", help="where data sets live (default: data)")
    parser.add_argument("--download", action="store_true", help="download when missing")
    parser.add_argument("--epochs", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--grid", help="save a picture of one augmented training batch here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    train, test = make_datasets(args.dataset, args.root, download=args.download)
    train_loader, test_loader = make_loaders(train, test, args.batch_size)
    x, y = next(iter(train_loader))  # (B, C, H, W), (B,)
    print(f"{args.dataset}: {len(train)} training and {len(test)} test images")
    print(f"one batch: images {tuple(x.shape)} {x.dtype}, labels {tuple(y.shape)} {y.dtype}")
    print(f"per-channel mean {x.mean(dim=(0, 2, 3))}, std {x.std(dim=(0, 2, 3))} (near 0 and 1)")
    if args.grid:
        from torchvision.utils import save_image

        save_image(x, args.grid, normalize=True)  # rescaled to [0, 1] for viewing
        print(f"saved {args.grid}")

    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        for x, y in tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}"):
            optimizer.zero_grad()
            loss = loss_fn(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
    accuracy = evaluate(model, test_loader, device)
    print(f"test accuracy: {accuracy:.2%}")
    return accuracy


if __name__ == "__main__":
    main()
