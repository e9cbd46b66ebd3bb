"""Pairwise squared distances with broadcasting, and a 1-nearest-neighbour classifier.

    python distances.py    # label points of three Gaussian blobs by their nearest neighbour

For points a_i (rows of a) and b_j (rows of b):

    ||a_i - b_j||^2 = ||a_i||^2 + ||b_j||^2 - 2 <a_i, b_j>

All N x M distances then come from one matrix product and two broadcast additions, with
no Python loop: this is how k-means, k-NN and kernel methods compute them on a GPU.
"""

import argparse

import torch


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of a (N, d) and b (M, d): (N, M).

    Entry [i, j] is ||a[i] - b[j]||^2. Keeps the inputs' dtype and device; never negative.
    """
    a_sq = (a * a).sum(dim=1, keepdim=True)  # (N, 1)
    b_sq = (b * b).sum(dim=1).unsqueeze(0)  # (1, M)
    cross = a @ b.T  # (N, M)
    sq = a_sq + b_sq - 2 * cross  # (N, M)
    return sq.clamp(min=0)  # (N, M)


def nearest_neighbour_labels(
    train_x: torch.Tensor, train_y: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """For each row of query (Q, d), the label (of train_y, (N,)) of its nearest row of train_x."""
    distances = pairwise_sq_distances(query, train_x)  # (Q, N)
    nearest = distances.argmin(dim=1)  # (Q,): index of the closest training point
    return train_y[nearest]  # (Q,)


def blobs(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 2-D points per class around random centres: x (n * classes, 2), y (n * classes,).

    Each class is a standard normal cloud around its own centre, drawn uniformly from [-4, 4]^2.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, 2, generator=g) * 8 - 4  # (classes, 2)
    y = torch.arange(classes).repeat_interleave(n)  # (n * classes,)
    x = centres[y] + torch.randn(len(y), 2, generator=g)  # (n * classes, 2)
    return x, y


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=positive_int, default=200,
                        help="per class (default: %(default)s)")
    parser.add_argument("--classes", type=positive_int, default=3, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is available here (use --device cpu or auto)")
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")

    x, y = blobs(2 * args.points, args.classes, seed=args.seed)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    train, test = order[: len(x) // 2], order[len(x) // 2 :]  # half to look up, half to classify
    predicted = nearest_neighbour_labels(x[train].to(device), y[train].to(device),
                                         x[test].to(device))
    accuracy = (predicted.cpu() == y[test]).float().mean().item()
    print(f"1-nearest-neighbour accuracy on {len(test)} test points: {accuracy:.1%}")


if __name__ == "__main__":
    main()
