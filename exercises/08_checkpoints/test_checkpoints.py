"""Exercise 08: checkpoints that resume training exactly and survive a crash mid-save.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import builtins
import errno
import inspect
import io
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401 - the first optimizer step imports it (seconds): pay it here
import torch.serialization
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from torchkata import data, under_test
from torchkata.checks import (
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    how_script_ended,
    run_as_main,
)

checkpoint = under_test("checkpoint")
train = under_test("train")

trains = pytest.mark.trains
requires = pytest.mark.requires

RESUME = ("Resuming must restore everything that decides the next step: the weights, the "
          "optimizer's state (Adam keeps two running averages per weight), the epoch counter, "
          "and the random state that shuffles the data.")


def new_run(device, seed: int = 0):
    """A fresh model and Adam optimizer, as a newly started program would build them."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=0.05)


def loader(batch_size: int = 16) -> DataLoader:
    x, y = data.blobs(n=32, classes=3, seed=0)  # 96 points, 6 shuffled batches per epoch
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)


def fit(model, optimizer, epochs, path, device, batch_size: int = 16):
    return call(train.fit, model, optimizer, loader(batch_size), epochs, path, device,
                what=f"fit(..., epochs={epochs}, checkpoint)")


def save(path, model, optimizer, epoch):
    call(checkpoint.save_checkpoint, path, model, optimizer, epoch,
         what="save_checkpoint(path, model, optimizer, epoch)")


def load(path, model, optimizer, device, why=""):
    return call(checkpoint.load_checkpoint, path, model, optimizer, device,
                what="load_checkpoint(path, model, optimizer, device)", why=why)


def trained(device, steps: int = 3):
    """A model and Adam optimizer after a few steps, so that the optimizer has state."""
    model, optimizer = new_run(device)
    x, y = data.blobs(n=8, classes=3, seed=1)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
        optimizer.step()
    return model, optimizer


def weights(model) -> list[torch.Tensor]:
    return [p.detach().cpu().clone() for p in model.parameters()]


# --- what a checkpoint holds ---------------------------------------------------------------


def test_checkpoint_loads_with_weights_only(device, tmp_path):
    """The checkpoint holds plain data: torch.load(..., weights_only=True) can read it."""
    model, optimizer = trained(device)
    save(tmp_path / "ckpt.pt", model, optimizer, 1)
    try:
        state = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the message names what could not be loaded
        fail(f"torch.load(..., weights_only=True) cannot read the checkpoint: "
             f"{str(exc).splitlines()[0]}. Expected a dict of state_dicts, tensors and numbers: "
             f"a pickled module or object can only be loaded by running arbitrary code.")
    if not isinstance(state, dict):
        fail(f"The checkpoint holds a {type(state).__name__}; expected a dict, so that its "
             f"parts (weights, optimizer state, epoch) can be found by name.")


def test_load_restores_model_weights(device, tmp_path):
    """A model built from scratch has the saved weights after load_checkpoint."""
    model, optimizer = trained(device)
    save(tmp_path / "ckpt.pt", model, optimizer, 1)
    fresh, fresh_optimizer = new_run(device, seed=1)
    load(tmp_path / "ckpt.pt", fresh, fresh_optimizer, device)
    if not all(torch.equal(a, b) for a, b in zip(weights(model), weights(fresh))):
        fail("After load_checkpoint the model's weights differ from those saved.")


def test_load_restores_optimizer_state(device, tmp_path):
    """A new Adam optimizer gets the saved running averages and step counts back."""
    model, optimizer = trained(device)
    save(tmp_path / "ckpt.pt", model, optimizer, 1)
    fresh, fresh_optimizer = new_run(device, seed=1)
    load(tmp_path / "ckpt.pt", fresh, fresh_optimizer, device)
    saved, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    if not restored:
        fail("After load_checkpoint the Adam optimizer has no state: its running averages "
             "of the gradients and their squares start again from zero, and its step count "
             "from 0, so the first steps after resuming are not the steps the interrupted run "
             "would have taken (Adam's bias correction makes them full-size steps).")
    for index, values in saved.items():
        for key, value in values.items():
            if not torch.equal(torch.as_tensor(value).cpu(),
                               torch.as_tensor(restored[index][key]).cpu()):
                fail(f"After load_checkpoint the optimizer's {key!r} of parameter {index} "
                     f"differs from the one saved.")


def test_load_restores_rng_state(tmp_path):
    """After load_checkpoint, torch's random numbers continue as they would have after saving."""
    model, optimizer = trained("cpu")
    save(tmp_path / "ckpt.pt", model, optimizer, 1)
    expected = torch.rand(5)  # what the uninterrupted program would draw next
    torch.manual_seed(12345)  # a new program starts from another random state
    load(tmp_path / "ckpt.pt", model, optimizer, "cpu")
    if not torch.equal(torch.rand(5), expected):
        fail("After load_checkpoint, torch.rand() does not continue where it was when the "
             "checkpoint was saved. A DataLoader with shuffle=True draws each epoch's order "
             "from torch's random generator: without its state, a resumed run sees the data in "
             "a different order than the run it continues.")


