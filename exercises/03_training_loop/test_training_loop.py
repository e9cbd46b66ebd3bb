"""Exercise 03: a training loop you can reuse: updates, validation, a schedule, early stopping.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import math
import re
from pathlib import Path

import pytest
import torch

# The first optimizer imports torch._dynamo, seconds on a busy machine: pay for it while the
# module loads, not inside the first test's time budget.
import torch._dynamo  # noqa: F401
from torch import nn

from torchkata import data, under_test
from torchkata.checks import (
    accuracy_of,
    assert_accuracy_at_least,
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    run_as_main,
    shell_argv,
)

train = under_test("train")
model_py = under_test("model")
early_stopping = under_test("early_stopping")

BN_DROPOUT = (nn.BatchNorm1d, nn.Dropout)


def batches(sizes=(16, 16, 8), classes: int = 3, seed: int = 0):
    """A loader is anything that yields (x, y) batches: here a list of blob batches (CPU)."""
    total = sum(sizes)
    x, y = data.blobs(n=-(-total // classes), classes=classes, seed=seed)  # n per class
    return list(zip(x[:total].split(list(sizes)), y[:total].split(list(sizes))))


def tiny_net(device) -> nn.Module:
    """A model without Dropout or BatchNorm: its gradients depend only on the batch."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3)).to(device)


def small_net(device) -> nn.Module:
    torch.manual_seed(0)
    return model_py.SmallNet(in_features=2, hidden=16, num_classes=3).to(device)


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def describe_value(value) -> str:
    if isinstance(value, torch.Tensor):
        graph = " with a grad_fn (it is attached to an autograd graph)" if value.grad_fn else ""
        return f"a torch.Tensor{graph}"
    return f"a {type(value).__name__}"


def check_number(got, want: float, what: str, why: str, tol: float = 1e-5) -> None:
    """``got`` (a float, or a one-element tensor) is finite and within ``tol`` of ``want``."""
    value = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
    if not isinstance(value, (int, float)):
        fail(f"{what} is {describe_value(got)}, expected a number near {want:.5f}.")
    if not math.isfinite(value):
        fail(f"{what} is {value}, expected the finite number {want:.5f}. A NaN or an infinity "
             f"in a loss poisons every update and every average after it.")
    if abs(value - want) > tol * max(1.0, abs(want)):
        fail(f"{what} is {value:.5f}, expected {want:.5f}. {why}")


SMOOTHED = 0.4  # label smoothing: a loss_fn whose values and gradients differ from the default


def mean_loss(model, loader, loss_fn, device) -> float:
    """The mean of ``loss_fn`` per sample over ``loader``, the model as it is (no update)."""
    with torch.no_grad():
        total = sum(loss_fn(model(x.to(device)), y.to(device)).item() * len(y)
                    for x, y in loader)
    return total / sum(len(y) for _, y in loader)


# --- the model -------------------------------------------------------------------------


def test_smallnet_is_built_from_its_arguments():
    """SmallNet(in_features, hidden, num_classes, dropout): Linear -> BatchNorm -> ReLU ->
    Dropout twice, then a Linear head, with those sizes and that dropout rate."""
    net = call(model_py.SmallNet, in_features=5, hidden=12, num_classes=4, dropout=0.3,
               what="SmallNet(in_features=5, hidden=12, num_classes=4, dropout=0.3)")
    got = [(type(m).__name__, getattr(m, "in_features", getattr(m, "num_features", None)),
            getattr(m, "out_features", getattr(m, "p", None)))
           for m in net.modules() if not list(m.children())]
    expected = [("Linear", 5, 12), ("BatchNorm1d", 12, None), ("ReLU", None, None),
                ("Dropout", None, 0.3), ("Linear", 12, 12), ("BatchNorm1d", 12, None),
                ("ReLU", None, None), ("Dropout", None, 0.3), ("Linear", 12, 4)]
    if got != expected:
        fail(f"SmallNet(in_features=5, hidden=12, num_classes=4, dropout=0.3) has the layers "
             f"{got}; expected {expected} (type, in, out or rate). Each argument must reach "
             f"the layers it sizes: a model that ignores one gives the caller another network "
             f"than the one asked for.")
    out = call(net.eval(), torch.randn(3, 5), what="SmallNet(...) in eval mode on a (3, 5) batch")
    if tuple(out.shape) != (3, 4) or not torch.isfinite(out).all():
        fail(f"SmallNet(in_features=5, ..., num_classes=4) returned {tuple(out.shape)}"
             f"{'' if torch.isfinite(out).all() else ' with NaN or inf'}; expected finite raw "
             f"scores of shape (3, 4).")
def layer_list(net: nn.Module) -> list[tuple]:
    """(type, in, out or rate) of each leaf layer, in order."""
    return [(type(m).__name__, getattr(m, "in_features", getattr(m, "num_features", None)),
             getattr(m, "out_features", getattr(m, "p", None)))
            for m in net.modules() if not list(m.children())]


@pytest.mark.requires("test_smallnet_is_built_from_its_arguments")
def test_smallnet_defaults_fit_two_moons():
    """SmallNet() takes 2 features to 2 classes through 64 hidden units, with dropout 0.1."""
    got = layer_list(call(model_py.SmallNet, what="SmallNet()"))
    expected = [("Linear", 2, 64), ("BatchNorm1d", 64, None), ("ReLU", None, None),
                ("Dropout", None, 0.1), ("Linear", 64, 64), ("BatchNorm1d", 64, None),
                ("ReLU", None, None), ("Dropout", None, 0.1), ("Linear", 64, 2)]
    if got != expected:
        fail(f"SmallNet() has the layers {got}; its defaults (in_features=2, hidden=64, "
             f"num_classes=2, dropout=0.1) promise {expected}: the network train.py builds for "
             f"the two moons.")


