"""Teach a TinyTransformer to reverse a short sequence, one generated token at a time.

    python train.py                         # 6 tokens of 10 kinds; writes runs/reverse.pt
    python train.py --length 10 --steps 2000 --device cuda
    python train.py --dry-run               # 5 steps: checks the plumbing, learns nothing

A sequence reads x_0 .. x_{n-1}, a separator, then x_{n-1} .. x_0. The model is a decoder: it
is trained to predict every next token of the second half from the tokens before it (causal
attention, teacher forcing) and then writes that half on its own, feeding back its own
predictions. Output n+t must name the token n-1-t positions back: information has to move
between positions, and attention is the only part of the model that moves it.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformer import TinyTransformer

RUNS = Path(__file__).resolve().parent / "runs"  # what the script writes, wherever it runs
IGNORE = -100  # cross_entropy's ignore_index: no loss where the next token is unpredictable


def reversal_batch(batch: int, length: int, vocab: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, both (batch, 2 * length), int64.

    A full sequence is x (``length`` tokens in 0..vocab-1), the separator ``vocab``, then x
    reversed; inputs are all of it but the last token, targets all of it but the first, with
    IGNORE over the first half (random tokens cannot be predicted).
    """
    x = torch.randint(vocab, (batch, length), generator=generator)  # (B, n)
    separator = torch.full((batch, 1), vocab)  # (B, 1)
    sequence = torch.cat([x, separator, x.flip(1)], dim=1)  # (B, 2n + 1)
    inputs, targets = sequence[:, :-1], sequence[:, 1:].clone()  # (B, 2n) each
    targets[:, :length] = IGNORE  # x_1 .. x_{n-1} are guesswork, the separator is given
    return inputs, targets


def train_reversal(model: nn.Module, steps: int, length: int, vocab: int, batch_size: int = 64,
                   lr: float = 1e-2, seed: int = 0, device: torch.device | str = "cpu",
                   progress: bool = False) -> list[float]:
    """Train ``model`` with Adam on fresh batches, causal attention; the loss of every step."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc="train", disable=not progress):
        inputs, targets = (t.to(device) for t in reversal_batch(batch_size, length, vocab,
                                                                 generator))
        logits = model(inputs, causal=True)  # (B, 2n, vocab + 1)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                           ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Extend prompt (B, P) by ``steps`` greedy tokens, each fed back in: (B, P + steps)."""
    was_training = model.training
    model.eval()
    tokens = prompt
    for _ in range(steps):
        logits = model(tokens, causal=True)  # (B, P', vocab + 1)
        tokens = torch.cat([tokens, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    model.train(was_training)
    return tokens


def reversal_accuracy(model: nn.Module, x: torch.Tensor, vocab: int) -> float:
    """Fraction of the tokens of x (B, n) reversed right when the model writes them itself."""
    device = next(model.parameters()).device
    prompt = torch.cat([x, torch.full((len(x), 1), vocab)], dim=1).to(device)  # (B, n + 1)
    written = generate(model, prompt, x.shape[1])[:, x.shape[1] + 1:].cpu()  # (B, n)
    return (written == x.flip(1)).float().mean().item()


def at_least(minimum: int):
    """argparse type: a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return int(text)
    return parse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=at_least(1), default=6, help="default: %(default)s")
    p.add_argument("--vocab", type=at_least(2), default=10, help="default: %(default)s")
    p.add_argument("--dim", type=at_least(1), default=32, help="default: %(default)s")
    p.add_argument("--heads", type=at_least(1), default=4, help="default: %(default)s")
    p.add_argument("--layers", type=at_least(1), default=1, help="default: %(default)s")
    p.add_argument("--steps", type=at_least(1), default=300, help="default: %(default)s")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-2, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="default: %(default)s (cuda when available)")
    p.add_argument("--out", default=str(RUNS / "reverse.pt"), help="default: %(default)s")
    p.add_argument("--dry-run", action="store_true", help="5 steps: the accuracy means nothing")
    args = p.parse_args(argv)
    if not args.lr > 0:
        p.error(f"--lr must be a positive number, got {args.lr}")
    if args.dim % args.heads:
        p.error(f"--dim {args.dim} must be a multiple of --heads {args.heads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available on this machine")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    steps = 5 if args.dry_run else args.steps

    torch.manual_seed(args.seed)
    model = TinyTransformer(args.vocab + 1, 2 * args.length, args.dim, args.heads, args.layers)
    losses = train_reversal(model, steps, args.length, args.vocab, args.batch_size, args.lr,
                            args.seed, device, progress=sys.stderr.isatty())
    x = torch.randint(args.vocab, (1000, args.length), generator=torch.Generator().manual_seed(1))
    accuracy = reversal_accuracy(model, x, args.vocab)
    note = " (a dry run: this accuracy means nothing)" if args.dry_run else ""
    print(f"{steps} steps, final loss {losses[-1]:.3f}; reversed {accuracy:.1%} of the tokens "
          f"of 1000 new sequences (chance: {1 / args.vocab:.0%}){note}")
    prompt = torch.cat([x[:1], torch.tensor([[args.vocab]])], dim=1).to(device)  # (1, n + 1)
    written = generate(model, prompt, args.length)[0, args.length + 1:].tolist()
    print(f"input {x[0].tolist()} -> written {written}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = dict(vocab=args.vocab + 1, max_len=2 * args.length, dim=args.dim, heads=args.heads,
                  layers=args.layers)
    torch.save({"config": config, "state_dict": model.state_dict()}, out)
    print(f"saved the model to {out}")


if __name__ == "__main__":
    main()