def test_load_returns_the_saved_epoch(tmp_path):
    """load_checkpoint returns the epoch counter exactly as save_checkpoint was given it."""
    model, optimizer = trained("cpu")
    save(tmp_path / "ckpt.pt", model, optimizer, 7)
    done = load(tmp_path / "ckpt.pt", model, optimizer, "cpu")
    if done != 7 or not isinstance(done, int):
        fail(f"save_checkpoint(..., epoch=7) then load_checkpoint() returned {done!r}; expected "
             f"the int 7 back. The counter is saved and loaded as it is: counting completed "
             f"epochs is fit's job, not the checkpoint's.")


def test_load_without_an_optimizer_restores_the_weights(device, tmp_path):
    """load_checkpoint(path, model) with no optimizer (inference) restores the weights alone."""
    model, optimizer = trained(device)
    save(tmp_path / "ckpt.pt", model, optimizer, 3)
    fresh, _ = new_run(device, seed=1)
    done = call(checkpoint.load_checkpoint, tmp_path / "ckpt.pt", fresh, None, device,
                what="load_checkpoint(path, model, optimizer=None, device)",
                why="Loading a model to use it, not to train it, needs no optimizer.")
    if done != 3 or not all(torch.equal(a, b) for a, b in zip(weights(model), weights(fresh))):
        fail(f"load_checkpoint(path, model, optimizer=None) returned {done!r} and "
             f"{'the saved' if done == 3 else 'other'} weights; expected 3 and the saved "
             f"weights: the optimizer is optional.")


def test_load_accepts_a_checkpoint_without_optimizer_state(tmp_path):
    """A checkpoint exported for inference (weights, epoch and random state, no optimizer
    state) loads, even when an optimizer is passed: the optimizer keeps its own state."""
    model, optimizer = trained("cpu")
    exported = {"model": model.state_dict(), "epoch": 4, "rng": torch.get_rng_state()}
    torch.save(exported, tmp_path / "exported.pt")
    fresh, fresh_optimizer = new_run("cpu", seed=1)
    done = load(tmp_path / "exported.pt", fresh, fresh_optimizer, "cpu",
                why="A checkpoint shared for inference often leaves the optimizer's state out.")
    if done != 4 or not all(torch.equal(a, b) for a, b in zip(weights(model), weights(fresh))):
        fail(f"load_checkpoint on a checkpoint with the keys model, epoch and rng (no "
             f"optimizer) returned {done!r} and {'the saved' if done == 4 else 'other'} "
             f"weights; expected 4 and the saved weights. The optimizer's state is optional "
             f"in a checkpoint: the weights, the epoch counter and the random state are what "
             f"makes a file a training checkpoint.")


