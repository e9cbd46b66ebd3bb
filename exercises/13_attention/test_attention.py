"""Exercise 13: scaled dot-product attention, multi-head self-attention, masks, a pre-norm block.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters. The oracles are PyTorch's own
``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``, run in float64 on the same
weights as yours.
"""

import contextlib
import inspect
import io
import re

import pytest
import torch

# The first optimizer (and nn.MultiheadAttention's mask check) imports torch._dynamo, seconds
# on a busy machine: pay for it while the module loads, not inside one test's time budget.
import torch._dynamo  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from torchkata import under_test
from torchkata.checks import (
    assert_close_to_oracle,
    assert_grads_flow,
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    how_script_ended,
    run_as_main,
    shared,
    shell_argv,
)

attention = under_test("attention")
transformer = under_test("transformer")
train = under_test("train")

F64 = torch.float64
DEFINITION = "Scaled dot-product attention is softmax(q k^T / sqrt(d)) v, d the width of q and k."
PADDING = ("key_padding_mask follows nn.MultiheadAttention: True marks padding, keys that no "
           "query may attend to. (A boolean attention mask, as in "
           "F.scaled_dot_product_attention, says the opposite: True where attention is allowed.)")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, device) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed), dtype=F64).to(device)


def padding(lengths: list[int], length: int, device) -> torch.Tensor:
    """(B, L) bool, True at the padding after each sequence's real tokens."""
    return torch.arange(length, device=device) >= torch.tensor(lengths, device=device)[:, None]


def self_attention(dim: int, heads: int, device) -> nn.Module:
    return transformer.MultiHeadSelfAttention(dim, heads).to(device, F64)


def attention_and_twin(dim: int, heads: int, device) -> tuple[nn.Module, nn.Module]:
    layer = self_attention(dim, heads, device)
    return layer, torch_twin(layer, dim, heads, device)


def torch_twin(layer: nn.Module, dim: int, heads: int, device) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention holding the same weights as ``layer`` (q, k, v, out)."""
    twin = nn.MultiheadAttention(dim, heads, batch_first=True).to(device, F64)
    with torch.no_grad():
        twin.in_proj_weight.copy_(torch.cat([layer.q.weight, layer.k.weight, layer.v.weight]))
        twin.in_proj_bias.copy_(torch.cat([layer.q.bias, layer.k.bias, layer.v.bias]))
        twin.out_proj.weight.copy_(layer.out.weight)
        twin.out_proj.bias.copy_(layer.out.bias)
    return twin


def future(length: int, device) -> torch.Tensor:
    """nn.MultiheadAttention's causal attn_mask: True where a key is in the future (blocked)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


def sdpa(q, k, v, mask=None):
    what = f"scaled_dot_product_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, v " \
           f"{tuple(v.shape)}{', mask' if mask is not None else ''})"
    result = call(attention.scaled_dot_product_attention, q, k, v, mask, what=what)
    if not (isinstance(result, tuple) and len(result) == 2):
        fail(f"{what} returned {type(result).__name__}; expected a pair (output, weights).")
    return result


# --- scaled dot-product attention ----------------------------------------------------------


@st.composite
def attention_inputs(draw):
    """(q, k, v, mask or None) in float64 with lead dims (B, H), widths d and dv."""
    batch, heads = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    queries, keys = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d, dv = draw(st.sampled_from([1, 2, 4, 8, 16, 32])), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    g = generator(seed)
    q = torch.randn(batch, heads, queries, d, generator=g, dtype=F64) * 2
    k = torch.randn(batch, heads, keys, d, generator=g, dtype=F64) * 2
    v = torch.randn(batch, heads, keys, dv, generator=g, dtype=F64)
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(batch, 1, queries, keys, generator=g) < 0.6
        mask[..., torch.randint(keys, (1,), generator=g)] = True  # every query keeps a key
    return q, k, v, mask


@given(case=attention_inputs())
def test_attention_matches_torch_sdpa(device, case):
    """The output equals F.scaled_dot_product_attention's for any batch, heads, lengths, widths."""
    q, k, v, mask = (t.to(device) if t is not None else None for t in case)
    out, weights = sdpa(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close_to_oracle(out, expected, f"attention output for q {tuple(q.shape)}, k "
                           f"{tuple(k.shape)}, v {tuple(v.shape)}"
                           f"{' with a mask' if mask is not None else ''}", DEFINITION)
    if tuple(weights.shape) != (*q.shape[:-1], k.shape[-2]):
        fail(f"The weights have shape {tuple(weights.shape)}; expected "
             f"{(*q.shape[:-1], k.shape[-2])}: one weight per (query, key) pair.")


def test_attention_weights_are_a_distribution_over_keys(device):
    """For every query, the weights are >= 0 and sum to one over the keys (the last axis)."""
    q, k, v = randn(2, 3, 4, seed=1, device=device), randn(2, 5, 4, seed=2, device=device), \
        randn(2, 5, 3, seed=3, device=device)  # 3 queries, 5 keys
    _, weights = sdpa(q, k, v)
    if tuple(weights.shape) != (2, 3, 5):
        fail(f"With 3 queries and 5 keys the weights have shape {tuple(weights.shape)}; "
             f"expected (2, 3, 5): batch, queries, keys.")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        fail("Some weights are negative, inf or NaN; expected probabilities.")
    sums = weights.sum(dim=-1)
    if not torch.allclose(sums, torch.ones_like(sums)):
        over_queries = torch.allclose(weights.sum(dim=-2), torch.ones_like(weights[:, 0]))
        seen = " They sum to one over the queries (dim -2) instead." if over_queries else ""
        fail(f"The weights of the 3 queries sum to {[round(x, 3) for x in sums[0].tolist()]} "
             f"over the 5 keys; expected 1 "
             f"for every query.{seen} The scores are (queries, keys): row i says how much "
             f"query i takes from each key, and its output is that weighted average of the "
             f"values. Normalised any other way, a query's output depends on the other "
             f"queries, and in a decoder on the future.")


@pytest.mark.requires("test_attention_weights_are_a_distribution_over_keys")
@pytest.mark.parametrize("d", [4, 16, 64])
def test_scores_are_scaled_by_the_square_root_of_the_key_width(device, d):
    """Two keys whose dot products with the query are sqrt(d) and 0 get sigmoid(1), sigmoid(-1)."""
    q = torch.full((1, 1, d), d ** -0.5, dtype=F64, device=device)  # q . ones(d) = sqrt(d)
    k = torch.stack([torch.ones(d, dtype=F64), torch.zeros(d, dtype=F64)])[None].to(device)
    v = torch.eye(2, dtype=F64, device=device)[None]
    _, weights = sdpa(q, k, v)
    expected = torch.tensor([1.0, -1.0], dtype=F64).sigmoid()  # 0.731, 0.269
    got = weights.detach().reshape(-1).cpu()
    if got.shape != (2,) or not torch.allclose(got, expected, atol=1e-6):
        fail(f"With key width d={d}, a query whose dot products with two keys are "
             f"{d ** 0.5:g} and 0 got the weights {[round(w, 4) for w in got.tolist()]}; "
             f"expected [0.7311, 0.2689] for every d. {DEFINITION} Dot products of random "
             f"width-d vectors grow like sqrt(d): unscaled, the softmax of a wide head "
             f"saturates to one-hot weights, and their gradients vanish.")


@pytest.mark.requires("test_attention_weights_are_a_distribution_over_keys")
def test_masked_keys_get_zero_weight(device):
    """Where the mask is False, the weight is exactly 0; the allowed keys share all of it."""
    q, k, v = (randn(2, 4, 3, seed=s, device=device) for s in (1, 2, 3))
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]],
                        dtype=torch.bool, device=device)  # (4 queries, 4 keys)
    _, weights = sdpa(q, k, v, mask)
    leaked = weights.detach()[:, ~mask].abs().max().item()
    if not leaked == 0:  # NaN compares False: fails too
        fail(f"Keys the mask forbids got weights up to {leaked:.3g}; expected exactly 0. The "
             f"softmax gives every finite score, 0 included, a weight exp(score) > 0: a "
             f"forbidden key needs a score that no exp() turns into a positive weight.")
    sums = weights.detach().sum(dim=-1)
    if not torch.allclose(sums, torch.ones_like(sums)):
        fail(f"With a mask, the 4 queries' weights sum to "
             f"{[round(x, 3) for x in sums[0].tolist()]}; expected 1 for each: the "
             f"allowed keys share the whole weight.")


