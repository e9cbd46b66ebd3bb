"""Exercise 03: a training loop you can reuse: updates, validation, a schedule, early stopping.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import torch
from torch import nn

from torchkata import data, under_test
from torchkata.checks import accuracy_of, assert_accuracy_at_least, call, fail

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
    if abs(got - expected) > 1e-5 * max(1.0, expected):
        fail(f"train_one_epoch returned {got:.5f}; the mean cross-entropy per sample of these "
             f"three batches (16, 16 and 8 samples) is {expected:.5f}.")


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


def test_evaluate_runs_in_eval_mode_without_gradients(device):
    """evaluate() computes loss and accuracy in eval mode, builds no graph, changes nothing."""
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
    model.eval()
    with torch.no_grad():
        x, y = val[0][0].to(device), val[0][1].to(device)
        logits = model(x)
        expected = (nn.functional.cross_entropy(logits, y).item(),
                    (logits.argmax(dim=1) == y).float().mean().item())
    if not isinstance(result, tuple) or len(result) != 2:
        fail(f"evaluate() returned {describe_value(result)}; expected (loss, accuracy).")
    for name, got, want in zip(("loss", "accuracy"), result, expected):
        if type(got) is not float or abs(got - want) > 1e-5:
            fail(f"evaluate() returned the {name} as {describe_value(got)} = {got}; expected "
                 f"the float {want:.5f} (the eval-mode {name} over the batch).")


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
    if not same_state(state_of(model), snapshots[2]):
        which = [i + 1 for i, s in enumerate(snapshots) if same_state(state_of(model), s)]
        seen = f"the weights of epoch {which[0]}" if which else "the weights of no epoch"
        fail(f"After early stopping, the model holds {seen}; expected the weights it had after "
             f"epoch 3, the epoch with the best validation loss. Saving the best weights must "
             f"copy them: later updates change the model's tensors in place.")


# --- all together ----------------------------------------------------------------------


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