class OnGPU(torch.Tensor):
    """A CPU tensor that says it lives on cuda:0, as map_location="cuda" would leave it."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        result = super().__torch_function__(func, types, args, kwargs or {})
        if func in (torch.Tensor.cpu, torch.Tensor.to) and isinstance(result, torch.Tensor):
            return result.as_subclass(torch.Tensor)  # a real copy to the CPU
        return result


@requires("test_load_restores_rng_state")
def test_load_restores_rng_state_onto_a_gpu(tmp_path, monkeypatch):
    """load_checkpoint(..., device="cuda") gives set_rng_state the CPU tensor it requires."""
    model, optimizer = trained("cpu")
    save(tmp_path / "ckpt.pt", model, optimizer, 1)
    real_load, real_set = torch.load, torch.set_rng_state
    given = []

    def load_onto_gpu(*args, **kwargs):  # what map_location="cuda" does to the saved RNG state
        state = real_load(*args, **{**kwargs, "map_location": "cpu"})
        state["rng"] = state["rng"].as_subclass(OnGPU)
        return state

    def set_rng_state(new_state):
        given.append(new_state.device)
        if new_state.device.type != "cpu":
            raise TypeError("expected a torch.ByteTensor, but got torch.cuda.ByteTensor")
        real_set(new_state)

    monkeypatch.setattr(torch, "load", load_onto_gpu)
    monkeypatch.setattr(torch, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.random, "set_rng_state", set_rng_state)
    load(tmp_path / "ckpt.pt", model, optimizer, "cuda",
         why="On a GPU machine, map_location='cuda' moves every tensor of the checkpoint to the "
             "GPU, the saved random state too; torch.set_rng_state accepts only a CPU tensor.")
    if not given:
        fail("load_checkpoint(..., device='cuda') did not restore torch's random state.")


def test_load_explains_a_file_that_is_not_a_checkpoint(tmp_path):
    """load_checkpoint raises ValueError saying why, for a damaged or foreign file."""
    model, optimizer = trained("cpu")
    good = tmp_path / "good.pt"
    save(good, model, optimizer, 1)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:600])
    (tmp_path / "notes.pt").write_text("epoch 1\n")
    cases = {"a checkpoint cut off halfway": tmp_path / "cut.pt",
             "a text file": tmp_path / "notes.pt"}
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    cases["a pickled nn.Linear"] = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "weights.pt")
    cases["a bare state_dict"] = tmp_path / "weights.pt"
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    cases["a bare tensor"] = tmp_path / "tensor.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
               tmp_path / "no-epoch.pt")
    cases["weights and optimizer state without the epoch and random state"] = (
        tmp_path / "no-epoch.pt")
    other = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3))  # another architecture
    save(tmp_path / "other.pt", other, torch.optim.Adam(other.parameters()), 1)
    cases["another model's checkpoint"] = tmp_path / "other.pt"
    for case, path in cases.items():
        try:
            checkpoint.load_checkpoint(path, model, optimizer, "cpu")
        except ValueError:
            continue
        except Exception as exc:  # noqa: BLE001 - the type of error is the finding
            fail(f"load_checkpoint() on {case} raised {type(exc).__name__}: "
                 f"{str(exc).splitlines()[0][:150] if str(exc) else ''}. Expected a "
                 f"ValueError with a message of its own (as its docstring says), so that "
                 f"train.py can tell whoever runs it what is wrong with the file in one line.")
        fail(f"load_checkpoint() on {case} returned normally; expected a ValueError.")


@requires("test_load_explains_a_file_that_is_not_a_checkpoint")
def test_load_errors_say_what_the_file_holds(tmp_path):
    """The ValueError names the class of a pickled object, and for another model's checkpoint
    quotes the start of PyTorch's own explanation (its first 150 characters, on one line)."""
    model, optimizer = trained("cpu")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    other = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3))  # another architecture
    torch.save({"model": other.state_dict(), "epoch": 1, "rng": torch.get_rng_state()},
               tmp_path / "other.pt")
    try:
        nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).load_state_dict(
            other.state_dict())
        torch_says = ""
    except RuntimeError as exc:  # what PyTorch itself says about this mismatch
        torch_says = " ".join(str(exc).split())[:150]
    messages = {}
    for name in ("module.pt", "other.pt"):
        try:
            checkpoint.load_checkpoint(tmp_path / name, model, optimizer, "cpu")
        except ValueError as exc:
            messages[name] = str(exc)
    linear = messages.get("module.pt", "")
    if "torch.nn.modules.linear.Linear" not in linear or "GLOBAL" in linear:
        fail(f"load_checkpoint() on a pickled nn.Linear said {linear!r}. Expected the message "
             f"to name the class it found as Python spells it, torch.nn.modules.linear.Linear, "
             f"without pickle's internal opcode (GLOBAL): it tells whoever saved the file "
             f"which object to replace by its state_dict.")
    mismatch = messages.get("other.pt", "")
    if not torch_says or f"({torch_says})" not in mismatch:
        fail(f"load_checkpoint() on another model's checkpoint said {mismatch!r}. Expected it to "
             f"quote, in parentheses, the first 150 characters of PyTorch's own error on one "
             f"line ({torch_says!r}): the start of that error names the first layer whose "
             f"shape differs, and a longer quote would bury the one-line message in detail.")


# --- resuming ------------------------------------------------------------------------------


@trains
def test_checkpoint_counts_completed_epochs(device, tmp_path):
    """After fit runs 2 epochs, its checkpoint says that 2 epochs are complete."""
    model, optimizer = new_run(device)
    fit(model, optimizer, 2, tmp_path / "ckpt.pt", device)
    fresh, fresh_optimizer = new_run(device, seed=1)
    done = load(tmp_path / "ckpt.pt", fresh, fresh_optimizer, device)
    if done != 2:
        fail(f"After 2 complete epochs, load_checkpoint returns {done}. Expected 2: the "
             f"number of epochs done is where training resumes (epoch indices 0 and 1 are "
             f"done, index 2 is next). Off by one repeats or skips an epoch on every resume.")


@trains
def test_resume_runs_only_the_remaining_epochs(device, tmp_path):
    """fit(epochs=5) after an interrupted fit(epochs=2) runs exactly the 3 missing epochs."""
    model, optimizer = new_run(device)
    fit(model, optimizer, 2, tmp_path / "ckpt.pt", device)
    model, optimizer = new_run(device, seed=1)
    history = fit(model, optimizer, 5, tmp_path / "ckpt.pt", device)
    if len(history) != 3:
        fail(f"Resuming a 5-epoch run after 2 complete epochs ran {len(history)} epoch(s); "
             f"expected 3. The epoch counter saved in the checkpoint decides where training "
             f"picks up.")


