"""Train a MONAI U-Net to segment images: synthetic circles offline, or SBD when online.

    python train.py                                # synthetic circles (no download)
    python train.py --dataset sbd --download       # PASCAL VOC objects (fetches 1.4 GB once)
    python train.py --dry-run                      # two batches of everything: a smoke test

Picks CUDA when it is there, with bfloat16 autocast and channels-last memory. The weights
go to runs/unet.pt beside this script unless --checkpoint says where.
"""

import argparse
import sys
from pathlib import Path

import torch
from data import SBD_CLASSES, PairsAsDicts, sbd, synthetic_pairs
from model import build_loss, build_unet, dice_per_image, predict
from monai.data import DataLoader
from torch import nn
from tqdm import tqdm
from transforms import train_transforms, val_transforms

HERE = Path(__file__).resolve().parent  # outputs go to HERE / "runs", whatever the cwd


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
               images: torch.Tensor, labels: torch.Tensor,
               amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One update on images (B, C, H, W) and labels (B, 1, H, W); returns the detached loss,
    still on the device (reading it with .item() would wait for the GPU)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(images)  # (B, C, H, W)
    loss = loss_fn(logits.float(), labels)  # softmax and Dice in float32, outside autocast
    loss.backward()
    optimizer.step()
    return loss.detach()


def run_steps(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
              images: torch.Tensor, labels: torch.Tensor, steps: int,
              batch_size: int | None = None, amp_dtype: torch.dtype | None = None,
              channels_last: bool = False, compile: bool = False) -> torch.Tensor:
    """``steps`` updates on tensors already on the device, taking full batches in turn.

    images (N, C, H, W), labels (N, 1, H, W); nothing is copied or synchronised inside the
    loop, so a benchmark can time it. Returns the (steps,) losses, on the device.
    """
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    batch_size = batch_size or len(images)
    batches = max(len(images) // batch_size, 1)
    losses = []
    for step in range(steps):
        start = (step % batches) * batch_size
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        losses.append(train_step(net, optimizer, loss_fn, x, y, amp_dtype))
    return torch.stack(losses)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, roi_size: int,
             device: torch.device, amp_dtype: torch.dtype | None = None) -> float:
    """Mean foreground Dice over every image of ``loader``, by sliding-window inference."""
    scores = []
    for batch in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = predict(model, batch["image"].to(device), roi_size)
        scores.append(dice_per_image(logits.float(), batch["label"].to(device), num_classes))
    return torch.cat(scores).mean().item()


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, num_classes: int,
        epochs: int = 10, lr: float = 1e-3, device: torch.device | str = "cpu",
        roi_size: int = 64, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
        progress: bool = False) -> list[dict]:
    """Train with AdamW and Dice + cross-entropy; validate after every epoch.

    Returns one ``{"epoch", "loss", "dice"}`` record per epoch (mean training loss, and
    mean validation Dice). ``progress`` prints one line per epoch (and a bar on a terminal).
    """
    device = torch.device(device)
    model.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = build_loss()
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        total = torch.zeros((), device=device)
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}",
                   disable=not (progress and sys.stderr.isatty()))  # no bars in a log file
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            images = images.contiguous(memory_format=memory_format)
            total += train_step(model, optimizer, loss_fn, images, labels, amp_dtype)
        dice = evaluate(model, val_loader, num_classes, roi_size, device, amp_dtype)
        history.append({"epoch": epoch, "loss": total.item() / len(train_loader), "dice": dice})
        if progress:
            bar.write(f"epoch {epoch}: loss {history[-1]['loss']:.4f}, validation Dice {dice:.3f}")
    return history


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["synthetic", "sbd"], default="synthetic")
    parser.add_argument("--data-dir", default=str(HERE / "data" / "sbd"), help="SBD's folder")
    parser.add_argument("--download", action="store_true", help="allow fetching SBD (1.4 GB)")
    parser.add_argument("--size", type=positive_int,
                        help="image side, a multiple of 8 [64; sbd: 256]")
    parser.add_argument("--epochs", type=positive_int, default=20, help="[%(default)s]")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="[%(default)s]")
    parser.add_argument("--lr", type=float, default=1e-3, help="[%(default)s]")
    parser.add_argument("--workers", type=int, default=4, help="loader processes [%(default)s]")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--checkpoint", default=str(HERE / "runs" / "unet.pt"),
                        help="where to save the weights [runs/unet.pt beside this script]")
    parser.add_argument("--dry-run", action="store_true", help="two small batches: a smoke test")
    args = parser.parse_args(argv)
    if args.size is not None and args.size % 8:
        parser.error(f"--size {args.size}: the U-Net halves the image 3 times, so the side "
                     f"must be a multiple of 8")
    if args.lr <= 0 or args.workers < 0:
        parser.error("--lr must be positive, and --workers at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device on this machine")
    if args.dataset == "sbd" and not (args.download or (Path(args.data_dir) / "img").is_dir()):
        parser.error(f"--dataset sbd: no SBD in {args.data_dir}; add --download to fetch it "
                     f"(1.4 GB) once")

    torch.manual_seed(0)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    torch.backends.cudnn.benchmark = cuda
    epochs, workers, batch_size = args.epochs, args.workers, args.batch_size
    n_train, n_val = 512, 64  # synthetic images
    if args.dry_run:
        epochs, workers, batch_size, n_train, n_val = 1, 0, 4, 8, 4
    if args.dataset == "sbd":
        size, in_channels, num_classes = args.size or 256, 3, SBD_CLASSES
        train_pairs = sbd(args.data_dir, "train", download=args.download)
        val_pairs = sbd(args.data_dir, "val", download=args.download)
    else:
        size, in_channels, num_classes = args.size or 64, 1, 3
        train_pairs = synthetic_pairs(n_train, size, num_classes, seed=0)
        val_pairs = synthetic_pairs(n_val, size, num_classes, seed=1)
    if args.dry_run:
        train_pairs = torch.utils.data.Subset(train_pairs, range(min(n_train, len(train_pairs))))
        val_pairs = torch.utils.data.Subset(val_pairs, range(min(n_val, len(val_pairs))))
    loader = lambda pairs, transform, shuffle: DataLoader(  # noqa: E731
        PairsAsDicts(pairs, transform), batch_size=batch_size, shuffle=shuffle,
        num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    train_loader = loader(train_pairs, train_transforms(size), True)
    val_loader = loader(val_pairs, val_transforms(size), False)

    model = build_unet(in_channels, num_classes)
    history = fit(model, train_loader, val_loader, num_classes, epochs, args.lr, device,
                  roi_size=size, amp_dtype=torch.bfloat16 if bf16 else None,
                  channels_last=cuda, progress=True)
    checkpoint = Path(args.checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)
    best = max(history, key=lambda h: h["dice"])
    print(f"best validation Dice {best['dice']:.3f} (epoch {best['epoch']}); "
          f"final weights saved to {checkpoint}")
    if args.dry_run:
        print("dry run: a few steps on a few images, so this Dice means nothing")


if __name__ == "__main__":
    main()
