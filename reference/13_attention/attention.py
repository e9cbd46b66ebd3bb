"""Scaled dot-product attention, written out, and the causal mask of a decoder.

Masks are boolean and say what may be attended: True where query i may look at key j, as
``torch.nn.functional.scaled_dot_product_attention`` reads a boolean ``attn_mask``.
"""

import torch


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v, for any leading dimensions (batch, heads, ...).

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); ``mask`` (bool) broadcasts to
    (..., Lq, Lk), True where the query may attend to the key. Every query must be allowed
    at least one key. Returns the output (..., Lq, dv) and the weights (..., Lq, Lk): for each
    query, a probability distribution over the keys.
    """
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5  # (..., Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # exp(-inf) = 0: no weight at all
    weights = scores.softmax(dim=-1)  # (..., Lq, Lk): each query's row sums to one
    return weights @ v, weights  # (..., Lq, dv), (..., Lq, Lk)


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(length, length) bool, True where query i may attend to key j: the past and itself.

    A decoder predicts position i + 1 from positions 0..i; a query that sees a later key
    sees the answer it is being trained to predict.
    """
    ones = torch.ones(length, length, dtype=torch.bool, device=device)  # (L, L)
    return ones.tril()  # row i: keys 0..i