class Recorder(nn.Module):
    """A linear classifier of points that records every batch it sees and its scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(2, 3)
        self.seen: list[tuple[bool, torch.Tensor, torch.Tensor]] = []  # (training, x, logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        self.seen.append((self.training, x.detach().cpu(), logits.detach().cpu()))
        return logits


@trains
def test_fit_trains_in_training_mode(device, tmp_path):
    """fit runs every step in train mode, even for a model handed over in eval mode."""
    recorder = Recorder().to(device).eval()
    fit(recorder, torch.optim.Adam(recorder.parameters(), lr=0.01), 2, tmp_path / "c.pt", device)
    if not recorder.seen or not all(training for training, _, _ in recorder.seen):
        fail("fit() ran the model in eval mode. Expected train mode for every training step: a "
             "model comes back from evaluation or loading in eval mode, where Dropout does "
             "nothing and BatchNorm's statistics never adapt.")


@trains
def test_fit_reports_the_mean_cross_entropy_of_each_epoch(device, tmp_path):
    """Each value fit returns is the epoch's cross-entropy, averaged over its samples."""
    recorder = Recorder().to(device)
    x, y = loader().dataset.tensors
    label = {tuple(row.tolist()): int(t) for row, t in zip(x, y)}
    history = fit(recorder, torch.optim.Adam(recorder.parameters(), lr=0.01), 2,
                  tmp_path / "c.pt", device, batch_size=40)  # 40, 40, then 16 per epoch
    per_epoch = len(recorder.seen) // 2
    for epoch in range(2):
        batches = recorder.seen[epoch * per_epoch:(epoch + 1) * per_epoch]
        total = sum(nn.functional.cross_entropy(
            logits.double(), torch.tensor([label[tuple(r.tolist())] for r in xb]),
            reduction="sum").item() for _, xb, logits in batches)
        expected = total / sum(len(xb) for _, xb, _ in batches)
        got = history[epoch] if isinstance(history, list) and len(history) == 2 else None
        if not isinstance(got, float) or abs(got - expected) > 1e-4:
            fail(f"For epoch {epoch + 1}, fit() reported {got!r}; the cross-entropy of the "
                 f"model's scores against the labels, averaged over the epoch's 96 samples, is "
                 f"{expected:.5g}. Expected a float equal to it: the history must show the loss "
                 f"that is minimised, with every sample counted once (the last batch may be "
                 f"short).")


@trains
def test_fit_prints_the_loss_of_each_epoch(device, tmp_path, capsys):
    """fit prints one line per epoch, "epoch k/n: loss L", with the loss it returns for it."""
    model, optimizer = new_run(device)
    capsys.readouterr()
    history = fit(model, optimizer, 2, tmp_path / "ckpt.pt", device)
    lines = [line for line in capsys.readouterr().out.splitlines() if "epoch" in line]
    printed = [(re.findall(r"epoch (\d+)/(\d+)", line), re.findall(r"\d+\.\d+", line))
               for line in lines]
    expected = [(f"{k + 1}/2", round(loss, 4)) for k, loss in enumerate(history)]
    got = [("/".join(e[0]) if e else "?", float(n[-1]) if n else None) for e, n in printed]
    if len(got) != 2 or any(g[0] != e[0] or g[1] is None or abs(g[1] - e[1]) > 1e-4
                            for g, e in zip(got, expected)):
        fail(f"fit(epochs=2) printed the epochs and losses {got}; it returned the losses "
             f"{[round(v, 4) for v in history]}, so expected {expected}: each line shows the "
             f"epoch just finished and its own mean loss, the numbers a person watching the "
             f"run compares with the uninterrupted run's.")


@trains
def test_fit_saves_a_checkpoint_after_every_epoch(device, tmp_path, monkeypatch):
    """fit(epochs=3) writes a checkpoint after epochs 1, 2 and 3, each with its count."""
    saved = []
    real = train.resolve().save_checkpoint

    def recording(path, model, optimizer, epoch, *args, **kwargs):
        saved.append(epoch)
        return real(path, model, optimizer, epoch, *args, **kwargs)

    monkeypatch.setattr(train.resolve(), "save_checkpoint", recording)
    model, optimizer = new_run(device)
    fit(model, optimizer, 3, tmp_path / "ckpt.pt", device)
    if saved != [1, 2, 3]:
        fail(f"fit(epochs=3) saved checkpoints with epoch counts {saved}; expected [1, 2, 3]: "
             f"one after each epoch, counting the epochs completed, so that a crash in epoch 3 "
             f"loses only that epoch.")


