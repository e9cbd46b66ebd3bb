"""Training throughput of the reference loops of 09_resnet and 10_unet, in images per second.

    python benchmarks/gpu_throughput.py                    # on CUDA, the real sizes
    python benchmarks/gpu_throughput.py --device cpu --smoke   # a seconds-long check anywhere

For each model it times the same training step in float32, with bfloat16 autocast, with
bfloat16 and channels_last memory, and (on CUDA) with torch.compile on top, on a batch that
already lives on the device (so data loading is not measured), and prints a Markdown table.
Timed steps follow untimed warm-up steps (compilation, cuDNN autotuning) and the device is
synchronised around them. This is a benchmark, not a test: CI never runs it.
"""

from __future__ import annotations

import argparse
import time

import torch

from torchkata import paths
from torchkata.loader import load

ROOT = paths.repo_root()
MODES = [("fp32", None, False, False), ("bf16 autocast", torch.bfloat16, False, False),
         ("bf16 + channels_last", torch.bfloat16, True, False),
         ("bf16 + channels_last + compile", torch.bfloat16, True, True)]


def resnet_run(device, batch, steps, amp, channels_last, compile, width):
    resnet = load(ROOT / "reference" / "09_resnet", "resnet")
    train = load(ROOT / "reference" / "09_resnet", "train")
    model = resnet.ResNet18(num_classes=10, width=width).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    result = train.train_steps(model, x, y, steps=steps, amp_dtype=amp,
                               channels_last=channels_last, compile=compile)
    return result["images_per_second"], result["losses"][-1]


def unet_run(device, batch, steps, amp, channels_last, compile, size):
    model_mod = load(ROOT / "reference" / "10_unet", "model")
    train = load(ROOT / "reference" / "10_unet", "train")
    model = model_mod.build_unet(in_channels=1, num_classes=3).to(device)
    loss_fn = model_mod.build_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 1, size, size, device=device)
    labels = torch.randint(0, 3, (batch, 1, size, size), device=device).float()
    warm = 3
    train.run_steps(model, optimizer, loss_fn, images, labels, warm, amp_dtype=amp,
                    channels_last=channels_last, compile=compile)
    _sync(device)
    start = time.perf_counter()
    losses = train.run_steps(model, optimizer, loss_fn, images, labels, steps, amp_dtype=amp,
                             channels_last=channels_last, compile=compile)
    _sync(device)
    seconds = time.perf_counter() - start
    return steps * batch / seconds, losses[-1].item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="default: %(default)s")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default: %(default)s)")
    p.add_argument("--resnet-batch", type=int, default=512, help="default: %(default)s")
    p.add_argument("--unet-batch", type=int, default=32, help="default: %(default)s")
    p.add_argument("--unet-size", type=int, default=256, help="default: %(default)s")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, two steps, no compile")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; use --device cpu --smoke for a dry check")
    width, steps = (8, 2) if args.smoke else (64, args.steps)
    rb, ub, us = (8, 2, 64) if args.smoke else (args.resnet_batch, args.unet_batch, args.unet_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, {steps} timed steps\n")
    print("| model | batch | mode | images/s | last loss |")
    print("|---|---|---|---|---|")
    for mode, amp, cl, comp in MODES:
        if comp and (args.smoke or device.type != "cuda"):
            continue
        torch.manual_seed(0)
        ips, loss = resnet_run(device, rb, steps, amp, cl, comp, width)
        print(f"| ResNet18 (09), 32x32 | {rb} | {mode} | {ips:,.0f} | {loss:.3f} |", flush=True)
    for mode, amp, cl, comp in MODES:
        if comp and (args.smoke or device.type != "cuda"):
            continue
        torch.manual_seed(0)
        ips, loss = unet_run(device, ub, steps, amp, cl, comp, us)
        print(f"| UNet (10), {us}x{us} | {ub} | {mode} | {ips:,.0f} | {loss:.3f} |", flush=True)


if __name__ == "__main__":
    main()
