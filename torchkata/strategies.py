"""Hypothesis strategies shared by the suites: batch sizes, labels, logits, shapes."""

from __future__ import annotations

from hypothesis import strategies as st

batch_sizes = st.integers(min_value=1, max_value=64)


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