@pytest.mark.requires("test_smallnet_is_built_from_its_arguments")
def test_smallnet_output_depends_on_the_mode():
    """In eval mode a sample's scores depend on that sample alone; in train mode they do not."""
    torch.manual_seed(0)
    net = model_py.SmallNet(in_features=2, hidden=16, num_classes=3)
    x = torch.randn(8, 2)
    net.eval()
    with torch.no_grad():
        alone, together, again = net(x[:1]), net(x)[:1], net(x)[:1]
    if not (torch.isfinite(together).all() and torch.allclose(alone, together, atol=1e-6)
            and torch.equal(together, again)):
        fail("In eval mode, SmallNet gave a sample different scores alone, in a batch of 8, or "
             "on a second call. Expected identical scores: eval mode is the deployed model, "
             "with Dropout off and BatchNorm on its running statistics.")
    net.train()
    with torch.no_grad():
        train_scores = net(x)[:1]
    if torch.allclose(train_scores, together, atol=1e-4):
        fail("SmallNet gave the same scores in train mode as in eval mode. Expected them to "
             "differ: in train mode Dropout drops units and BatchNorm normalises with the "
             "batch's own statistics; that is why training and validation must set the mode.")


# --- one epoch of updates --------------------------------------------------------------


def test_train_one_epoch_returns_the_mean_loss_as_a_float(device):
    """train_one_epoch returns the mean loss per sample over the epoch, as a Python float."""
    loader = batches()
    model = tiny_net(device)
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(model(x.to(device)), y.to(device), reduction="sum")
                  for x, y in loader]
    expected = sum(loss.item() for loss in losses) / sum(len(y) for _, y in loader)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put
    got = call(train.train_one_epoch, model, loader, optimizer, nn.CrossEntropyLoss(), device,
               what="train_one_epoch() on three batches of blobs")
    if type(got) is not float:
        fail(f"train_one_epoch returned {describe_value(got)}, expected a plain Python float. "
             f"Adding up loss tensors instead of their values keeps the autograd graph of "
             f"every batch alive until the epoch ends: memory grows with each batch, and the "
             f"history you log or plot holds tensors instead of numbers.")
    check_number(got, expected, "The loss train_one_epoch returned",
                 "That is the mean cross-entropy per sample of these three batches (16, 16 "
                 "and 8 samples): each batch's mean loss weighted by its number of samples.")


def test_train_one_epoch_optimises_the_given_loss_fn(device):
    """train_one_epoch minimises and reports the loss_fn it is given, not a loss of its own."""
    loader = batches()
    model = tiny_net(device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=SMOOTHED)
    expected = mean_loss(model, loader, loss_fn, device)
    x, y = loader[0]
    fresh = tiny_net(device)
    loss_fn(fresh(x.to(device)), y.to(device)).backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put
    first = []

    def record_first_step(opt, args, kwargs):
        if not first:  # later steps may add stale gradients: another test's property
            first.append([None if p.grad is None else p.grad.detach().clone()
                          for p in model.parameters()])

    optimizer.register_step_pre_hook(record_first_step)
    got = call(train.train_one_epoch, model, loader, optimizer, loss_fn, device,
               what="train_one_epoch(..., loss_fn=CrossEntropyLoss(label_smoothing=0.4))")
    why = ("Whatever loss_fn the caller passes is the objective: the loop must compute every "
           "batch's loss with it, and report its mean per sample.")
    check_number(got, expected, "With loss_fn=CrossEntropyLoss(label_smoothing=0.4), the loss "
                 "train_one_epoch returned", why)
    if not first:
        fail("train_one_epoch never called optimizer.step(): nothing was updated.")
    for (name, p), g in zip(fresh.named_parameters(), first[0]):
        if g is None or not g.any():
            continue  # no gradient at all when step() runs: the next test's property
        if not torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6):
            fail(f"When optimizer.step() ran for the first batch, the gradient of {name} was "
                 f"not the gradient of the loss_fn it was given "
                 f"(CrossEntropyLoss(label_smoothing=0.4)) on that batch. {why}")


@pytest.mark.requires("test_train_one_epoch_optimises_the_given_loss_fn")
def test_each_step_uses_only_the_gradient_of_its_own_batch(device):
    """When optimizer.step() runs, every .grad holds the fresh gradient of that batch alone."""
    loader = batches()
    model = tiny_net(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]))
    call(train.train_one_epoch, model, loader, optimizer, nn.CrossEntropyLoss(), device,
         what="train_one_epoch() on three batches of blobs")
    if len(seen) != len(loader):
        fail(f"optimizer.step() ran {len(seen)} times in an epoch of {len(loader)} batches; "
             f"expected one update per batch.")
    for i, ((x, y), grads) in enumerate(zip(loader, seen), 1):
        fresh = tiny_net(device)
        nn.functional.cross_entropy(fresh(x.to(device)), y.to(device)).backward()
        for (name, p), g in zip(fresh.named_parameters(), grads):
            if g is not None and not torch.isfinite(g).all():
                fail(f"When optimizer.step() ran for batch {i}, the gradient of {name} held "
                     f"NaN or inf. Expected the finite gradient of that batch's loss.")
            if g is None or not g.any():
                fail(f"When optimizer.step() ran for batch {i}, parameter {name} had no gradient "
                     f"(its .grad was None or all zeros), so the step could not change it. The "
                     f"gradient that backward() computed must still be there when step() "
                     f"reads it.")
            if not torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6):
                ratio = (g.norm() / p.grad.norm()).item()
                fail(f"When optimizer.step() ran for batch {i}, the gradient of {name} was "
                     f"{ratio:.2f} times as large as (and not equal to) the gradient of batch "
                     f"{i} alone. Expected exactly the fresh gradient of that batch: backward() "
                     f"adds into .grad, so gradients left over from earlier batches pile up and "
                     f"every update after the first uses a stale sum.")


