"""Exercise 01: a digit classifier that trains, and metrics that tell the truth about it.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import copy

import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as skm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchkata import data, under_test
from torchkata.checks import (
    accuracy_of,
    assert_accuracy_at_least,
    assert_can_overfit,
    assert_close_to_oracle,
    assert_grads_flow,
    call,
    fail,
)
from torchkata.strategies import label_pairs, labelled_predictions

mlp = under_test("mlp")
train = under_test("train")
metrics = under_test("metrics")

SHAPES_HINT = "Each nn.Linear's in_features must equal the out_features of the layer before it."


def digits(n: int = 64):
    x, y, _, _ = data.mnist_subset(n_train=n, n_test=0)
    return x, y


# --- the model -------------------------------------------------------------------------


@given(batch=st.integers(1, 64), flat=st.booleans())
def test_forward_shape_any_batch_size(device, batch, flat):
    """MLP maps a batch of B images (or B flat vectors of 784) to B rows of 10 scores."""
    model = mlp.MLP().to(device)
    shape = (batch, 784) if flat else (batch, 1, 28, 28)
    out = call(model, torch.rand(shape, device=device), what=f"MLP() on input {shape}",
               why=SHAPES_HINT)
    if tuple(out.shape) != (batch, 10):
        fail(f"MLP() on input {shape} returned shape {tuple(out.shape)}, expected ({batch}, 10): "
             f"one row of 10 class scores per image.")


def test_forward_returns_raw_logits(device):
    """The model returns unnormalised scores; nn.CrossEntropyLoss does the normalising."""
    x, _ = digits(32)
    out = call(mlp.MLP().to(device), x.to(device), what="MLP() on 32 digits", why=SHAPES_HINT)
    why = ("nn.CrossEntropyLoss applies log-softmax to its input itself, so the model must "
           "return raw scores (logits). Normalising twice flattens the loss and slows or "
           "stalls learning.")
    if torch.allclose(out.sum(dim=1), torch.ones(len(out), device=device), atol=1e-4):
        fail(f"Every row of the model's output sums to 1: these are probabilities, not "
             f"logits. {why}")
    if torch.allclose(out.logsumexp(dim=1), torch.zeros(len(out), device=device), atol=1e-4):
        fail(f"The rows of the model's output are log-probabilities (logsumexp of each row is 0), "
             f"not logits. {why}")
    if (out >= 0).all():
        fail("None of the model's scores is negative. Raw logits are unconstrained real numbers; "
             "an output that can never go below zero has been squashed by something after the "
             "last Linear layer, and the loss can no longer push wrong classes down.")


def test_model_is_not_linear(device):
    """Hidden layers need a non-linearity between them, or the network is one big Linear."""
    model = mlp.MLP().to(device)
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(16, 784, generator=g).to(device) for _ in range(2))
    zero = torch.zeros_like(a)
    with torch.no_grad():
        f = lambda t: call(model, t, what="MLP() on a (16, 784) batch", why=SHAPES_HINT)  # noqa: E731
        gap = (f(a + b) + f(zero) - f(a) - f(b)).abs().max().item()
    if gap < 1e-4:
        fail("The network is a linear (affine) map: f(a + b) equals f(a) + f(b) - f(0) for "
             "random inputs. A stack of Linear layers with nothing non-linear between them "
             "collapses into a single Linear layer, so the extra layers add no power: "
             "it cannot learn anything a straight line cannot separate.")


def test_every_parameter_gets_a_gradient(device):
    """One backward pass reaches every weight and bias with a finite, non-zero gradient."""
    x, y = digits(32)
    model = mlp.MLP().to(device)
    out = call(model, x.to(device), what="MLP() on 32 digits", why=SHAPES_HINT)
    assert_grads_flow(model, nn.functional.cross_entropy(out, y.to(device)), "MLP()")


# --- the training step -----------------------------------------------------------------


def test_train_step_uses_the_labels(device):
    """train_step returns the cross-entropy between the model's scores and the true labels."""
    x, y = digits(32)
    x, y = x.to(device), y.to(device)
    model = mlp.MLP().to(device)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(
            call(model, x, what="MLP() on 32 digits", why=SHAPES_HINT), y).item()
    reported = []
    for labels in (y, (y + 1) % 10):
        clone = copy.deepcopy(model)
        optimizer = torch.optim.SGD(clone.parameters(), lr=0.01)
        reported.append(call(train.train_step, clone, optimizer, nn.CrossEntropyLoss(), x,
                             labels, what="train_step() on 32 digits"))
    if abs(reported[0] - reported[1]) < 1e-6:
        fail(f"train_step reported the same loss ({reported[0]:.4f}) for two different sets of "
             f"labels. The loss must compare the model's predictions with the true labels y; "
             f"a loss that ignores y cannot teach the model anything about the digits.")
    if abs(reported[0] - expected) > 1e-4 * max(1.0, abs(expected)):
        fail(f"train_step reported a loss of {reported[0]:.4f}, but the cross-entropy of the "
             f"model's scores on this batch before the update is {expected:.4f}. It should "
             f"return the loss of the batch it was given, computed from scores and labels.")