@trains
def test_fit_lowers_the_loss(device, tmp_path):
    """Four epochs of fit on blobs bring the epoch loss well below the first epoch's."""
    model, optimizer = new_run(device)
    history = fit(model, optimizer, 4, tmp_path / "ckpt.pt", device)
    values = torch.tensor(history, dtype=torch.float64)
    if len(values) != 4 or not torch.isfinite(values).all() or not values[-1] < 0.6 * values[0]:
        fail(f"fit() over 4 epochs reported the losses {[round(v, 4) for v in history]}; "
             f"expected 4 finite values, the last below 60% of the first (the reference: "
             f"24% to 37% over seeds 0-5). A run that does not learn cannot show that resuming "
             f"works: two runs that both stand still agree for the wrong reason.")


@trains
@requires("test_fit_lowers_the_loss")
def test_resumed_run_matches_uninterrupted_run(device, tmp_path):
    """2 epochs, a restart, then 2 more give the same losses and weights as 4 epochs in one go."""
    model, optimizer = new_run(device)
    straight = fit(model, optimizer, 4, tmp_path / "straight.pt", device)
    expected = weights(model)

    model, optimizer = new_run(device)
    first = fit(model, optimizer, 2, tmp_path / "resumed.pt", device)
    model, optimizer = new_run(device, seed=99)  # a new program: other weights, other RNG state
    second = fit(model, optimizer, 4, tmp_path / "resumed.pt", device)
    resumed = first + second

    if not all(torch.isfinite(torch.tensor(v)).all() for v in (straight, resumed)):
        fail(f"A loss became inf or NaN (uninterrupted: {straight}; resumed: {resumed}): "
             f"nothing can be compared.")
    exact = torch.device(device).type == "cpu"
    same = (lambda a, b: torch.equal(a, b)) if exact else (
        lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    if len(resumed) != len(straight) or not same(torch.tensor(resumed), torch.tensor(straight)):
        fail(f"Losses per epoch, uninterrupted: {[round(v, 6) for v in straight]}; "
             f"interrupted after 2 epochs and resumed: {[round(v, 6) for v in resumed]}. "
             f"Expected the same list. {RESUME}")
    if not all(same(a, b) for a, b in zip(weights(model), expected)):
        fail(f"The losses agree, but the final weights of the resumed run differ from the "
             f"uninterrupted run's. {RESUME}")


# --- loading anywhere, safely ----------------------------------------------------------------


def test_load_maps_a_gpu_checkpoint_to_the_cpu(tmp_path, monkeypatch):
    """A checkpoint written on a GPU machine loads on a machine without one."""
    model, optimizer = trained("cpu")
    with monkeypatch.context() as m:  # tag every saved tensor as living on cuda:0
        registry = [(0, lambda storage: "cuda:0", lambda storage, location: None)]
        m.setattr(torch.serialization, "_package_registry",
                  registry + list(torch.serialization._package_registry))
        save(tmp_path / "gpu.pt", model, optimizer, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop without a GPU
    fresh, fresh_optimizer = new_run("cpu", seed=1)
    load(tmp_path / "gpu.pt", fresh, fresh_optimizer, "cpu",
         why="This checkpoint was saved on a GPU: each tensor in it remembers 'cuda:0', and "
             "torch.load puts it back there unless it is told where the tensors should go.")
    if not all(torch.equal(a, b) for a, b in zip(weights(model), weights(fresh))):
        fail("After loading the GPU checkpoint on the CPU, the weights differ from those saved.")


def test_load_refuses_code_hidden_in_a_checkpoint(tmp_path):
    """load_checkpoint does not run code that a (malicious) checkpoint file carries."""
    model, optimizer = trained("cpu")
    marker = tmp_path / "code-ran-while-loading"

    class Payload:
        def __reduce__(self):  # unpickling this calls os.makedirs(marker)
            return (os.makedirs, (str(marker),))

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1,
             "rng": torch.get_rng_state(), "note": Payload()}
    torch.save(state, tmp_path / "evil.pt")
    try:
        checkpoint.load_checkpoint(tmp_path / "evil.pt", model, optimizer, "cpu")
    except Exception:  # noqa: BLE001,S110 - refusing the file is the expected outcome
        pass
    if marker.exists():
        fail("Loading a checkpoint ran code stored in the file: it created a folder on disk. "
             "A checkpoint is a pickle, and unpickling can call any function; downloaded or "
             "shared checkpoints must be loaded so that only tensors and plain data are "
             "accepted.")


# --- saving safely -------------------------------------------------------------------------


def interrupted_save(real_save):
    """A torch.save that writes half of the file, then fails, as a crash or full disk would."""

    def save_half(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(half)
        else:
            f.write(half)
        raise OSError(28, "No space left on device (simulated: the save stopped halfway)")

    return save_half


def save_interrupted(path, model, optimizer, monkeypatch) -> BaseException | None:
    with monkeypatch.context() as m:
        m.setattr(torch, "save", interrupted_save(torch.save))
        try:
            checkpoint.save_checkpoint(path, model, optimizer, 2)
        except Exception as exc:  # noqa: BLE001 - the simulated failure, or the learner's
            return exc
    return None


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """If saving fails halfway, the previous checkpoint is still there, whole and loadable."""
    model, optimizer = trained("cpu")
    path = tmp_path / "ckpt.pt"
    save(path, model, optimizer, 1)
    save_interrupted(path, model, optimizer, monkeypatch)
    try:
        epoch, error = torch.load(path, map_location="cpu", weights_only=True)["epoch"], None
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        epoch, error = None, f"{type(exc).__name__}: {str(exc).split('. ')[0]}"
    if error:
        fail(f"A save that failed halfway destroyed the previous checkpoint: loading it now "
             f"raises {error}. Expected the old checkpoint intact: opening the file for "
             f"writing truncates it, so a crash mid-save leaves neither the old checkpoint "
             f"nor the new one.")
    if epoch != 1:
        fail(f"After a failed save the checkpoint says epoch {epoch}; expected the previous "
             f"checkpoint (epoch 1), untouched.")


def test_interrupted_save_raises_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """A failed save reports its error and leaves no half-written file in the folder."""
    model, optimizer = trained("cpu")
    path = tmp_path / "ckpt.pt"
    save(path, model, optimizer, 1)
    error = save_interrupted(path, model, optimizer, monkeypatch)
    if error is None:
        fail("save_checkpoint returned normally although writing the file failed. Expected "
             "the error to reach the caller: training that believes it saved a checkpoint it "
             "does not have loses work at the next crash.")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != path.name)
    if left:
        fail(f"After a failed save the folder holds {left} besides the checkpoint. Expected "
             f"the half-written temporary file to be removed: every crash would leave another "
             f"one behind.")


def refuse_new_files(folder: Path, monkeypatch) -> None:
    """Make every open() of a file in ``folder`` fail with PermissionError, as in a folder the
    user may not write to (chmod cannot show it: the tests may run as root)."""
    folder = folder.resolve()

    def refused(file) -> bool:
        return (isinstance(file, (str, os.PathLike))
                and Path(os.path.realpath(file)).parent == folder)

    def guard(real):
        def opener(file, *args, **kwargs):
            if refused(file):
                raise PermissionError(errno.EACCES, "Permission denied (simulated)", str(file))
            return real(file, *args, **kwargs)
        return opener

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))
    monkeypatch.setattr(os, "open", guard(os.open))