# --- validation ------------------------------------------------------------------------
@pytest.mark.requires("test_smallnet_is_built_from_its_arguments")
def test_evaluate_runs_in_eval_mode_without_gradients(device):
    """evaluate() runs the model in eval mode, builds no graph, changes nothing, and returns
    (loss, accuracy) as floats."""
    model = small_net(device)
    seen = []
    for m in model.modules():
        if isinstance(m, BN_DROPOUT):
            m.register_forward_pre_hook(
                lambda mod, inputs: seen.append((mod.training, torch.is_grad_enabled())))
    val = batches((40,))
    buffers = [b.clone() for b in model.buffers()]
    result = call(train.evaluate, model, val, nn.CrossEntropyLoss(), device,
                  what="evaluate() on a batch of blobs")
    if any(training for training, _ in seen):
        fail("evaluate() ran the model with Dropout or BatchNorm in train mode. Validation must "
             "measure the model you will deploy: in eval mode, Dropout keeps every unit and "
             "BatchNorm uses its running statistics; in train mode the score is noisy and the "
             "validation batches change BatchNorm's statistics.")
    if any(grad for _, grad in seen):
        fail("evaluate() ran the model with gradient tracking on. Validation never calls "
             "backward(), so building the autograd graph only costs time and memory.")
    if any(not torch.equal(a, b) for a, b in zip(buffers, model.buffers())):
        fail("evaluate() changed BatchNorm's running statistics: validation data leaked into "
             "the model. Evaluating must leave the model as it was.")
    if not isinstance(result, tuple) or len(result) != 2:
        fail(f"evaluate() returned {describe_value(result)}; expected (loss, accuracy).")
    for name, got in zip(("loss", "accuracy"), result):
        if type(got) is not float:
            fail(f"evaluate() returned the {name} as {describe_value(got)}; expected a plain "
                 f"Python float.")
@pytest.mark.requires("test_smallnet_is_built_from_its_arguments",
                      "test_evaluate_runs_in_eval_mode_without_gradients")
def test_evaluate_averages_over_every_sample(device):
    """evaluate() returns the mean loss_fn per sample and the fraction of correct samples,
    over batches of different sizes."""
    model = small_net(device).eval()
    val = batches((16, 16, 8), seed=2)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=SMOOTHED)
    with torch.no_grad():
        want_loss = mean_loss(model, val, loss_fn, device)
        correct = sum((model(x.to(device)).argmax(dim=1).cpu() == y).sum().item() for x, y in val)
    want_accuracy = correct / 40
    model.train()
    result = call(train.evaluate, model, val, loss_fn, device,
                  what="evaluate() on batches of 16, 16 and 8 samples")
    if not isinstance(result, tuple) or len(result) != 2:
        fail(f"evaluate() returned {describe_value(result)}; expected (loss, accuracy).")
    why = ("Every sample counts once, whatever the size of its batch: a plain mean of the "
           "batch means gives the 8 samples of the last batch the weight of 16.")
    check_number(result[0], want_loss, "The loss evaluate() returned with "
                 "loss_fn=CrossEntropyLoss(label_smoothing=0.4)",
                 f"{why} And the loss is the loss_fn the caller passed.")
    check_number(result[1], want_accuracy, "The accuracy evaluate() returned",
                 f"That is {correct} correct of 40 samples. {why}")
@pytest.mark.requires("test_smallnet_is_built_from_its_arguments",
                      "test_evaluate_runs_in_eval_mode_without_gradients")
def test_every_epoch_trains_in_train_mode(device):
    """Validation switches the model to eval mode; every epoch's updates still run in train mode."""
    model = small_net(device)
    loader, val = batches((16, 16)), batches((10,), seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: steps.append(None))
    eval_mode_epochs = set()

    def check(module, inputs):
        if torch.is_grad_enabled() and not module.training:
            eval_mode_epochs.add(len(steps) // len(loader) + 1)

    for m in model.modules():
        if isinstance(m, BN_DROPOUT):
            m.register_forward_pre_hook(check)
    call(train.fit, model, loader, val, optimizer, epochs=3, device=device,
         what="fit() for 3 epochs on blobs")
    if eval_mode_epochs:
        fail(f"Epoch(s) {sorted(eval_mode_epochs)} trained with Dropout and BatchNorm in eval "
             f"mode. Validation puts the model in eval mode; if the next epoch's updates do not "
             f"run in train mode, dropout is off and BatchNorm stops learning its statistics: "
             f"from then on you train a different network from the one you designed, and "
             f"epoch 1 alone behaves as intended.")


# --- the learning-rate schedule and the history ----------------------------------------


def test_learning_rate_follows_the_schedule_per_epoch(device):
    """With StepLR(step_size=1, gamma=0.5) from lr 0.1, epoch k's updates all use 0.1 * 0.5**k."""
    model = tiny_net(device)
    loader = batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    used = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    history = call(train.fit, model, loader, batches((10,), seed=1), optimizer, epochs=3,
                   scheduler=scheduler, device=device, what="fit() for 3 epochs with StepLR")
    n = len(loader)
    expected = [0.1, 0.05, 0.025]
    for epoch, lr in enumerate(expected):
        got = used[epoch * n:(epoch + 1) * n]
        if len(got) != n or any(abs(g - lr) > 1e-12 for g in got):
            fail(f"The {n} updates of epoch {epoch + 1} used learning rates "
                 f"{[round(g, 6) for g in got]}; the schedule (StepLR, step_size=1, gamma=0.5, "
                 f"starting at 0.1) says every update of epoch {epoch + 1} uses {lr}. A "
                 f"scheduler counts epochs: each scheduler.step() moves the schedule on by one, "
                 f"so it must run once per epoch, after that epoch's optimizer steps.")
    if [round(v, 12) for v in history.get("lr", [])] != expected:
        fail(f"history['lr'] is {history.get('lr')}, expected {expected}: the learning rate "
             f"each epoch's updates used.")


@pytest.mark.requires("test_learning_rate_follows_the_schedule_per_epoch")
def test_history_lr_is_the_first_param_groups(device):
    """With parameter groups at lr 0.1 (the body) and 0.01 (the head), history['lr'] holds the
    first group's rate, 0.1, for every epoch."""
    model = tiny_net(device)
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[2].parameters(), "lr": 0.01}])
    history = call(train.fit, model, batches((16, 16)), batches((10,), seed=1), optimizer,
                   epochs=2, device=device, what="fit() with two parameter groups")
    lrs = history.get("lr") if isinstance(history, dict) else None
    if lrs != [0.1, 0.1]:
        fail(f"With an optimizer whose parameter groups train at lr 0.1 (first) and 0.01 "
             f"(second), history['lr'] is {lrs!r}; expected the first group's rate for each of "
             f"the 2 epochs. The first group is the one the history and the epoch lines "
             f"report: a model whose later groups (a head, a fine-tuned layer) train at other "
             f"rates is still logged by one predictable number.")