def test_train_step_starts_from_fresh_gradients(device):
    """After train_step, each .grad holds the gradient of that batch alone."""
    x, y = digits(32)
    x, y = x.to(device), y.to(device)
    model = mlp.MLP().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put
    for _ in range(2):
        call(train.train_step, model, optimizer, nn.CrossEntropyLoss(), x, y,
             what="train_step() on 32 digits")
    fresh = copy.deepcopy(model)
    fresh.zero_grad()
    nn.functional.cross_entropy(fresh(x), y).backward()
    ratio = (model.fc1.weight.grad.norm() / fresh.fc1.weight.grad.norm()).item()
    if abs(ratio - 1) > 1e-3:
        fail(f"After two train_steps on the same batch, the gradients are {ratio:.2f} times "
             f"the gradient of that batch. Expected exactly 1: backward() adds into .grad, so "
             f"each step must clear the gradients of the step before, or updates use stale sums.")


def test_overfits_one_batch(device):
    """Repeated train_steps on one small batch drive its loss close to zero."""
    x, y = digits(32)
    x, y = x.to(device), y.to(device)
    model = mlp.MLP().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    losses = [call(train.train_step, model, optimizer, loss_fn, x, y,
                   what="train_step() on 32 digits") for _ in range(100)]
    assert_can_overfit(losses, below=0.05, what="MLP trained with train_step")


def test_learns_two_spirals(device):
    """fit() trains MLP(in_features=2, num_classes=2) to separate two interleaved spirals."""
    x, y = data.spirals(n=200, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)
    model = mlp.MLP(in_features=2, num_classes=2)
    call(train.fit, model, loader, epochs=30, lr=1e-2, device=device,
         what="fit() on two spirals")
    assert_accuracy_at_least(
        accuracy_of(model, x, y, device), 0.95, "MLP on two spirals (training set)",
        "No straight line separates the spirals: a model that only draws straight lines stays "
        "near 50-70%.")


def test_reaches_accuracy_on_real_digits(device):
    """fit() reaches a measured test accuracy on 1,000 held-out real MNIST digits."""
    x_train, y_train, x_test, y_test = data.mnist_subset(n_train=4000, n_test=1000, seed=0)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)
    model = mlp.MLP()
    call(train.fit, model, loader, epochs=3, lr=1e-3, device=device,
         what="fit() on 4,000 digits")
    assert_accuracy_at_least(
        accuracy_of(model, x_test, y_test, device), 0.88, "MLP on held-out digits",
        "If the earlier tests pass, look at what fit() does each step.")


# --- the metrics -----------------------------------------------------------------------


@given(case=labelled_predictions())
def test_accuracy_matches_sklearn(case):
    """accuracy(logits, targets) is the fraction of rows whose best score is the true class."""
    logits, targets, _ = case
    got = call(metrics.accuracy, logits, targets,
               what=f"accuracy() on logits of shape {tuple(logits.shape)} (B, C)",
               why="Each row of logits holds the C scores of one sample.")
    expected = skm.accuracy_score(targets.numpy(), logits.numpy().argmax(axis=1))
    if abs(got - expected) > 1e-6:
        fail(f"accuracy() returned {got:.4f} for {len(targets)} samples and {logits.shape[1]} "
             f"classes; scikit-learn says {expected:.4f}. A sample's prediction is its best "
             f"class: the largest score across the classes of its own row.")


@given(case=label_pairs())
def test_confusion_matrix_matches_sklearn(case):
    """confusion_matrix counts true class (rows) against predicted class (columns)."""
    predicted, actual, c = case
    got = call(metrics.confusion_matrix, predicted, actual, c, what="confusion_matrix()")
    expected = skm.confusion_matrix(actual.numpy(), predicted.numpy(), labels=list(range(c)))
    assert_close_to_oracle(got, torch.from_numpy(expected), "confusion_matrix()",
                           "Row i counts the samples whose true class is i; column j those "
                           "predicted as j.")


@given(case=label_pairs())
def test_per_class_precision_recall_f1_match_sklearn(case):
    """precision_recall_f1 gives per-class precision, recall and F1, 0 where undefined."""
    predicted, actual, c = case
    cm = torch.from_numpy(skm.confusion_matrix(actual.numpy(), predicted.numpy(),
                                               labels=list(range(c))))
    p, r, f1, _ = skm.precision_recall_fscore_support(
        actual.numpy(), predicted.numpy(), labels=list(range(c)), zero_division=0)
    got = call(metrics.precision_recall_f1, cm, what="precision_recall_f1()")
    for name, mine, oracle in zip(("precision", "recall", "F1"), got, (p, r, f1)):
        assert_close_to_oracle(mine, torch.from_numpy(oracle), f"per-class {name}",
                               "Precision divides by what was predicted as a class, recall by "
                               "what truly is that class.")


@given(case=label_pairs())
def test_macro_f1_matches_sklearn(case):
    """macro_f1 is the plain mean of the per-class F1 scores."""
    predicted, actual, c = case
    cm = torch.from_numpy(skm.confusion_matrix(actual.numpy(), predicted.numpy(),
                                               labels=list(range(c))))
    got = call(metrics.macro_f1, cm, what="macro_f1()")
    expected = skm.f1_score(actual.numpy(), predicted.numpy(), labels=list(range(c)),
                            average="macro", zero_division=0)
    if abs(got - expected) > 1e-6:
        fail(f"macro_f1() returned {got:.4f}; scikit-learn's macro F1 is {expected:.4f}. "
             f"Macro averaging means: compute F1 for each class on its own, then average those "
             f"scores, so that every class counts the same however rare it is.")