def test_causal_mask_allows_the_past_and_the_present_only(device):
    """causal_mask(L)[i, j] is True exactly when j <= i, as a (L, L) bool tensor."""
    for length in (1, 2, 4, 7):
        got = call(attention.causal_mask, length, device, what=f"causal_mask({length})")
        if got.dtype != torch.bool or tuple(got.shape) != (length, length):
            fail(f"causal_mask({length}) is {got.dtype} of shape {tuple(got.shape)}; expected "
                 f"a bool ({length}, {length}) tensor: True where query i may see key j.")
        rows, cols = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
        if not torch.equal(got.cpu(), cols <= rows):
            grid = "\n".join("    " + " ".join(str(int(b)) for b in row) for row in got.tolist())
            fail(f"causal_mask({length}) is (1 = may attend, rows = queries, columns = keys)\n"
                 f"{grid}\nExpected query i to see keys 0..i: itself and the past. A decoder "
                 f"is trained to predict token i + 1 at position i; a key after i shows it "
                 f"the answer, the training loss looks great, and generation fails.")


# --- multi-head self-attention -------------------------------------------------------------


@given(batch=st.integers(1, 3), length=st.integers(1, 5), heads=st.integers(1, 4),
       head_dim=st.integers(1, 3))
def test_split_heads_gives_each_head_its_slice_of_every_position(device, batch, length, heads,
                                                                 head_dim):
    """split_heads(x, H)[b, h, l] is x[b, l, h*hd:(h+1)*hd]: a head never mixes positions."""
    dim = heads * head_dim
    x = torch.arange(batch * length * dim, dtype=F64, device=device).reshape(batch, length, dim)
    what = f"split_heads(x, {heads}) for x of shape {tuple(x.shape)}"
    got = call(transformer.split_heads, x, heads, what=what)
    expected = torch.stack([x[:, :, h * head_dim:(h + 1) * head_dim] for h in range(heads)], 1)
    if tuple(got.shape) != tuple(expected.shape):
        fail(f"{what} has shape {tuple(got.shape)}; expected {tuple(expected.shape)} "
             f"(B, H, L, hd).")
    if not torch.equal(got, expected):
        wrong = (got != expected).nonzero()[0].tolist()  # [b, h, l, f]
        source = sorted({int(p) for p in (got[tuple(wrong[:3])] // dim % length).tolist()})
        fail(f"{what}: head {wrong[1]} at position {wrong[2]} holds features of position(s) "
             f"{source} of x; expected position {wrong[2]} only, features "
             f"{wrong[1] * head_dim}..{(wrong[1] + 1) * head_dim - 1}. Each head must see "
             f"every position whole (its own slice of the features); a tensor can take the "
             f"shape (B, H, L, hd) and still hold its numbers in the wrong places.")


@given(batch=st.integers(1, 3), length=st.integers(1, 5), heads=st.integers(1, 4),
       head_dim=st.integers(1, 3))
def test_merge_heads_undoes_split_heads(device, batch, length, heads, head_dim):
    """merge_heads(split_heads(x, H)) gives back x exactly."""
    x = randn(batch, length, heads * head_dim, seed=length, device=device)
    split = call(transformer.split_heads, x, heads, what=f"split_heads(x, {heads})")
    back = call(transformer.merge_heads, split, what="merge_heads(split_heads(x, heads))")
    assert_close_to_oracle(back, x, f"merge_heads(split_heads(x, {heads})) for x of shape "
                           f"{tuple(x.shape)}", "Merging the heads must put every feature of "
                           "every position back where it came from, or the output projection "
                           "mixes up positions.")


def three_models(dim: int, heads: int, vocab: int, device) -> tuple[nn.Module, ...]:
    return (transformer.MultiHeadSelfAttention(dim, heads).to(device, F64),
            transformer.TransformerBlock(dim, heads).to(device, F64),
            transformer.TinyTransformer(vocab, 7, dim, heads, layers=2).to(device, F64))


@given(batch=st.integers(1, 4), length=st.integers(1, 7), heads=st.sampled_from([1, 2, 4]),
       padded=st.booleans(), causal=st.booleans())
def test_shapes_for_any_batch_and_length(device, batch, length, heads, padded, causal):
    """(B, L, D) -> (B, L, D) for the layer and the block, (B, L) -> (B, L, V) for the model."""
    dim, vocab = 8, 5
    x = randn(batch, length, dim, seed=batch, device=device)
    mask = padding([max(1, length - i) for i in range(batch)], length, device) if padded else None
    layer, block, model = shared(three_models, dim, heads, vocab, device)
    tokens = torch.randint(vocab, (batch, length), device=device)
    what = f"for a batch of {batch} sequences of length {length}, {heads} heads"
    out, weights = call(layer, x, mask, causal, True, what=f"MultiHeadSelfAttention {what}")
    shapes = {"MultiHeadSelfAttention": (out, (batch, length, dim)),
              "its attention weights": (weights, (batch, heads, length, length)),
              "TransformerBlock": (call(block, x, mask, causal, what=f"TransformerBlock {what}"),
                                   (batch, length, dim)),
              "TinyTransformer": (call(model, tokens, mask, causal, what=f"TinyTransformer "
                                       f"{what}"), (batch, length, vocab))}
    for name, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            fail(f"{name} {what} has shape {tuple(tensor.shape)}; expected {shape}.")


@given(batch=st.integers(1, 3), length=st.integers(2, 6), heads=st.sampled_from([1, 2, 4]),
       head_dim=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_self_attention_is_permutation_equivariant(device, batch, length, heads, head_dim,
                                                   seed):
    """Without masks, permuting the positions of x permutes the output the same way."""
    dim = heads * head_dim
    layer = shared(self_attention, dim, heads, device)
    x = randn(batch, length, dim, seed=seed, device=device)
    perm = torch.randperm(length, generator=generator(seed)).to(device)
    out = call(layer, x, what="MultiHeadSelfAttention(x)")
    out_of_permuted = call(layer, x[:, perm], what="MultiHeadSelfAttention(x[:, perm])")
    assert_close_to_oracle(out_of_permuted, out[:, perm],
                           f"layer(x[:, perm]) against layer(x)[:, perm], {heads} heads, "
                           f"length {length}",
                           "Self-attention without masks treats a sequence as a set: each "
                           "position's output depends on its own input and on the set of all "
                           "inputs, never on where they sit. If reordering the input changes "
                           "more than the order of the output, some reshape mixes the numbers "
                           "of different positions.")


@pytest.mark.requires("test_attention_matches_torch_sdpa",
                      "test_attention_weights_are_a_distribution_over_keys",
                      "test_causal_mask_allows_the_past_and_the_present_only",
                      "test_split_heads_gives_each_head_its_slice_of_every_position",
                      "test_merge_heads_undoes_split_heads")
@given(batch=st.integers(1, 3), length=st.integers(1, 6), heads=st.sampled_from([1, 2, 3, 4]),
       head_dim=st.integers(1, 4), causal=st.booleans(), padded=st.booleans(),
       seed=st.integers(0, 2**16))
def test_self_attention_matches_torch_multihead_attention(device, batch, length, heads, head_dim,
                                                          causal, padded, seed):
    """With the same weights, the layer gives nn.MultiheadAttention's output, masks included."""
    dim = heads * head_dim
    layer, twin = shared(attention_and_twin, dim, heads, device)
    x = randn(batch, length, dim, seed=seed, device=device)
    g = generator(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g).tolist()
    mask = padding(lengths, length, device) if padded else None
    what = (f"MultiHeadSelfAttention({dim}, heads={heads}) on (B={batch}, L={length}, D={dim})"
            f"{', causal' if causal else ''}"
            f"{f', padded to lengths {lengths}' if padded else ''}")
    out = call(layer, x, mask, causal, what=what)
    expected, _ = twin(x, x, x, key_padding_mask=mask, need_weights=False,
                       attn_mask=future(length, device) if causal else None)
    assert_close_to_oracle(out, expected, f"{what}, against nn.MultiheadAttention",
                           "Both project x to q, k, v with the same weights, split each into "
                           "heads of dim // heads features, attend per head, merge the heads "
                           "and project with `out`.")


@pytest.mark.requires("test_split_heads_gives_each_head_its_slice_of_every_position")
@given(length=st.integers(2, 7), heads=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
def test_causal_output_ignores_later_positions(device, length, heads, seed):
    """With causal=True, the output at position t does not change when positions > t change."""
    layer = shared(self_attention, 8, heads, device)
    t = seed % (length - 1)  # a position with a future
    x = randn(2, length, 8, seed=seed, device=device)
    changed = x.clone()
    changed[:, t + 1:] = randn(2, length - t - 1, 8, seed=seed + 1, device=device)
    before = call(layer, x, causal=True, what="MultiHeadSelfAttention(x, causal=True)")
    after = call(layer, changed, causal=True, what="MultiHeadSelfAttention(x', causal=True)")
    moved = (after[:, : t + 1] - before[:, : t + 1]).abs().max().item()
    if not moved < 1e-9:
        fail(f"With causal=True on a sequence of length {length}, changing the inputs after "
             f"position {t} changed the outputs at positions 0..{t} by up to {moved:.3g}; "
             f"expected no change at all. A causal model must not see the future: trained "
             f"with a view of the next token, it copies it, and then has nothing to copy when "
             f"it writes text on its own.")


@pytest.mark.requires("test_split_heads_gives_each_head_its_slice_of_every_position")
@given(batch=st.integers(2, 4), length=st.integers(2, 6), heads=st.sampled_from([1, 2]),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_padded_keys_get_zero_weight(device, batch, length, heads, causal, seed):
    """No query gives any weight to a key that key_padding_mask marks as padding."""
    layer = shared(self_attention, 8, heads, device)
    x = randn(batch, length, 8, seed=seed, device=device)
    lengths = [length] + torch.randint(1, length, (batch - 1,), generator=generator(seed)).tolist()
    mask = padding(lengths, length, device)
    what = f"MultiHeadSelfAttention on sequences of lengths {lengths} padded to {length}"
    _, weights = call(layer, x, mask, causal, True, what=what, why=PADDING)
    weights = weights.detach()
    if not torch.isfinite(weights).all():
        rows = sorted({int(b) for b in (~torch.isfinite(weights)).nonzero()[:, 0].tolist()})
        fail(f"{what}: the weights of sequence(s) {rows} are NaN, which happens when a query "
             f"has no key left to attend to. Expected every real key to stay visible. {PADDING}")
    leaked = weights.masked_select(mask[:, None, None, :]).abs().max().item()
    if leaked != 0:
        fail(f"{what}: padded keys got weights up to {leaked:.3g}; expected 0. {PADDING} "
             f"Padding is filler: whatever sits there must not reach the real tokens.")


@pytest.mark.requires("test_split_heads_gives_each_head_its_slice_of_every_position")
@given(length=st.integers(2, 6), heads=st.sampled_from([1, 2]), causal=st.booleans(),
       seed=st.integers(0, 2**16))
def test_padding_does_not_change_the_real_positions(device, length, heads, causal, seed):
    """A padded batch gives each sequence the output it gets alone, at its real positions."""
    layer = shared(self_attention, 8, heads, device)
    lengths = [length, 1 + seed % length, 1]
    x = randn(3, length, 8, seed=seed, device=device) * 3  # padding filled with junk, too
    out = call(layer, x, padding(lengths, length, device), causal,
               what=f"MultiHeadSelfAttention on lengths {lengths} padded to {length}", why=PADDING)
    for b, n in enumerate(lengths):
        alone = call(layer, x[b:b + 1, :n], None, causal,
                     what=f"MultiHeadSelfAttention on sequence {b} alone")
        assert_close_to_oracle(out[b:b + 1, :n], alone,
                               f"sequence {b} (length {n}) in a batch padded to {length}, "
                               f"against the same sequence alone",
                               f"Batching with padding must not change a sequence's result. "
                               f"{PADDING}")


def test_layers_have_their_documented_sizes():
    """heads divide dim; the MLP is 4 * dim wide; TinyTransformer: dim 32, 4 heads, 2 blocks."""
    try:
        transformer.MultiHeadSelfAttention(6, 4)
    except ValueError:
        pass
    except Exception as exc:  # noqa: BLE001
        fail(f"MultiHeadSelfAttention(6, heads=4) raised {type(exc).__name__}: {exc}; expected "
             f"a ValueError that says dim must be a multiple of heads.")
    else:
        fail("MultiHeadSelfAttention(6, heads=4) was built; expected a ValueError: 6 features "
             "cannot be split into 4 heads of equal width.")
    widths = [transformer.TransformerBlock(8, 2).mlp[0].out_features,
              transformer.TransformerBlock(8, 2, hidden=5).mlp[0].out_features]
    if widths != [32, 5]:
        fail(f"TransformerBlock(8, 2) and TransformerBlock(8, 2, hidden=5) have MLPs "
             f"{widths[0]} and {widths[1]} wide; expected 32 (4 * dim, the default) and 5.")
    model = transformer.TinyTransformer(7, 6)
    got = (model.tokens.embedding_dim, model.blocks[0].attn.heads, len(model.blocks),
           model.positions.num_embeddings, model.head.out_features)
    if got != (32, 4, 2, 6, 7):
        fail(f"TinyTransformer(vocab=7, max_len=6) has width {got[0]}, {got[1]} heads, "
             f"{got[2]} blocks, {got[3]} positions and {got[4]} outputs; expected the "
             f"documented defaults, width 32, 4 heads and 2 blocks, with 6 positions and 7 "
             f"outputs.")


# --- the pre-norm transformer block --------------------------------------------------------


def block_of(dim: int, heads: int, device) -> nn.Module:
    torch.manual_seed(0)
    block = transformer.TransformerBlock(dim, heads).to(device, F64)
    with torch.no_grad():  # LayerNorm starts as the identity map; make its affine part matter
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return block


def block_and_twin(dim: int, heads: int, device) -> tuple[nn.Module, nn.Module]:
    block = block_of(dim, heads, device)
    return block, torch_twin(block.attn, dim, heads, device)


def test_block_keeps_an_untouched_residual_path(device):
    """With the attention and MLP outputs zeroed, the block returns its input unchanged."""
    block = block_of(8, 2, device)
    with torch.no_grad():
        for last in (block.attn.out, block.mlp[-1]):
            last.weight.zero_()
            last.bias.zero_()
    x = randn(2, 5, 8, seed=3, device=device) * 4 + 2
    out = call(block, x, what="TransformerBlock(x) with its sub-layers' outputs zeroed").detach()
    if not torch.allclose(out, x):
        normalised = torch.allclose(out, block.norm1(x))
        seen = (" It looks normalised: LayerNorm's output took the place of x in the "
                "stream." if normalised else "")
        fail(f"With the last layers of the attention and the MLP zeroed (both sub-layers add "
             f"nothing), TransformerBlock(x) differs from x by up to "
             f"{(out - x).abs().max().item():.3g}; expected x itself.{seen} In a pre-norm "
             f"block, the residual stream carries x untouched from block to block; each "
             f"sub-layer reads a normalised copy and adds its result. That clean path is what "
             f"lets gradients reach the first layers of a deep stack.")


@pytest.mark.requires("test_self_attention_matches_torch_multihead_attention")
@given(batch=st.integers(1, 3), length=st.integers(1, 6), heads=st.sampled_from([1, 2, 4]),
       head_dim=st.integers(1, 3), causal=st.booleans(), padded=st.booleans(),
       seed=st.integers(0, 2**16))
def test_block_matches_its_definition(device, batch, length, heads, head_dim, causal, padded,
                                      seed):
    """block(x) = y + mlp(norm2(y)) with y = x + attention(norm1(x)), built from torch's layers."""
    dim = heads * head_dim
    block, twin = shared(block_and_twin, dim, heads, device)
    x = randn(batch, length, dim, seed=seed, device=device)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator(seed)).tolist()
    mask = padding(lengths, length, device) if padded else None
    what = (f"TransformerBlock({dim}, heads={heads}) on (B={batch}, L={length}, D={dim})"
            f"{', causal' if causal else ''}{', padded' if padded else ''}")
    out = call(block, x, mask, causal, what=what)
    with torch.no_grad():
        def norm(layer, t):
            return F.layer_norm(t, (dim,), layer.weight, layer.bias, layer.eps)

        first, last = block.mlp[0], block.mlp[-1]
        attended, _ = twin(norm(block.norm1, x), norm(block.norm1, x), norm(block.norm1, x),
                           key_padding_mask=mask, need_weights=False,
                           attn_mask=future(length, device) if causal else None)
        y = x + attended
        expected = y + F.linear(F.gelu(F.linear(norm(block.norm2, y), first.weight, first.bias)),
                                last.weight, last.bias)
    assert_close_to_oracle(out, expected, what,
                           "A pre-norm block is y = x + attention(norm1(x)), then "
                           "y + mlp(norm2(y)), the MLP being Linear, GELU, Linear.")


def test_every_parameter_gets_a_gradient(device):
    """One loss on the TinyTransformer's logits reaches every parameter, in every block."""
    torch.manual_seed(0)
    model = transformer.TinyTransformer(7, 6, dim=8, heads=2, layers=2).to(device)
    tokens = torch.randint(7, (4, 6), device=device)
    logits = call(model, tokens, causal=True, what="TinyTransformer(tokens, causal=True)")
    loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(7, (24,), device=device))
    assert_grads_flow(model, loss, "the TinyTransformer")


def test_masks_are_off_unless_asked_for(device):
    """Without causal=..., the layer, the block and the model let every position see every other."""
    layer, block, model = shared(three_models, 8, 2, 5, device)
    x = randn(2, 4, 8, seed=5, device=device)
    tokens = torch.randint(5, (2, 4), generator=generator(5)).to(device)
    for name, module, inputs in (("MultiHeadSelfAttention", layer, x), ("TransformerBlock",
                                 block, x), ("TinyTransformer", model, tokens)):
        plain = call(module, inputs, what=f"{name}(x)")
        both_ways = call(module, inputs, causal=False, what=f"{name}(x, causal=False)")
        if tuple(plain.shape) != tuple(both_ways.shape) or not torch.allclose(plain, both_ways):
            causal = call(module, inputs, causal=True, what=f"{name}(x, causal=True)")
            seen = (" It equals the causal output: the default is causal=True." if
                    tuple(plain.shape) == tuple(causal.shape) and torch.allclose(plain, causal)
                    else "")
            fail(f"{name}(x), called without causal=, differs from {name}(x, causal=False); "
                 f"expected causal to default to False, as in nn.MultiheadAttention.{seen} An "
                 f"encoder (a classifier, a sentence embedding) lets every position see every "
                 f"other; a decoder asks for the mask explicitly.")


@pytest.mark.requires("test_block_matches_its_definition")
def test_model_adds_position_embeddings_to_token_embeddings(device):
    """TinyTransformer: head(norm(blocks(tokens(t) + positions(0..L-1)))), masks passed along."""
    model = shared(three_models, 8, 2, 5, device)[2]
    tokens = torch.randint(5, (3, 6), generator=generator(6)).to(device)
    mask = padding([6, 4, 1], 6, device)
    what = "TinyTransformer(tokens, key_padding_mask, causal=True) on 3 padded sequences of 6"
    out = call(model, tokens, mask, True, what=what)
    with torch.no_grad():
        x = model.tokens(tokens) + model.positions(torch.arange(6, device=device))
        for block in model.blocks:
            x = block(x, mask, True)
        expected = model.head(model.norm(x))
    assert_close_to_oracle(out, expected, what,
                           "The first block reads, at each position, the sum of the token's "
                           "embedding and the position's embedding (`tokens`, `positions`); "
                           "the blocks run in order with the same masks; a final LayerNorm "
                           "(`norm`) and the linear `head` give the logits. Any other "
                           "combination of the two embeddings is a different model.")


# --- the reversal task ---------------------------------------------------------------------


def test_reversal_batch_holds_a_sequence_and_its_reversal():
    """Inputs are x, separator, reversed x (but the last); targets are the next tokens."""
    inputs, targets = call(train.reversal_batch, 5, 4, 10, generator(0),
                           what="reversal_batch(5, length=4, vocab=10)")
    if tuple(inputs.shape) != (5, 8) or tuple(targets.shape) != (5, 8):
        fail(f"reversal_batch(5, length=4, vocab=10) gave shapes {tuple(inputs.shape)} and "
             f"{tuple(targets.shape)}; expected (5, 8) each: 4 tokens, the separator and the "
             f"reversal, less one token.")
    x = inputs[:, :4]
    expected_inputs = torch.cat([x, torch.full((5, 1), 10), x.flip(1)[:, :3]], dim=1)
    expected_targets = torch.cat([torch.full((5, 4), -100), x.flip(1)], dim=1)
    if not (torch.equal(inputs, expected_inputs) and torch.equal(targets, expected_targets)):
        fail(f"reversal_batch gave inputs {inputs[0].tolist()} and targets "
             f"{targets[0].tolist()}; expected inputs x, separator (10), x reversed less its "
             f"last token, and as targets the next token of each input position, IGNORE "
             f"where it cannot be predicted: -100, the ignore_index that cross_entropy skips "
             f"by default (any other value can be a real token of a larger vocabulary).")


class CountUp(nn.Module):
    """A stand-in model: at every position, the logits name (that position's token + 1) % 7."""

    def forward(self, tokens: torch.Tensor, key_padding_mask=None, causal=False) -> torch.Tensor:
        return F.one_hot((tokens + 1) % 7, 7).double()  # (B, L, 7)


def test_generate_feeds_back_its_own_predictions(device):
    """generate(model, prompt, n) appends n greedy tokens, each predicted from all before it."""
    model = CountUp().train()
    prompt = torch.tensor([[3], [5]], device=device)
    got = call(train.generate, model, prompt, 4, what="generate(model, prompt, 4)")
    expected = torch.tensor([[3, 4, 5, 6, 0], [5, 6, 0, 1, 2]])
    if tuple(got.shape) != (2, 5) or not torch.equal(got.cpu(), expected):
        fail(f"generate() with a model that always predicts 'last token + 1' (mod 7) turned the "
             f"prompts [[3], [5]] into {got.tolist()}; expected {expected.tolist()}: each new "
             f"token must be appended and fed back in, so that the next step sees it.")
    if not model.training:
        fail("generate() left the model in eval mode; expected it to restore the mode the "
             "model was in (training may go on after a sample).")


class CountUpRecording(CountUp):
    """CountUp that notes, at every call, the causal flag it got and whether autograd records."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def forward(self, tokens: torch.Tensor, key_padding_mask=None, causal=False) -> torch.Tensor:
        self.calls.append((causal, torch.is_grad_enabled()))
        return super().forward(tokens, key_padding_mask, causal)


@pytest.mark.requires("test_generate_feeds_back_its_own_predictions")
def test_generate_asks_the_model_for_causal_predictions():
    """generate runs the model with causal=True at every step, as train_reversal trained it."""
    model = CountUpRecording()
    call(train.generate, model, torch.tensor([[3]]), 3, what="generate(model, prompt, 3)")
    flags = [causal for causal, _ in model.calls]
    if not flags or not all(flag is True for flag in flags):
        fail(f"generate(model, prompt, 3) called the model with causal = {flags}; expected "
             f"causal=True at every step. The model was trained with the causal mask: without "
             f"it, each position sees the positions after it, a context the model never met "
             f"in training, and from the second block on that changes the prediction at the "
             f"last position too.")


@pytest.mark.requires("test_generate_feeds_back_its_own_predictions")
def test_generate_builds_no_autograd_graph():
    """generate runs the model with autograd off: no graph is recorded for a backward pass."""
    model = CountUpRecording()
    call(train.generate, model, torch.tensor([[3]]), 3, what="generate(model, prompt, 3)")
    recording = [grad for _, grad in model.calls]
    if any(recording):
        fail(f"generate(model, prompt, 3) ran the model with autograd recording at "
             f"{sum(recording)} of its {len(recording)} steps (torch.is_grad_enabled() was True "
             f"inside forward); expected it off. Generation never calls backward: a recorded "
             f"graph keeps every intermediate activation of the step in memory and slows it "
             f"down, for nothing.")


class CountUpWithWeights(CountUp):
    """CountUp with a parameter, so that code can ask it for its device."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))


@pytest.mark.requires("test_generate_feeds_back_its_own_predictions")
def test_reversal_accuracy_scores_the_written_second_half():
    """reversal_accuracy: the share of the tokens written after the separator that are right."""
    x = torch.tensor([[2, 1, 0], [3, 1, 0], [0, 1, 0]])  # reversed: [0, 1, 2], [0, 1, 3], [0, 1, 0]
    # vocab 6: the separator is token 6, and CountUp (mod 7) writes 0, 1, 2 after it
    got = call(train.reversal_accuracy, CountUpWithWeights(), x, 6,
               what="reversal_accuracy(model, x, vocab=6)")
    if not isinstance(got, float) or abs(got - 7 / 9) > 1e-6:
        fail(f"A model that writes [0, 1, 2] after the separator, asked to reverse [2, 1, 0], "
             f"[3, 1, 0] and [0, 1, 0], got a reversal accuracy of {got!r}; expected 7/9 = "
             f"0.7778: of the 9 tokens written after the separator, 7 equal the reversed "
             f"inputs (a token is right only when it is the same token, neither above nor "
             f"below it).")


def test_train_reversal_reports_the_loss_it_optimises():
    """train_reversal: one Adam step (lr 0.01) per fresh batch of 64 (seed 0); each step's loss."""
    torch.manual_seed(0)
    model = transformer.TinyTransformer(5, 6, dim=8, heads=2, layers=1)
    twin = transformer.TinyTransformer(5, 6, dim=8, heads=2, layers=1)
    twin.load_state_dict(model.state_dict())
    losses = call(train.train_reversal, model, 2, 3, 4,
                  what="train_reversal(model, steps=2, length=3, vocab=4)")
    g, optimizer, expected = generator(0), torch.optim.Adam(twin.parameters(), lr=1e-2), []
    for _ in range(2):
        inputs, targets = train.reversal_batch(64, 3, 4, g)
        loss = F.cross_entropy(twin(inputs, causal=True).flatten(0, 1), targets.flatten(),
                               ignore_index=train.IGNORE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        expected.append(loss.item())
    if not isinstance(losses, list) or len(losses) != 2 or any(
            abs(a - b) > 1e-4 for a, b in zip(losses, expected)):
        fail(f"train_reversal(model, steps=2, length=3, vocab=4) returned {losses!r}; expected "
             f"{[round(v, 4) for v in expected]}: the loss of each step, the next-token "
             f"cross-entropy of the causal model on a fresh batch of 64 drawn from seed 0, "
             f"ignoring the IGNORE targets, with Adam at lr 0.01 (the defaults).")
    if not model.training:
        fail("train_reversal left the model in eval mode; expected train mode.")


@pytest.mark.requires("test_train_reversal_reports_the_loss_it_optimises")
def test_train_reversal_draws_a_progress_bar_only_when_asked(capsys):
    """train_reversal writes nothing to stderr by default; with progress=True, a tqdm bar."""
    torch.manual_seed(0)
    model = transformer.TinyTransformer(5, 6, dim=4, heads=1, layers=1)
    for kwargs, wanted in (({}, False), ({"progress": True}, True)):
        shown = "".join(f", {k}={v}" for k, v in kwargs.items())
        what = f"train_reversal(model, steps=1, length=3, vocab=4, batch_size=2{shown})"
        capsys.readouterr()
        call(train.train_reversal, model, 1, 3, 4, 2, **kwargs, what=what)
        err = capsys.readouterr().err
        if bool(err.strip()) != wanted:
            fail(f"{what} wrote {err.strip()[:200]!r} to stderr; expected "
                 f"{'a progress bar' if wanted else 'nothing'}. The bar is for a person at a "
                 f"terminal (the script asks for it only then); in a log file or a test, every "
                 f"update of a bar is another line of noise.")


@pytest.mark.trains
@pytest.mark.requires("test_attention_matches_torch_sdpa",
                      "test_attention_weights_are_a_distribution_over_keys",
                      "test_causal_mask_allows_the_past_and_the_present_only",
                      "test_causal_output_ignores_later_positions",
                      "test_self_attention_matches_torch_multihead_attention",
                      "test_block_matches_its_definition",
                      "test_reversal_batch_holds_a_sequence_and_its_reversal")
def test_tiny_transformer_learns_to_reverse_sequences(device):
    """After 60 steps, a 1-block model writes the reversal of new sequences, 90% of tokens right."""
    length, vocab = 6, 10
    torch.manual_seed(0)
    model = transformer.TinyTransformer(vocab + 1, 2 * length, dim=32, heads=4, layers=1)
    losses = call(train.train_reversal, model, 60, length, vocab, 64, 1e-2, 0, device,
                  what="train_reversal(model, steps=60, ...)")
    if not all(torch.isfinite(torch.tensor(losses))):
        fail("The training loss became inf or NaN.")
    model.eval()
    x = torch.randint(vocab, (500, length), generator=generator(12345)).to(device)
    tokens = torch.cat([x, torch.full((500, 1), vocab, device=device)], dim=1)
    with torch.no_grad():
        for _ in range(length):  # the model writes the second half itself, token by token
            tokens = torch.cat([tokens, model(tokens, causal=True)[:, -1:].argmax(-1)], dim=1)
        written = (tokens[:, length + 1:] == x.flip(1)).double().mean().item()
        inputs, targets = (t.to(device) for t in train.reversal_batch(500, length, vocab,
                                                                        generator(1)))
        keep = targets != train.IGNORE
        forced = (model(inputs, causal=True).argmax(-1)[keep] == targets[keep])
        forced = forced.double().mean().item()
    if written < 0.9:
        gap = (f" With the true previous tokens as input (teacher forcing) it gets {forced:.0%}: "
               f"a model that does well only while it is shown the answer is seeing the "
               f"future." if forced > written + 0.2 else "")
        fail(f"After 60 training steps, the model writes {written:.0%} of the reversed tokens "
             f"right (chance: 10%); expected at least 90% (the reference reaches 100% after "
             f"30 steps on every seed we measured).{gap}")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """`python train.py --dry-run --device cpu --out F`: what it printed and wrote."""
    out = tmp_path_factory.mktemp("dry") / "runs" / "today" / "reverse.pt"  # 2 new folders
    argv = ["--dry-run", "--device", "cpu", "--out", str(out)]
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            train.main(argv)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported by every test that needs it
        return {"error": f"train.main({argv}) raised {type(exc).__name__}: {exc}"}
    return {"out": out, "printed": printed.getvalue()}


def dry(run) -> dict:
    if "error" in run:
        fail(run["error"])
    return run


@pytest.mark.trains
def test_train_script_writes_a_loadable_checkpoint(dry_run):
    """python train.py --dry-run --out F writes a checkpoint that torch.load reads safely."""
    out, printed = dry(dry_run)["out"], dry_run["printed"]
    if not out.is_file() or str(out) not in printed:
        fail(f"train.py --out {out} should write the checkpoint there (creating the folders) "
             f"and print its path; it printed:\n{printed}")
    saved = torch.load(out, weights_only=True)
    model = transformer.TinyTransformer(**saved["config"])
    call(model.load_state_dict, saved["state_dict"], what="load_state_dict(checkpoint)")


@pytest.mark.trains
@pytest.mark.requires("test_train_script_writes_a_loadable_checkpoint")
def test_train_script_defaults_and_report(dry_run):
    """Defaults: 6 tokens of 10 kinds, width 32, 4 heads, 1 block; a dry run is 5 steps."""
    run = dry(dry_run)
    config = torch.load(run["out"], weights_only=True)["config"]
    expected = dict(vocab=11, max_len=12, dim=32, heads=4, layers=1)
    if config != expected:
        fail(f"python train.py --dry-run saved the model config {config}; expected {expected}: "
             f"with the defaults (--length 6, --vocab 10, --dim 32, --heads 4, --layers 1), "
             f"the model has 10 tokens plus the separator and positions for 6 + 6 tokens.")
    printed = run["printed"]
    found = re.search(r"(\d+) steps, final loss [\d.]+; reversed [\d.]+% of the tokens of "
                      r"(\d+) new sequences \(chance: (\d+)%\)", printed)
    written = re.search(r"input \[([\d, ]*)\] -> written \[([\d, ]*)\]", printed)
    if (not found or found.groups() != ("5", "1000", "10") or not written
            or [len(w.split(",")) for w in written.groups()] != [6, 6]):
        fail(f"python train.py --dry-run printed:\n{printed.strip()}\nExpected '5 steps, final "
             f"loss ...; reversed ...% of the tokens of 1000 new sequences (chance: 10%)' (a "
             f"dry run is 5 steps; chance is 1 in --vocab 10) and 'input [6 tokens] -> written "
             f"[6 tokens]'.")


@pytest.mark.trains
@pytest.mark.requires("test_train_script_writes_a_loadable_checkpoint")
def test_dry_run_says_its_accuracy_means_nothing(dry_run):
    """python train.py --dry-run says that its accuracy means nothing (5 steps learn nothing)."""
    printed = dry(dry_run)["printed"]
    if "means nothing" not in printed:
        fail(f"python train.py --dry-run printed:\n{printed.strip()}\nExpected the report to say "
             f"that this accuracy means nothing. A dry run checks the plumbing in 5 steps; its "
             f"accuracy must not be mistaken for a result.")


@pytest.mark.trains
def test_train_script_accepts_the_smallest_sizes(tmp_path):
    """--length 1 --vocab 2 --dim 1 --heads 1 --layers 1 --steps 1 --batch-size 1 is valid."""
    argv = ["--dry-run", "--length", "1", "--vocab", "2", "--dim", "1", "--heads", "1",
            "--layers", "1", "--steps", "1", "--batch-size", "1", "--device", "cpu",
            "--out", str(tmp_path / "small.pt")]
    with contextlib.redirect_stdout(io.StringIO()):
        ended = how_script_ended(train.main, argv)
    if ended != "carried on and returned normally":
        fail(f"python train.py {' '.join(argv[:-2])} {ended}; expected it to run: each of "
             f"these is the smallest value that makes sense (a vocabulary needs 2 tokens).")


@pytest.mark.parametrize("argv", [["--lr", "0"], ["--lr", "-1"], ["--dim", "30", "--heads", "4"],
                                  ["--length", "0"], ["--vocab", "1"], ["--heads", "0"],
                                  ["--dry-run", "--dim", "0", "--heads", "1"],
                                  ["--dry-run", "--layers", "0"], ["--dry-run", "--steps", "0"],
                                  ["--dry-run", "--batch-size", "0"]])
def test_train_script_rejects_bad_arguments(argv):
    """Impossible arguments stop the script with a one-line usage error, before it trains."""
    ended = how_script_ended(train.main, argv)
    if ended:
        fail(f"python train.py {' '.join(argv)} {ended}; expected a one-line error and a "
             f"non-zero exit status before any training.")


def test_train_script_accepts_cuda_only_where_there_is_one(monkeypatch):
    """--device cuda on a machine without CUDA: a usage error, not a crash deep in training."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recording_training(monkeypatch, stop=True)  # should it get that far
    ended = how_script_ended(train.main, shell_argv(["--device", "cuda"]))
    if ended:
        fail(f"python train.py --device cuda, without a CUDA device, {ended}; expected a "
             f"one-line usage error and a non-zero exit status.")


# --- the script's plumbing: train_reversal replaced by a recorder ---------------------------

LOSSES = [4.0, 3.0, 2.0, 1.0, 0.125]  # what the recording train_reversal reports


class Stopped(Exception):
    """Raised by the recording train_reversal (stop=True) to end main() once it has seen the
    arguments: the device it was given may be a GPU this machine only pretends to have."""

    def __init__(self) -> None:
        super().__init__("train.py went on to train")


def recording_training(monkeypatch, stop: bool = False) -> list[dict]:
    """Replace train.py's train_reversal by one that records its arguments (by name, defaults
    filled in) and, instead of training, moves the model to the device and returns LOSSES;
    with ``stop`` it raises Stopped instead."""
    module = train.resolve()
    train_reversal = module.train_reversal
    calls: list[dict] = []

    def recording(*args, **kwargs):
        bound = inspect.signature(train_reversal).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        if stop:
            raise Stopped
        bound.arguments["model"].to(bound.arguments["device"])
        return list(LOSSES)

    monkeypatch.setattr(module, "train_reversal", recording)
    return calls


def recording(monkeypatch, name: str) -> list[tuple]:
    """Wrap train.py's function ``name``: each call's (arguments, result) is recorded."""
    module = train.resolve()
    function = getattr(module, name)
    calls: list[tuple] = []

    def recorded(*args, **kwargs):
        result = function(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(module, name, recorded)
    return calls


def run_main(argv: list[str]) -> tuple[str, str]:
    """train.main(argv): (what it printed, '' or how it failed to end normally)."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            train.main(argv)
    except Stopped:
        pass
    except SystemExit as exc:
        return printed.getvalue(), f"exited with status {exc.code!r}"
    except Exception as exc:  # noqa: BLE001 - reported by the test
        return printed.getvalue(), f"raised {type(exc).__name__}: {str(exc)[:200]}"
    return printed.getvalue(), ""


def sizes_of(model: nn.Module) -> tuple:
    """(vocab, max_len, dim, heads, layers) of a TinyTransformer."""
    return (model.tokens.num_embeddings, model.positions.num_embeddings,
            model.tokens.embedding_dim, model.blocks[0].attn.heads, len(model.blocks))


@pytest.mark.trains
@pytest.mark.requires("test_train_script_writes_a_loadable_checkpoint")
def test_train_script_hands_its_options_to_train_reversal(monkeypatch, tmp_path):
    """Without options: 300 steps, batches of 64, lr 0.01, seed 0, 6 tokens of 10 kinds; the
    options given reach the model, the training and the checkpoint's config."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = recording_training(monkeypatch)
    names = ("steps", "length", "vocab", "batch_size", "lr", "seed", "device", "progress")
    options = ["--length", "3", "--vocab", "3", "--dim", "8", "--heads", "2", "--layers", "2",
               "--steps", "7", "--batch-size", "5", "--lr", "0.5", "--seed", "4"]
    for argv, expected, model_sizes in (
            ([], (300, 6, 10, 64, 0.01, 0, "cpu", False), (11, 12, 32, 4, 1)),
            (options, (7, 3, 3, 5, 0.5, 4, "cpu", False), (4, 6, 8, 2, 2))):
        out = tmp_path / f"{len(argv)}.pt"
        argv = shell_argv([*argv, "--out", str(out)])
        calls.clear()
        _, ended = run_main(argv)
        if ended or len(calls) != 1:
            fail(f"train.py {' '.join(argv)} (its training replaced by a recorder) "
                 f"{ended or 'ran'} after {len(calls)} calls of train_reversal; expected one "
                 f"call and a normal end.")
        got = tuple(str(calls[0][k]) if k == "device" else calls[0][k] for k in names)
        if got != expected:
            fail(f"train.py {' '.join(argv[:-2]) or '(no options)'} called train_reversal with "
                 f"{', '.join(names)} = {got}; expected {expected}: the defaults its --help "
                 f"shows, or the options given (the progress bar only on a terminal).")
        sizes = sizes_of(calls[0]["model"])
        config = torch.load(out, weights_only=True)["config"]
        config = tuple(config.get(k) for k in ("vocab", "max_len", "dim", "heads", "layers"))
        if sizes != model_sizes or config != model_sizes:
            fail(f"train.py {' '.join(argv[:-2]) or '(no options)'} trained a model of (vocab, "
                 f"max_len, dim, heads, layers) = {sizes} and saved the config {config}; "
                 f"expected {model_sizes} for both: --vocab tokens plus the separator, 2 * "
                 f"--length positions, and --dim, --heads, --layers as given.")


@pytest.mark.trains
@pytest.mark.requires("test_train_script_hands_its_options_to_train_reversal")
def test_train_script_uses_a_gpu_only_for_auto_or_cuda(monkeypatch):
    """--device auto: cuda where there is one, else cpu; --device cpu and cuda: as asked."""
    calls = recording_training(monkeypatch, stop=True)
    for device, gpu, expected in (("auto", False, "cpu"), ("auto", True, "cuda"),
                                  ("cpu", True, "cpu"), ("cuda", True, "cuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        calls.clear()
        _, ended = run_main(shell_argv(["--device", device]))
        got = str(calls[0]["device"]) if calls else None
        if got != expected:
            where = "a machine with a GPU (pretended)" if gpu else "a machine without a GPU"
            fail(f"train.py --device {device}, on {where}, "
                 f"{f'{ended} before training' if ended else f'trained on {got!r}'}; expected "
                 f"it to train on {expected!r}: only 'auto' chooses, and it chooses the GPU "
                 f"when there is one.")


@pytest.mark.trains
@pytest.mark.requires("test_train_script_hands_its_options_to_train_reversal")
def test_train_script_reports_what_it_did(monkeypatch, tmp_path):
    """The report: the last step's loss, the accuracy on 1000 sequences unlike the training
    batches, no dry-run note, and an input with what the model wrote after it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = recording_training(monkeypatch)
    scored = recording(monkeypatch, "reversal_accuracy")
    generated = recording(monkeypatch, "generate")
    argv = shell_argv(["--length", "3", "--vocab", "3", "--dim", "8", "--heads", "2",
                       "--out", str(tmp_path / "reverse.pt")])
    printed, ended = run_main(argv)
    command = f"train.py {' '.join(argv[:-2])} (its training replaced by a recorder)"
    if ended or not calls or not scored or not generated:
        fail(f"{command} {ended or 'ran'}; expected it to train once, score the model and "
             f"write a sample.")
    if f"final loss {LOSSES[-1]:.3f}" not in printed:
        fail(f"{command}, whose training reported the losses {LOSSES}, printed:\n"
             f"{printed.strip()}\nExpected 'final loss {LOSSES[-1]:.3f}': the loss of the last "
             f"step.")
    if "means nothing" in printed:
        fail(f"{command} printed:\n{printed.strip()}\nExpected no dry-run note: this was not "
             f"a dry run, and its accuracy is the result.")
    x = scored[-1][0][1]
    first_batch = train.reversal_batch(64, 3, 3, generator(0))[0][:, :3]
    if tuple(x.shape) != (1000, 3) or torch.equal(x[:64], first_batch):
        same = " and its first 64 are the first training batch" if tuple(x.shape) == (
            1000, 3) else ""
        fail(f"{command} scored the model on {len(x)} sequences{same}; expected the 1000 "
             f"new sequences its report speaks of, drawn apart from the training batches: a "
             f"sequence the model trained on says nothing about whether it learned to reverse.")
    args, _, result = generated[-1]  # generate(model, prompt, steps) writing the sample
    prompt = args[1]
    found = re.search(r"input (\[[\d, ]*\]) -> written (\[[\d, ]*\])", printed)
    expected = (str(prompt[0, :-1].tolist()), str(result[0, 4:].tolist()))
    if not found or found.groups() != expected:
        fail(f"{command} printed:\n{printed.strip()}\nbut its last generate() call turned "
             f"{prompt[0].tolist()} (an input and the separator) into {result[0].tolist()}; "
             f"expected 'input {expected[0]} -> written {expected[1]}': the input given to the "
             f"model and the 3 tokens it wrote after the separator.")


@pytest.mark.trains
@pytest.mark.requires("test_train_script_reports_what_it_did")
def test_train_script_scores_every_run_on_the_same_sequences(monkeypatch, tmp_path):
    """The report's 1000 sequences are the README's: torch.randint(vocab, (1000, length))
    from a generator seeded 1, whatever --seed the training batches come from."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recording_training(monkeypatch)
    scored = recording(monkeypatch, "reversal_accuracy")
    argv = shell_argv(["--length", "3", "--vocab", "3", "--dim", "8", "--heads", "2",
                       "--seed", "4", "--out", str(tmp_path / "reverse.pt")])
    _, ended = run_main(argv)
    x = scored[-1][0][1] if scored else None
    expected = torch.randint(3, (1000, 3), generator=generator(1))
    if ended or x is None or x.shape != expected.shape or not torch.equal(x.cpu(), expected):
        fail(f"train.py {' '.join(argv[:-2])} (its training replaced by a recorder) "
             f"{ended or 'ran'} and scored the model on "
             f"{'nothing' if x is None else f'{len(x)} sequences'} that are not the ones the "
             f"README describes (1000 sequences of torch.randint from a generator seeded 1, "
             f"the same whatever --seed is). Expected that fixed set: runs with other "
             f"settings or seeds are then scored on the same sequences, so their accuracies "
             f"can be compared, and they match the figures quoted in the README.")


def test_train_script_help_says_what_it_does():
    """python train.py --help starts with the first line of the script's docstring."""
    assert_help_opens_with_summary(train.resolve(), "train.py")


@pytest.mark.trains
@pytest.mark.requires("test_train_script_help_says_what_it_does")
def test_train_script_runs_when_started_as_a_file(capsys):
    """`python train.py --help` runs main(): the guard at the end of the file lets it."""
    code = run_as_main(train.resolve().__file__, ["--help"])
    if code == "returned":
        code = "returned without running main()"
    out = capsys.readouterr().out
    if "usage:" not in out or code != "exited with status 0":
        fail(f"python train.py --help {code} and printed {out.strip()[:200]!r}; expected "
             f"the usage and status 0. Run as a file, a script's module is named '__main__', "
             f"and the block at its end decides whether main() runs.")


@pytest.mark.trains
@pytest.mark.requires("test_train_script_runs_when_started_as_a_file")
def test_train_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    train.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(train.resolve().__file__, "train.py")