@pytest.mark.requires("test_train_one_epoch_optimises_the_given_loss_fn",
                      "test_evaluate_averages_over_every_sample")
def test_fit_trains_and_validates_with_the_given_loss_fn(device):
    """fit(loss_fn=...) trains and validates with that loss, and its history reports both."""
    model = tiny_net(device)
    loader, val = batches(), batches((12, 5), seed=1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=SMOOTHED)
    want = {"train_loss": mean_loss(model, loader, loss_fn, device),
            "val_loss": mean_loss(model, val, loss_fn, device)}
    with torch.no_grad():
        want["val_accuracy"] = sum((model(x.to(device)).argmax(dim=1).cpu() == y).sum().item()
                                   for x, y in val) / 17
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every epoch is the same
    history = call(train.fit, model, loader, val, optimizer, epochs=2, loss_fn=loss_fn,
                   device=device, what="fit(..., epochs=2, loss_fn=...) with lr 0")
    if not isinstance(history, dict):
        fail(f"fit() returned {describe_value(history)}; expected the history, a dict.")
    for key, value in want.items():
        values = history.get(key)
        if not isinstance(values, list) or len(values) != 2:
            fail(f"history[{key!r}] is {values!r}; expected one value per epoch (2).")
        for epoch, got in enumerate(values, 1):
            check_number(got, value, f"history[{key!r}] of epoch {epoch}",
                         "With lr 0 the weights never move, so each epoch measures the same "
                         "model: the training and validation losses must be the loss_fn passed "
                         "to fit (here CrossEntropyLoss(label_smoothing=0.4)), each under its "
                         "own key.")
