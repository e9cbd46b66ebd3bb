"""Multi-head self-attention, a pre-norm transformer block, and a tiny transformer of them.

Shapes: B batch, L sequence length, D model width (``dim``), H heads, hd = D // H per head.
"""

import torch
from attention import causal_mask, scaled_dot_product_attention
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, hd): head h gets features h*hd .. (h+1)*hd - 1 of every position."""
    batch, length, dim = x.shape
    return x.view(batch, length, heads, dim // heads).transpose(1, 2)  # (B, H, L, hd)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, hd) -> (B, L, D): the inverse of ``split_heads``."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, L, D)


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with ``heads`` heads of width dim // heads, as nn.MultiheadAttention.

    Projections ``q``, ``k``, ``v`` (each Linear(dim, dim)) feed the heads; ``out`` mixes them.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                causal: bool = False, need_weights: bool = False):
        """x (B, L, D) -> (B, L, D); with ``need_weights``, also the weights (B, H, L, L).

        ``key_padding_mask`` (B, L) bool is True at padding, as nn.MultiheadAttention's: no
        query attends to a padded key. ``causal``: position i attends to positions 0..i only.
        """
        length = x.shape[1]
        q = split_heads(self.q(x), self.heads)  # (B, H, L, hd)
        k = split_heads(self.k(x), self.heads)  # (B, H, L, hd)
        v = split_heads(self.v(x), self.heads)  # (B, H, L, hd)
        mask = causal_mask(length, x.device) if causal else None  # (L, L)
        if key_padding_mask is not None:
            keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, L): True at the real keys
            mask = keep if mask is None else mask & keep  # (B, 1, L, L)
        out, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, L, hd), (B, H, L, L)
        out = self.out(merge_heads(out))  # (B, L, D)
        return (out, weights) if need_weights else out


class TransformerBlock(nn.Module):
    """A pre-norm block: x + attention(LayerNorm(x)), then the same with an MLP.

    The residual stream carries x itself; each sub-layer reads a normalised copy of it and
    adds its result. Sub-modules: ``norm1``, ``attn``, ``norm2``, ``mlp`` (Linear, GELU, Linear).
    """

    def __init__(self, dim: int, heads: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 4 * dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D); the masks as in MultiHeadSelfAttention.forward."""
        x = x + self.attn(self.norm1(x), key_padding_mask, causal)  # (B, L, D)
        x = x + self.mlp(self.norm2(x))  # (B, L, D)
        return x


class TinyTransformer(nn.Module):
    """Tokens (B, L) -> logits (B, L, vocab): token and position embeddings, ``layers``
    TransformerBlocks, a final LayerNorm and a linear head. Sequences up to ``max_len``."""

    def __init__(self, vocab: int, max_len: int, dim: int = 32, heads: int = 4,
                 layers: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """tokens (B, L) int64 -> logits (B, L, vocab); the masks as in the blocks."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
        x = self.tokens(tokens) + self.positions(positions)  # (B, L, D)
        for block in self.blocks:
            x = block(x, key_padding_mask, causal)  # (B, L, D)
        return self.head(self.norm(x))  # (B, L, vocab)
