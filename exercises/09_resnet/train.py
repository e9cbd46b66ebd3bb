"""Train a ResNet18 on CIFAR-10: from scratch, or from torchvision's ImageNet weights.

    python train.py --dry-run                    # 2 steps on fake images: CPU, offline
    python train.py --dataset cifar10 --download # ResNet18 for 32x32 from scratch
    python train.py --dataset cifar10 --pretrained             # ImageNet weights, head only
    python train.py --dataset cifar10 --pretrained --finetune  # ImageNet weights, all layers

Offline by default: ``--download`` allows fetching CIFAR-10 and the ImageNet weights once.
The trained weights go to runs/resnet18.pt beside this script unless ``--save`` says where.

On CUDA it uses mixed precision (bfloat16 where supported, else float16 with loss scaling)
and channels_last memory; elsewhere float32.
"""

import argparse
import pickle
import sys
import time
from pathlib import Path

import torch
from cifar import cifar10, fake_data
from resnet import ResNet18
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models import ResNet18_Weights
from tqdm import tqdm
from transfer import build_transfer_model, make_optimizer, set_train_mode

HERE = Path(__file__).resolve().parent  # outputs go to HERE / "runs", whatever the cwd


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first of cuda, mps and cpu that this machine has; else ``name``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else (
            "mps" if torch.backends.mps.is_available() else "cpu")
    return torch.device(name)


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """bfloat16 on GPUs that support it, float16 on older CUDA GPUs, None (float32) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that wall-clock times mean something."""
    if device.type in ("cuda", "mps"):
        getattr(torch, device.type).synchronize()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """One update on (x (B, 3, H, W), y (B,)); returns the detached loss (no device sync)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()  # scaled only for float16, whose small gradients underflow
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, amp_dtype: torch.dtype | None = None,
                    channels_last: bool = False, max_steps: int | None = None,
                    progress: bool = False) -> float:
    """One pass over ``loader`` (at most ``max_steps`` batches); returns the mean loss."""
    set_train_mode(model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    losses = []
    total = min(len(loader), max_steps) if max_steps else len(loader)
    bar = tqdm(loader, total=total, desc="train", leave=False, disable=not progress)
    for i, (x, y) in enumerate(bar):
        if i == max_steps:
            break
        x = x.to(device, non_blocking=True, memory_format=memory_format)  # (B, 3, 32, 32)
        losses.append(train_step(model, optimizer, scaler, x, y.to(device), amp_dtype))
        if i % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1].item():.3f}")
    return torch.stack(losses).mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> float:
    """Accuracy of ``model`` (in eval mode) over ``loader``."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    correct = total = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            predicted = model(x).argmax(dim=1)  # (B,)
        correct += (predicted.cpu() == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 20, *,
                amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                compile: bool = False, warmup: int = 3, lr: float = 0.1) -> dict:
    """Time ``steps`` training steps on one batch that already lives on the model's device.

    For benchmarks: x (B, 3, H, W), y (B,). ``amp_dtype``: torch.bfloat16, torch.float16
    or None (float32); ``channels_last`` converts model and batch; ``compile`` wraps the
    model in torch.compile. ``warmup`` untimed steps first absorb compilation and autotuning.
    Returns {"losses": [float per timed step], "seconds": s, "images_per_second": ips}.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    set_train_mode(model)
    optimizer = make_optimizer(model, lr=lr)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp_dtype == torch.float16)
    run = torch.compile(model) if compile else model
    for _ in range(warmup):
        train_step(run, optimizer, scaler, x, y, amp_dtype)
    synchronize(x.device)
    start = time.perf_counter()
    losses = [train_step(run, optimizer, scaler, x, y, amp_dtype) for _ in range(steps)]
    synchronize(x.device)
    seconds = time.perf_counter() - start
    return {"losses": torch.stack(losses).float().tolist(), "seconds": seconds,
            "images_per_second": steps * len(x) / seconds}


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["fake", "cifar10"], default="fake",
                   help="fake: random images, offline, chance accuracy (default: %(default)s)")
    p.add_argument("--data", default=str(HERE / "data"), help="CIFAR-10's folder")
    p.add_argument("--download", action="store_true",
                   help="allow downloading CIFAR-10 (170 MB) and ImageNet weights (45 MB)")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights")
    p.add_argument("--checkpoint", help="a saved torchvision resnet18 state_dict (offline)")
    p.add_argument("--finetune", action="store_true", help="train the backbone too")
    p.add_argument("--width", type=positive_int, default=64, help="from scratch: layer1's channels")
    p.add_argument("--epochs", type=positive_int, default=30, help="default: %(default)s")
    p.add_argument("--batch-size", type=positive_int, default=128, help="default: %(default)s")
    p.add_argument("--lr", type=float, help="default: 0.1 from scratch, 0.01 pretrained")
    p.add_argument("--max-steps", type=positive_int, help="at most this many steps per epoch")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="default: %(default)s")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--save", help="where to write the trained state_dict "
                   "(default: runs/resnet18.pt beside this script; a dry run saves nothing)")
    p.add_argument("--dry-run", action="store_true",
                   help="2 steps of a narrow model on fake data: CPU, offline")
    args = p.parse_args(argv)
    if (args.lr is not None and args.lr <= 0) or args.workers < 0:
        p.error("--lr must be positive, and --workers at least 0")
    if args.dry_run:
        args.dataset, args.device, args.epochs, args.max_steps = "fake", "cpu", 1, 2
        args.batch_size, args.workers, args.compile = 4, 0, False
        args.width = min(args.width, 16)  # a narrow model: the dry run checks the plumbing
    if args.device in ("cuda", "mps") and not getattr(torch, args.device).is_available():
        p.error(f"--device {args.device}: no {args.device} device on this machine")
    weights = ResNet18_Weights.DEFAULT  # its metadata decides the normalisation
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    fetch = args.pretrained and not (args.dry_run or args.checkpoint)
    if fetch and not (args.download or cached.is_file()):
        p.error("--pretrained needs torchvision's ImageNet weights: add --download to fetch "
                "them once (45 MB), or pass --checkpoint FILE")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        p.error(f"--checkpoint {args.checkpoint}: no such file")

    torch.manual_seed(0)
    device = pick_device(args.device)
    amp_dtype, channels_last = amp_dtype_for(device), device.type == "cuda"
    pretrained = args.pretrained or args.checkpoint is not None
    weights = weights if pretrained else None
    if args.dataset == "fake":
        train_set, test_set = fake_data(2 * args.batch_size, weights)
        print("fake data: random images and labels, so the accuracy is chance and means nothing")
    else:
        try:
            train_set, test_set = cifar10(args.data, weights, download=args.download)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
            raise SystemExit(f"CIFAR-10 in {args.data}: {error}".replace(
                "You can use download=True", "Add --download")) from None
    loader_args = dict(batch_size=args.batch_size, num_workers=args.workers,
                       pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    train_loader = DataLoader(train_set, shuffle=True, drop_last=True, **loader_args)
    test_loader = DataLoader(test_set, **loader_args)

    if pretrained:
        try:
            model = build_transfer_model(10, weights=weights if fetch else None,
                                         freeze_backbone=not args.finetune,
                                         checkpoint=args.checkpoint)
        except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
            raise SystemExit(f"--checkpoint {args.checkpoint}: not a torchvision resnet18 "
                             f"state_dict ({str(error).splitlines()[0]})") from None
    else:
        model = ResNet18(10, width=args.width, zero_init_residual=True)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr=args.lr or (0.01 if pretrained else 0.1))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    run = torch.compile(model) if args.compile else model
    print(f"device {device}, autocast {amp_dtype}, channels_last {channels_last}, "
          f"{sum(p.numel() for p in optimizer.param_groups[0]['params']):,} trainable parameters")

    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        loss = train_one_epoch(run, train_loader, optimizer, device, amp_dtype, channels_last,
                               args.max_steps, progress=sys.stderr.isatty())
        scheduler.step()
        accuracy = evaluate(run, test_loader, device, amp_dtype, channels_last)
        print(f"epoch {epoch}/{args.epochs}: train loss {loss:.3f}, "
              f"test accuracy {accuracy:.1%} ({time.perf_counter() - start:.0f} s)")
    if args.dry_run and not args.save:
        print("dry run: nothing saved, and the accuracy above means nothing")
        return
    save = Path(args.save) if args.save else HERE / "runs" / "resnet18.pt"
    save.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), save)
    print(f"saved the trained weights to {save}")


if __name__ == "__main__":
    main()