@pytest.mark.requires("test_smallnet_is_built_from_its_arguments")
def test_history_holds_plain_floats(device):
    """fit() returns a history of Python floats: no tensors, no graphs kept alive."""
    model = small_net(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    history = call(train.fit, model, batches((16, 16)), batches((10,), seed=1), optimizer,
                   epochs=2, device=device, what="fit() for 2 epochs on blobs")
    for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
        values = history.get(key) if isinstance(history, dict) else None
        if not isinstance(values, list) or len(values) != 2:
            fail(f"fit() for 2 epochs returned a history whose {key!r} is {values!r}; expected "
                 f"a list with one value per epoch.")
        for epoch, value in enumerate(values, 1):
            if type(value) is not float:
                fail(f"history[{key!r}] holds {describe_value(value)} for epoch {epoch}; "
                     f"expected a plain Python float. A tensor that comes out of the loss "
                     f"keeps the whole graph of its computation (and the activations in it) "
                     f"alive for as long as the history exists.")


# --- early stopping --------------------------------------------------------------------


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    """EarlyStopping(patience=3).step(loss, model) is True at the 3rd epoch in a row without a
    new best, not before."""
    losses = [1.0, 0.8, 0.5, 0.6, 0.7, 0.9]
    stopper = early_stopping.EarlyStopping(patience=3)
    model = nn.Linear(2, 2)
    got = [bool(call(stopper.step, loss, model, what=f"EarlyStopping.step({loss}, model)"))
           for loss in losses]
    expected = [False] * 5 + [True]
    if got != expected:
        fail(f"For validation losses {losses} and patience 3, step() answered {got}; expected "
             f"{expected}. The best loss is 0.5 (epoch 3); epochs 4, 5 and 6 do not beat it, "
             f"so training stops after epoch 6: not earlier (you would give up too soon), not "
             f"later (you would waste epochs).")


@pytest.mark.requires("test_early_stopping_stops_after_patience_epochs_without_improvement")
def test_early_stopping_defaults_to_patience_5_and_stays_stopped():
    """EarlyStopping() waits 5 epochs without a new best, then keeps answering True; its
    best_epoch is the 0-based index of the best epoch (-1 before there is one)."""
    stopper = call(early_stopping.EarlyStopping, what="EarlyStopping()")
    if stopper.best_epoch != -1:
        fail(f"A new EarlyStopping() has best_epoch {stopper.best_epoch!r}; expected -1: no "
             f"epoch has been seen, so none is the best yet.")
    losses = [1.0, 0.5, 0.7, 0.8, 0.9, 0.6, 0.7, 0.8]
    got = stopper_answers(stopper, losses)
    expected = [False] * 6 + [True, True]
    if got != expected:
        fail(f"For validation losses {losses}, EarlyStopping() (default patience 5) answered "
             f"{got}; expected {expected}. The best is 0.5 (epoch 2); the 5th epoch in a row "
             f"without beating it is epoch 7, and from then on the answer stays True: a loop "
             f"that asks again is still out of patience.")
    if stopper.best_epoch != 1:
        fail(f"After validation losses {losses}, best_epoch is {stopper.best_epoch!r}; expected "
             f"1, the 0-based index of the epoch with the best loss (0.5). fit prints it (+ 1) "
             f"when it restores that epoch's weights.")


@pytest.mark.requires("test_early_stopping_stops_after_patience_epochs_without_improvement")
def test_a_nan_loss_is_never_an_improvement():
    """EarlyStopping(patience=2) fed NaN losses (a run that diverged) stops after 2 epochs and
    has no best weights to restore."""
    stopper = early_stopping.EarlyStopping(patience=2)
    model = nn.Linear(2, 2)
    before = state_of(model)
    got = stopper_answers(stopper, [math.nan] * 3)
    if got != [False, True, True]:
        fail(f"For validation losses [nan, nan, nan] and patience 2, step() answered {got}; "
             f"expected [False, True, True]. NaN is never better than anything: every such "
             f"epoch is one without improvement, from the very first.")
    call(stopper.restore, model, what="EarlyStopping.restore(model) after only NaN losses")
    if stopper.best_epoch != -1 or not same_state(state_of(model), before):
        fail(f"After only NaN losses, best_epoch is {stopper.best_epoch!r} and restore() "
             f"{'kept' if same_state(state_of(model), before) else 'changed'} the model; "
             f"expected -1 (no epoch was ever best) and the model left as it is.")


def stopper_answers(stopper, losses) -> list[bool]:
    model = nn.Linear(2, 2)
    return [bool(call(stopper.step, loss, model, what=f"EarlyStopping.step({loss}, model)"))
            for loss in losses]
@pytest.mark.requires("test_early_stopping_stops_after_patience_epochs_without_improvement")
def test_a_loss_equal_to_the_best_is_no_improvement():
    """EarlyStopping(patience=2): a validation loss that only ties the best counts as no better."""
    losses = [0.5, 0.5, 0.5]
    got = stopper_answers(early_stopping.EarlyStopping(patience=2), losses)
    if got != [False, False, True]:
        fail(f"For validation losses {losses} and patience 2, step() answered {got}; expected "
             f"[False, False, True]. A loss equal to the best is not an improvement: a model "
             f"stuck on a plateau must still run out of patience.")


@pytest.mark.requires("test_best_weights_are_a_copy_not_a_live_reference",
                      "test_early_stopping_stops_after_patience_epochs_without_improvement")
def test_min_delta_sets_how_much_better_counts_as_better():
    """EarlyStopping(patience=2, min_delta=0.1): only a loss more than 0.1 below the best is a
    new best."""
    losses = [1.0, 0.95, 0.85, 0.8, 0.78]
    stopper = early_stopping.EarlyStopping(patience=2, min_delta=0.1)
    model = nn.Linear(2, 2)
    got = []
    for epoch, loss in enumerate(losses):
        with torch.no_grad():
            model.weight.fill_(epoch)  # the weights tell which epoch they come from
        got.append(bool(call(stopper.step, loss, model,
                             what=f"EarlyStopping(patience=2, min_delta=0.1).step({loss}, model)")))
    expected = [False, False, False, False, True]
    if got != expected:
        fail(f"For validation losses {losses}, patience 2 and min_delta 0.1, step() answered "
             f"{got}; expected {expected}. An improvement must beat the best loss by more than "
             f"min_delta: 0.95 is not enough after 1.0, 0.85 is (a new best), then 0.8 and "
             f"0.78 are not enough after 0.85, so patience runs out at epoch 5. min_delta keeps "
             f"tiny, noisy improvements from resetting the patience forever.")
    call(stopper.restore, model, what="EarlyStopping.restore(model)")
    kept = model.weight.flatten()[0].item()
    if kept != 2:
        fail(f"After restore(), the model holds the weights of epoch {kept + 1:.0f}; expected "
             f"those of epoch 3 (loss 0.85), the last loss that beat the best by more than "
             f"min_delta.")
@pytest.mark.requires("test_smallnet_is_built_from_its_arguments")
def test_best_weights_are_a_copy_not_a_live_reference(device):
    """The weights kept for the best epoch do not change when training goes on afterwards."""
    model = small_net(device)
    stopper = early_stopping.EarlyStopping(patience=3)
    call(stopper.step, 0.5, model, what="EarlyStopping.step(0.5, model)")
    best = state_of(model)
    with torch.no_grad():  # what the next epoch's updates do: change the tensors in place
        for t in model.state_dict().values():
            t.add_(1)
    call(stopper.step, 0.9, model, what="EarlyStopping.step(0.9, model)")
    call(stopper.restore, model, what="EarlyStopping.restore(model)")
    if not same_state(state_of(model), best):
        fail("After restore(), the model holds the weights of the last epoch, not those of the "
             "best one: what step() saved for the best epoch changed as training went on. A "
             "model's state_dict() is a dictionary of references to the very tensors the "
             "optimizer updates in place, not a snapshot of their values.")


@pytest.mark.requires("test_early_stopping_stops_after_patience_epochs_without_improvement",
                      "test_best_weights_are_a_copy_not_a_live_reference",
                      "test_smallnet_is_built_from_its_arguments")
def test_fit_stops_at_the_right_epoch_and_restores_the_best_weights(device):
    """With patience 3 and validation losses 1.0, 0.8, 0.5, 0.6, 0.7, 0.9, 0.3, ..., fit runs 6
    epochs and leaves the model with the weights it had after epoch 3."""
    script = [1.0, 0.8, 0.5, 0.6, 0.7, 0.9, 0.3, 0.2]
    model = small_net(device)
    val = batches((7,), seed=1)  # the only batch of 7: how the loss below knows it validates
    snapshots = []

    def scripted_loss(logits, y):
        if len(y) != 7:
            return nn.functional.cross_entropy(logits, y)
        snapshots.append(state_of(model))
        return torch.tensor(script[min(len(snapshots), len(script)) - 1], device=logits.device)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = call(train.fit, model, batches((16, 16)), val, optimizer, epochs=len(script),
                   loss_fn=scripted_loss, patience=3, device=device,
                   what="fit(..., patience=3) with a scripted validation loss")
    ran = len(history["val_loss"])
    if ran != 6:
        fail(f"fit ran {ran} epochs; expected 6. The validation losses were {script[:ran]}: the "
             f"best is 0.5 (epoch 3), and with patience 3 training stops after the third epoch "
             f"in a row that does not beat it.")
    if same_state(snapshots[2], snapshots[-1]):
        fail("The weights were the same after epoch 3 and after epoch 6: fit's updates did "
             "not change the model, so there is no best epoch to go back to.")
    if not same_state(state_of(model), snapshots[2]):
        which = [i + 1 for i, s in enumerate(snapshots) if same_state(state_of(model), s)]
        seen = f"the weights of epoch {which[0]}" if which else "the weights of no epoch"
        fail(f"After early stopping, the model holds {seen}; expected the weights it had after "
             f"epoch 3, the epoch with the best validation loss. Saving the best weights must "
             f"copy them: later updates change the model's tensors in place.")


def fit_with_scripted_val_loss(device, script, patience, what):
    """fit() where the validation loss of epoch k is script[k-1]; returns (epochs run, the
    final state, the state after each epoch)."""
    model = small_net(device)
    snapshots = []

    def scripted_loss(logits, y):
        if len(y) != 7:
            return nn.functional.cross_entropy(logits, y)
        snapshots.append(state_of(model))
        return torch.tensor(script[min(len(snapshots), len(script)) - 1], device=logits.device)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = call(train.fit, model, batches((16, 16)), batches((7,), seed=1), optimizer,
                   epochs=len(script), loss_fn=scripted_loss, patience=patience, device=device,
                   what=what)
    return len(history["val_loss"]), state_of(model), snapshots


@pytest.mark.parametrize("patience", [1, 2])
@pytest.mark.requires("test_early_stopping_stops_after_patience_epochs_without_improvement",
                      "test_smallnet_is_built_from_its_arguments")
def test_fit_passes_its_patience_on(device, patience):
    """fit(patience=p) stops after p epochs in a row without a better validation loss."""
    script = [1.0, 0.8, 0.5, 0.6, 0.7, 0.9, 0.3, 0.2]
    ran, _, _ = fit_with_scripted_val_loss(device, script, patience,
                                           f"fit(..., patience={patience})")
    if ran != 3 + patience:
        fail(f"fit(..., patience={patience}) ran {ran} epochs; expected {3 + patience}. The "
             f"validation losses were {script[:ran]}: the best is 0.5 (epoch 3), and "
             f"training stops after {patience} epoch(s) in a row that do not beat it. The "
             f"patience the caller chooses is the one early stopping must use.")


@pytest.mark.parametrize("patience", [None, 0])
@pytest.mark.requires("test_smallnet_is_built_from_its_arguments")
def test_fit_without_patience_runs_every_epoch_and_keeps_the_last_weights(device, patience):
    """fit(patience=None or 0) never stops early and never rolls the weights back."""
    script = [0.5, 0.6, 0.7, 0.8]
    ran, final, snapshots = fit_with_scripted_val_loss(device, script, patience,
                                                       f"fit(..., patience={patience})")
    if ran != len(script):
        fail(f"fit(..., epochs=4, patience={patience}) ran {ran} epochs; expected all 4. "
             f"Without a patience (None, or 0 as the script's --patience 0 says), there is no "
             f"early stopping at all.")
    if not same_state(final, snapshots[-1]):
        fail(f"fit(..., patience={patience}) left the model with weights other than those of "
             f"its last epoch. Without early stopping nothing is restored: the caller gets "
             f"the model as training left it.")


@pytest.mark.requires("test_fit_trains_and_validates_with_the_given_loss_fn")
def test_fit_runs_20_epochs_by_default(device):
    """fit(model, train, val, optimizer) without epochs runs 20 epochs (and no early stop)."""
    model = tiny_net(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    history = call(train.fit, model, batches((8,)), batches((4,), seed=1), optimizer,
                   device=device, what="fit(model, train, val, optimizer)")
    ran = len(history.get("val_loss", [])) if isinstance(history, dict) else None
    if ran != 20:
        fail(f"fit without epochs ran {ran} epochs; its signature promises 20 by default.")


@pytest.mark.requires("test_fit_passes_its_patience_on")
def test_fit_reports_each_epoch_the_stop_and_the_restore_when_verbose(device, capsys):
    """fit(verbose=True) prints one line per epoch (its number, lr, both losses, accuracy),
    then why it stopped and which epoch's weights it restored; fit() by default prints nothing."""
    script = [1.0, 0.8, 0.6, 0.5, 0.7, 0.9, 0.3]  # the best: epoch 4 (best_epoch 3)
    fit_with_scripted_val_loss(device, script, 2, "fit(..., patience=2)")
    if capsys.readouterr().out:
        fail("fit() without verbose=True printed to stdout; its default is verbose=False, so "
             "that a caller (a test, a sweep of many runs) gets no output it did not ask for.")
    model = small_net(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scripted = iter(script)

    def scripted_loss(logits, y):
        if len(y) != 7:
            return nn.functional.cross_entropy(logits, y)
        return torch.tensor(next(scripted), device=logits.device)

    history = call(train.fit, model, batches((16, 16)), batches((7,), seed=1), optimizer,
                   epochs=len(script), loss_fn=scripted_loss, patience=2, device=device,
                   verbose=True, what="fit(..., patience=2, verbose=True)")
    out = capsys.readouterr().out
    lines = re.findall(r"epoch +(\d+) +lr (\S+) +train loss (\S+) +val loss (\S+) +"
                       r"val accuracy (\S+)%", out)
    expected = [(str(k + 1), f"{history['lr'][k]:.2e}", f"{history['train_loss'][k]:.4f}",
                 f"{history['val_loss'][k]:.4f}", f"{100 * history['val_accuracy'][k]:.1f}")
                for k in range(6)]
    if lines != expected:
        fail(f"fit(verbose=True) printed the epoch lines {lines}; for the 6 epochs it ran, its "
             f"history says {expected} (epoch from 1, lr, train loss, val loss, val accuracy "
             f"in %). Each line must report the epoch it follows.")
    restored = re.findall(r"restored the weights of epoch (-?\d+)", out)
    if "no improvement for 2 epochs: stopping" not in out or restored != ["4"]:
        fail(f"fit(patience=2, verbose=True) printed {out.strip()[-200:]!r}; expected it to say "
             f"'no improvement for 2 epochs: stopping' and 'restored the weights of epoch 4' "
             f"(the best validation loss, 0.5, came after epoch 4; epochs count from 1, as in "
             f"the epoch lines above, so that a reader finds the restored epoch among them).")


def test_fit_moves_the_model_to_its_device(device):
    """fit(..., device=d) puts the model on d itself: the caller may hand over a CPU model."""
    model = tiny_net("cpu")
    moved = []
    original_to = model.to

    def spy_to(*args, **kwargs):  # records where the model is sent, then sends it there
        moved.append(torch.device(args[0] if args else kwargs.get("device", "cpu")))
        return original_to(*args, **kwargs)

    model.to = spy_to
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    call(train.fit, model, batches(), batches((10,), seed=1), optimizer, epochs=1,
         device=device, what=f"fit(..., device={device.type!r}) on a CPU model")
    if device not in moved:
        fail(f"fit(..., device={device.type!r}) never called model.to({device.type!r}). The "
             f"batches go to the device, so the model must go there too: on a GPU, a model "
             f"left on the CPU fails with 'Expected all tensors to be on the same device'. "
             f"(This test sees the move on a CPU-only machine too.)")


# --- the script ------------------------------------------------------------------------


def test_script_help_says_what_it_does():
    """`python train.py --help` starts its description with the docstring's first line."""
    assert_help_opens_with_summary(train.resolve(), "train.py")


BAD_ARGUMENTS = [["--epochs", "0"], ["--epochs", "-3"], ["--lr", "0"], ["--lr", "-0.05"],
                 ["--patience", "-1"], ["--device", "gpu"]]


def test_script_rejects_bad_arguments(capsys):
    """python train.py --epochs 0 (and other nonsense) stops at once with a one-line error."""
    cases = BAD_ARGUMENTS + ([] if torch.cuda.is_available() else [["--device", "cuda"]])
    for argv in map(shell_argv, cases):
        command = "python train.py " + " ".join(argv)
        try:
            train.main(argv)
        except SystemExit as exc:
            if exc.code in (0, None):
                fail(f"{command} exited with status 0; expected a non-zero status.")
        else:
            fail(f"{command} ran to the end; expected it to refuse the argument with a "
                 f"one-line error and a non-zero exit: training 0 epochs or at lr 0 saves a "
                 f"model and an empty plot as if all went well.")
        if "error" not in capsys.readouterr().err:
            fail(f"{command} exited without saying why on stderr.")


@pytest.mark.trains
@pytest.mark.requires("test_script_rejects_bad_arguments", "test_history_holds_plain_floats")
def test_script_saves_the_curves_under_runs(device, tmp_path, monkeypatch, capsys):
    """python train.py --epochs 2 trains, saves the loss curves in runs/ and prints the path."""
    monkeypatch.setattr(train.resolve(), "RUNS", tmp_path / "runs")
    history = call(train.main, ["--epochs", "2", "--device", device.type],
                   what="python train.py --epochs 2")
    curves = tmp_path / "runs" / "curves.png"
    if not isinstance(history, dict) or len(history.get("val_loss", [])) != 2:
        fail(f"python train.py --epochs 2 returned {history!r:.200}; expected fit's history "
             f"with 2 epochs.")
    if not curves.is_file():
        fail("python train.py did not save runs/curves.png beside the script. A script's "
             "outputs go to one predictable folder, whatever the current directory.")
    if str(curves) not in capsys.readouterr().out:
        fail("python train.py saved runs/curves.png without printing its path.")


def skip_rendering(monkeypatch) -> None:
    """Figure.savefig only creates the file (as the real one does, in an existing folder):
    drawing a PNG takes a tenth of a second, and the saving is tested for real above."""
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, fname, *args, **kwargs: Path(fname).touch())


def record_fit(monkeypatch) -> list[dict]:
    """Replace train.py's fit by a recorder of its arguments; returns the list of calls."""
    calls = []

    def recording_fit(model, train_loader, val_loader, optimizer, **kwargs):
        calls.append(dict(kwargs, train=train_loader, val=val_loader, optimizer=optimizer,
                          initial_state=state_of(model)))
        return {"train_loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.5, 0.45],
                "val_accuracy": [0.7, 0.8, 0.85], "lr": [0.05] * 3}  # 3 epochs: fit is tested

    monkeypatch.setattr(train.resolve(), "fit", recording_fit)
    skip_rendering(monkeypatch)
    return calls


@pytest.mark.trains
@pytest.mark.requires("test_script_saves_the_curves_under_runs")
def test_script_hands_its_settings_to_fit(tmp_path, monkeypatch, capsys):
    """`python train.py` trains SGD (momentum 0.9) from lr 0.05, halved every 10 epochs, for
    up to 60 epochs with patience 8, verbose, on 1,000 reshuffled moons in batches of 50,
    validating on 200 in one batch; the options given replace those defaults; the plot goes
    where --plot says."""
    module = train.resolve()
    calls = record_fit(monkeypatch)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    plot = tmp_path / "new" / "folder" / "curves.png"
    call(module.main, ["--plot", str(plot)], what="python train.py (fit recorded, not run)")
    capsys.readouterr()
    got = calls[-1]
    optimizer, scheduler = got["optimizer"], got.get("scheduler")
    lrs = []
    for _ in range(20):  # what fit would do: an epoch of updates, then one scheduler step
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients here: moves nothing
        scheduler.step()
    seen = {"epochs": got.get("epochs"), "patience": got.get("patience"),
            "verbose": got.get("verbose"), "device": str(got.get("device")),
            "momentum": optimizer.param_groups[0].get("momentum"),
            "lr of epochs 1-20": sorted(set(lrs)), "training moons": len(got["train"].dataset),
            "batch size": got["train"].batch_size, "validation moons": len(got["val"].dataset),
            "validation batch size": got["val"].batch_size}
    want = {"epochs": 60, "patience": 8, "verbose": True, "device": auto, "momentum": 0.9,
            "lr of epochs 1-20": [0.025, 0.05], "training moons": 1000, "batch size": 50,
            "validation moons": 200, "validation batch size": 200}
    if seen != want or lrs[9:11] != [0.05, 0.025]:
        fail(f"python train.py without options trained with {seen} (the lr halving after "
             f"epoch {lrs.index(min(lrs)) if lrs else '?'}); expected {want}, the lr halving "
             f"after epoch 10. These are the script's documented run: change one and its "
             f"curves and its stopping epoch are no longer the ones the README describes.")
    order = [torch.cat([y for _, y in got["train"]]).tolist() for _ in range(2)]
    if order[0] == order[1]:
        fail("train.py's training loader gives the moons in the same order every epoch; "
             "shuffled anew each epoch, the batches differ from epoch to epoch.")
    if not plot.is_file():
        fail(f"python train.py --plot {plot} did not save the curves there: the folders of the "
             f"path are created when they do not exist yet.")
    for argv, patched, expected in (
            (["--epochs", "1", "--patience", "0", "--lr", "0.5", "--device", "auto"], False,
             (1, 0, 0.5, auto)),
            (["--device", "cpu"], True, (60, 8, 0.05, "cpu"))):
        if patched:  # a GPU is available (pretended): --device cpu must still mean the CPU
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        calls.clear()
        argv = shell_argv([*argv, "--plot", str(tmp_path / "curves.png")])  # an existing folder
        call(module.main, argv, what=f"python train.py {' '.join(argv)} (fit recorded)")
        capsys.readouterr()
        got = calls[-1] if calls else {}
        seen = (got.get("epochs"), got.get("patience"),
                got["optimizer"].param_groups[0]["lr"] if got else None, str(got.get("device")))
        if seen != expected:
            note = " (a GPU pretended to be available)" if patched else ""
            fail(f"python train.py {' '.join(argv)}{note} called fit with epochs, patience, lr, "
                 f"device = {seen}; expected {expected}: each option must reach fit (1 epoch "
                 f"and patience 0 are valid), and only 'auto' may choose the GPU.")


def all_of(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x, y) of a dataset, in its order, as two tensors."""
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))


@pytest.mark.trains
@pytest.mark.requires("test_script_hands_its_settings_to_fit")
def test_script_starts_from_the_documented_moons_and_seed(tmp_path, monkeypatch, capsys):
    """`python train.py` trains on the first 1,000 points of make_moons(n_samples=1200,
    noise=0.25, random_state=0), validates on the last 200, and builds its SmallNet with torch
    seeded 0 (as the README says): every run starts from the same data and the same weights."""
    from sklearn.datasets import make_moons

    calls = record_fit(monkeypatch)
    argv = ["--device", "cpu", "--plot", str(tmp_path / "curves.png")]
    call(train.resolve().main, argv, what="python train.py (fit recorded, not run)")
    capsys.readouterr()
    got = calls[-1]
    x, y = make_moons(n_samples=1200, noise=0.25, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for name, loader, (want_x, want_y) in (("training", got["train"], (x[:1000], y[:1000])),
                                           ("validation", got["val"], (x[1000:], y[1000:]))):
        seen_x, seen_y = all_of(loader.dataset)
        if not (seen_x.shape == want_x.shape and torch.allclose(seen_x.float(), want_x)
                and torch.equal(seen_y.long(), want_y.long())):
            fail(f"python train.py's {name} set is not the one the README states (the "
                 f"{'first 1,000' if name == 'training' else 'last 200'} points of "
                 f"make_moons(n_samples=1200, noise=0.25, random_state=0)): its first point is "
                 f"{[round(v, 4) for v in seen_x[0].tolist()]} with label {seen_y[0].item()}, "
                 f"the README's is {[round(v, 4) for v in want_x[0].tolist()]} with label "
                 f"{want_y[0].item()}. A script's data is part of its specification: with other "
                 f"moons its curves and its stopping epoch are not the ones the README describes.")
    torch.manual_seed(0)
    want = state_of(model_py.SmallNet())
    if not same_state(got["initial_state"], want):
        fail("python train.py handed fit a SmallNet whose initial weights are not those that "
             "SmallNet() gets right after torch.manual_seed(0), as the README states. Seeding "
             "is what makes a run reproducible: two runs of the script (or yours and the "
             "README's) must start from the same weights.")


@pytest.mark.trains
@pytest.mark.requires("test_script_saves_the_curves_under_runs")
def test_script_runs_when_started_as_a_file(tmp_path, monkeypatch, capsys):
    """`python train.py --epochs 1` runs main(): the guard at the end of the file lets it."""
    skip_rendering(monkeypatch)
    ended = run_as_main(train.resolve().__file__, ["--epochs", "1", "--device", "cpu",
                                                   "--plot", str(tmp_path / "curves.png")])
    if ended != "returned":
        fail(f"python train.py --epochs 1 {ended}; expected it to run.")
    if not (tmp_path / "curves.png").is_file() or "epoch" not in capsys.readouterr().out:
        fail("python train.py --epochs 1 neither printed its epoch nor saved its curves. Run "
             "as a file, a script's module is named '__main__', and the block at its end "
             "decides whether main() runs.")


@pytest.mark.trains
@pytest.mark.requires("test_script_runs_when_started_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    train.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(train.resolve().__file__, "train.py")


# --- all together ----------------------------------------------------------------------


@pytest.mark.trains
@pytest.mark.requires("test_train_one_epoch_optimises_the_given_loss_fn",
                      "test_each_step_uses_only_the_gradient_of_its_own_batch",
                      "test_every_epoch_trains_in_train_mode",
                      "test_smallnet_is_built_from_its_arguments")
def test_fit_learns_two_spirals(device):
    """fit() with validation, StepLR and early stopping separates two spirals (held-out points)."""
    x, y = data.spirals(n=150, seed=0)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    x, y = x[order], y[order]
    train_set = list(zip(x[:240].split(40), y[:240].split(40)))  # 6 batches of 40
    val_set = [(x[240:], y[240:])]  # 60 held-out points
    model = model_py.SmallNet(in_features=2, hidden=32, num_classes=2).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    call(train.fit, model, train_set, val_set, optimizer, epochs=20, scheduler=scheduler,
         patience=8, device=device, what="fit() on two spirals")
    # measured: the reference reaches 95-100% on 12 seeds; without zero_grad, 43-75%
    assert_accuracy_at_least(
        accuracy_of(model, x[240:], y[240:], device), 0.85, "SmallNet on held-out spiral points",
        "If the tests above pass, look again at what each step of train_one_epoch does.")
