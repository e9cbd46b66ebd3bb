"""Hypothesis strategies shared by the suites: batch sizes, labels, logits, shapes."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def labelled_predictions(draw, max_classes: int = 10, max_batch: int = 64):
    """``(logits, targets, num_classes)``: float32 logits (B, C) and int64 targets (B,).

    Logits are drawn from a seed, so any batch size and class count stay cheap to make.
    """
    import torch

    num_classes = draw(st.integers(min_value=2, max_value=max_classes))
    batch = draw(st.integers(min_value=1, max_value=max_batch))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, generator=g) * 3
    targets = torch.randint(0, num_classes, (batch,), generator=g)
    return logits, targets, num_classes


@st.composite
def label_pairs(draw, max_classes: int = 10, max_batch: int = 64):
    """``(predicted, actual, num_classes)``: two int64 label vectors of one length."""
    import torch

    num_classes = draw(st.integers(min_value=2, max_value=max_classes))
    batch = draw(st.integers(min_value=1, max_value=max_batch))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    actual = torch.randint(0, num_classes, (batch,), generator=g)
    # mostly right, sometimes wrong: metrics are most interesting away from 0 and 1
    noise = torch.randint(0, num_classes, (batch,), generator=g)
    keep = torch.rand(batch, generator=g) < draw(st.floats(0.0, 1.0))
    predicted = torch.where(keep, actual, noise)
    return predicted, actual, num_classes


@st.composite
def extreme_logits(draw, max_classes: int = 10, max_batch: int = 16):
    """float32 logits (B, C) at scales where a naive ``exp`` overflows or underflows.

    Rows spread by up to 1e4 and shifted by up to +-1e4 (``exp`` of float32 overflows above
    ~88.7 and underflows below ~-103), optionally each row by a different amount, so that a
    shift by one maximum over the whole batch is not enough.
    """
    import torch

    num_classes = draw(st.integers(min_value=2, max_value=max_classes))
    batch = draw(st.integers(min_value=1, max_value=max_batch))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    spread = draw(st.sampled_from([1.0, 30.0, 100.0, 1e3, 1e4]))
    shift = draw(st.sampled_from([0.0, 100.0, -100.0, 1e3, -1e3, 1e4, -1e4]))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, generator=g) * spread + shift
    if draw(st.booleans()):
        logits = logits + torch.randn(batch, 1, generator=g) * 1e3
    return logits


@st.composite
def reshape_pairs(draw, max_dims: int = 3, max_side: int = 6, allow_infer: bool = True):
    """``(shape, target)``: a tensor shape and a shape with the same number of elements.

    Both are tuples of 1 to ``max_dims`` sizes in 1..``max_side`` (``target``'s sizes are
    factors of the element count, so it always fits). With ``allow_infer``, ``target`` may
    hold one -1, the size ``reshape``/``view`` infer.
    """
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=1, max_size=max_dims)))
    rest = 1
    for size in shape:
        rest *= size
    target = []
    for _ in range(draw(st.integers(1, max_dims)) - 1):
        factor = draw(st.sampled_from([d for d in range(1, rest + 1) if rest % d == 0]))
        target.append(factor)
        rest //= factor
    target = draw(st.permutations([*target, rest]))
    if allow_infer and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return shape, tuple(target)