def test_save_that_cannot_start_reports_why(tmp_path, monkeypatch):
    """When not even the temporary file can be created, the caller gets that error itself."""
    model, optimizer = trained("cpu")
    folder = tmp_path / "read-only"
    folder.mkdir()
    with monkeypatch.context() as m:
        refuse_new_files(folder, m)
        try:
            checkpoint.save_checkpoint(folder / "ckpt.pt", model, optimizer, 1)
            error = None
        except Exception as exc:  # noqa: BLE001 - which error arrives is the finding
            error = exc
    if not isinstance(error, PermissionError):
        seen = f"{type(error).__name__}: {error}" if error else "no error"
        fail(f"save_checkpoint into a folder where no file may be created gave {seen}. "
             f"Expected the PermissionError that stopped the save: cleaning up after a failure "
             f"must not replace the error that explains it, and the temporary file may not "
             f"exist yet when the failure comes.")


def record_file_operations(monkeypatch) -> list[tuple]:
    """Record os.fsync (with the inode synced) and os.replace / os.rename calls, in order."""
    events: list[tuple] = []
    for name in ("fsync", "replace", "rename"):
        real = getattr(os, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            if _name == "fsync":
                fd = args[0] if isinstance(args[0], int) else args[0].fileno()
                events.append(("fsync", os.fstat(fd).st_ino))
            else:
                events.append((_name, Path(args[0]).resolve(), Path(args[1]).resolve()))
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapper)
    return events


def renames_onto(events, path) -> list[tuple]:
    return [e for e in events if e[0] in ("replace", "rename") and e[2] == path.resolve()]


def test_save_renames_a_temporary_file_from_the_same_folder(tmp_path, monkeypatch):
    """The checkpoint appears by renaming a finished file that sits next to it."""
    model, optimizer = trained("cpu")
    path = tmp_path / "ckpt.pt"
    events = record_file_operations(monkeypatch)
    save(path, model, optimizer, 1)
    moves = renames_onto(events, path)
    if not moves:
        fail("save_checkpoint wrote the checkpoint file directly. Expected it to write a "
             "temporary file and then rename it onto the checkpoint's name with os.replace: a "
             "rename is atomic, a write is not.")
    if moves[-1][1].parent != path.resolve().parent:
        fail(f"The temporary file was written in {moves[-1][1].parent}, not in the "
             f"checkpoint's folder. A rename is atomic only within one file system, and "
             f"another folder (such as /tmp) may be on another one.")


def test_save_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """The temporary file is flushed and fsync'ed before it is renamed onto the checkpoint."""
    model, optimizer = trained("cpu")
    path = tmp_path / "ckpt.pt"
    events = record_file_operations(monkeypatch)
    save(path, model, optimizer, 1)
    moves = renames_onto(events, path)
    inode = path.stat().st_ino
    synced = [i for i, e in enumerate(events) if e == ("fsync", inode)]
    if not moves or not synced or synced[0] > events.index(moves[-1]):
        fail("The checkpoint's bytes were not forced to disk (os.fsync on the temporary "
             "file, after flushing Python's buffer) before the rename. Expected fsync first: "
             "after a power cut, the file system may otherwise keep the new name pointing at "
             "a file whose contents never reached the disk.")


# --- the script: python train.py -------------------------------------------------------------


def test_script_help_says_what_it_does():
    """`python train.py --help` describes the script with its docstring's first line."""
    assert_help_opens_with_summary(train.resolve(), "train.py")


def exits_cleanly(argv: list[str]) -> str:
    """Run train.main(argv); '' if it ends in SystemExit(non-zero), else what it did."""
    return how_script_ended(train.main, argv)


def test_script_rejects_nonsense_arguments(tmp_path, monkeypatch):
    """Counts must be positive, the learning rate too, and devices real."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop without a GPU
    path = tmp_path / "ckpt.pt"
    for bad in ("--epochs 0", "--epochs -3", "--batch_size 0", "--lr 0", "--lr -0.1",
                "--device gpu", "--device cuda"):
        # shlex gives new strings, as sys.argv holds them (not the interned literals of a file)
        problem = exits_cleanly(["--checkpoint", str(path), "--device", "cpu", *shlex.split(bad)])
        if problem or path.exists():
            fail(f"`python train.py {bad}` {problem or 'wrote a checkpoint'}. Expected "
                 f"argparse to refuse it with one line and a non-zero exit before training: "
                 f"epochs and batch size are at least 1, the learning rate is positive, and "
                 f"--device is cpu or cuda, cuda only where a GPU exists.")


def test_script_defaults_reach_the_training(tmp_path, monkeypatch):
    """With no options (as --help shows), train.py fits make_model() with Adam at lr 0.01 for 6
    epochs on shuffled batches of 32 of make_data(seed=0), on the CPU of a machine without a
    GPU; --fresh with no checkpoint yet, and a checkpoint folder that does not exist, are fine."""
    module = train.resolve()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop without a GPU
    blobs = TensorDataset(*data.blobs(n=20, classes=3, seed=0))
    seeds, runs = [], []
    signature = inspect.signature(module.fit)
    monkeypatch.setattr(module, "make_data", lambda seed=0: seeds.append(seed) or blobs)
    monkeypatch.setattr(module, "fit", lambda *args, **kwargs: runs.append(
        signature.bind(*args, **kwargs).arguments) or [])  # records the run instead of training
    path = tmp_path / "new" / "runs" / "ckpt.pt"  # folders that do not exist yet
    call(train.main, ["--checkpoint", str(path), "--fresh"],
         what="train.main(['--checkpoint', PATH, '--fresh']) (no checkpoint there yet)",
         why="--fresh deletes a checkpoint if there is one, and the script creates the "
             "checkpoint's folder.")
    if len(runs) != 1:
        fail(f"train.main() called fit {len(runs)} times; expected once.")
    run = runs[0]
    optimizer, loader = run.get("optimizer"), run.get("loader")
    with torch.no_grad():
        outputs = tuple(run["model"].cpu()(torch.zeros(1, 2)).shape) if "model" in run else None
    found = {"epochs": run.get("epochs"), "device": str(run.get("device")),
             "lr": [g["lr"] for g in getattr(optimizer, "param_groups", [])],
             "batch_size": getattr(loader, "batch_size", None),
             "shuffled": isinstance(getattr(loader, "sampler", None), RandomSampler),
             "data seed": seeds, "model output": outputs}
    expected = {"epochs": 6, "device": "cpu", "lr": [0.01], "batch_size": 32, "shuffled": True,
                "data seed": [0], "model output": (1, 3)}
    wrong = {k: v for k, v in found.items() if v != expected[k]}
    if wrong:
        fail(f"`python train.py` with no options trained with {wrong}; expected "
             f"{ {k: expected[k] for k in wrong} }. The defaults that --help shows are the run "
             f"a learner compares with (3 classes of points in the plane, 6 epochs, Adam at "
             f"lr 0.01, shuffled batches of 32, seed 0, the CPU where there is no GPU).")
    if not path.parent.is_dir():
        fail(f"train.py did not create the checkpoint's folder {path.parent}.")


@requires("test_load_explains_a_file_that_is_not_a_checkpoint")
def test_script_explains_a_checkpoint_it_cannot_resume_from(tmp_path, monkeypatch):
    """`python train.py` with a damaged checkpoint ends with one clear line, not a traceback."""
    blobs = TensorDataset(*data.blobs(n=20, classes=3, seed=0))
    monkeypatch.setattr(train.resolve(), "make_data", lambda seed=0: blobs)  # skip sklearn
    path = tmp_path / "ckpt.pt"
    path.write_text("not a checkpoint\n")
    problem = exits_cleanly(["--checkpoint", str(path), "--device", "cpu", "--epochs", "1"])
    if problem:
        fail(f"`python train.py` with a damaged checkpoint file {problem}. Expected one line "
             f"that names the file and what to do (delete it, or --fresh) and a non-zero exit: "
             f"a damaged file is an expected mistake, not a bug in the tool.")


@trains
@requires("test_resume_runs_only_the_remaining_epochs")
def test_script_resumes_from_runs_and_says_where(tmp_path, capsys, monkeypatch):
    """`train.py` checkpoints into runs/ by default, resumes from it, and --fresh starts over."""
    module = train.resolve()
    default = Path(module.Config().checkpoint)
    if default.parent != Path(module.__file__).resolve().parent / "runs":
        fail(f"train.py's default checkpoint is {default}; expected a file in the runs/ folder "
             f"beside train.py, so that a run resumes whatever folder it is started from.")
    blobs = TensorDataset(*data.blobs(n=20, classes=3, seed=0))
    monkeypatch.setattr(module, "make_data", lambda seed=0: blobs)  # skip sklearn
    path = tmp_path / "ckpt.pt"
    runs = {}
    for name, extra in (("first", ["--epochs", "2"]), ("resumed", ["--epochs", "3"]),
                        ("fresh", ["--epochs", "1", "--fresh"])):
        call(train.main, ["--checkpoint", str(path), "--device", "cpu", *extra],
             what=f"train.main([... {' '.join(extra)}])")
        runs[name] = capsys.readouterr().out
    epochs = {name: re.findall(r"epoch (\d+)/", out) for name, out in runs.items()}
    if epochs != {"first": ["1", "2"], "resumed": ["3"], "fresh": ["1"]}:
        fail(f"`train.py --epochs 2`, then `--epochs 3`, then `--epochs 1 --fresh` printed the "
             f"epochs {epochs}; expected 1 and 2, then only 3 (resumed), then 1 (started over).")
    if str(path.resolve()) not in runs["first"] and str(path) not in runs["first"]:
        fail(f"`train.py` did not print where it saved the checkpoint; it printed:\n"
             f"{runs['first'][-300:]}")


@trains
def test_script_data_is_the_documented_blobs():
    """make_data(seed) is make_blobs(n_samples=600, centers=3, cluster_std=2.0,
    random_state=seed) as the README states, with seed 0 by default, like --seed."""
    from sklearn.datasets import make_blobs

    for args in ((), (5,)):
        x, y = make_blobs(n_samples=600, centers=3, cluster_std=2.0,
                          random_state=args[0] if args else 0)
        got = call(train.make_data, *args, what=f"make_data({', '.join(map(str, args))})")
        tensors = getattr(got, "tensors", ())
        if (len(tensors) != 2 or tensors[0].shape != x.shape
                or not torch.equal(tensors[0], torch.from_numpy(x).float())
                or not torch.equal(tensors[1], torch.from_numpy(y).long())):
            shapes = [tuple(t.shape) for t in tensors]
            fail(f"make_data({', '.join(map(str, args))}) gave tensors of shapes {shapes} that "
                 f"differ from make_blobs(n_samples=600, centers=3, cluster_std=2.0, "
                 f"random_state={args[0] if args else 0}). The README states the data "
                 f"train.py learns from, seed 0 unless --seed says otherwise: the losses a "
                 f"learner compares between runs, and with the figures quoted, depend on it.")


@trains
@requires("test_script_help_says_what_it_does")
def test_script_runs_when_started_as_a_file(capsys):
    """`python train.py --help` runs main(): the guard at the end of the file lets it."""
    ended = run_as_main(train.resolve().__file__, ["--help"])
    out = capsys.readouterr().out
    if ended == "returned" or "--fresh" not in out:
        fail(f"`python train.py --help` {ended} and printed {out[:200]!r}; expected the help. "
             f"Run as a file, a script's module is named '__main__', and the block at its end "
             f"decides whether main() runs.")


@trains
@requires("test_script_runs_when_started_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    train.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(train.resolve().__file__, "train.py")
