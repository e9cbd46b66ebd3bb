"""Exercise 12: data-parallel training with torch.distributed and DistributedDataParallel.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.

The first tests call single functions in this process. The tests marked ``trains`` look at
one real run of ``train.run()`` by two processes (ranks 0 and 1) on this machine, joined by
a gloo process group on the loopback address (127.0.0.1) and a port that was free when the
run started; one test looks at a one-epoch run of a single rank. Every wait has a limit:
the process group's own timeout, and a deadline after which the test kills any rank still
running, so a broken run fails with a message instead of hanging.

How the ranks start: torch.multiprocessing with the "fork" start method. Measured on a
2-core machine, starting two ranks and joining a group took 0.07 s with fork, 1.8 to 2.1 s
with spawn (each rank imports torch again) and 1.4 s the first time with forkserver. fork is
safe here: this process holds no process group, the ranks never touch CUDA, and the one
thing fork breaks on this build, an OpenMP thread pool the parent has used, is avoided by
giving each rank a single thread. (train.py's own launcher uses spawn, which works on
every OS.)
"""

import contextlib
import datetime
import faulthandler
import importlib.util
import inspect
import io
import os
import pickle
import re
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from torchkata import under_test
from torchkata.checks import (
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    run_as_main,
)

ddp = under_test("ddp")
train = under_test("train")

WORLD_SIZE = 2
EPOCHS = 3
BATCH = 64  # per rank: 512 training points / 2 ranks / 64 = 4 steps per epoch
GROUP_TIMEOUT = 15.0  # seconds a rank waits in a collective before it raises
DEADLINE = 40.0  # seconds the whole run may take before the test kills the ranks
LOOPBACK = "127.0.0.1"
LOOPBACK_INTERFACE = "lo0" if sys.platform == "darwin" else "lo"


class Recording(Dataset):
    """A data set that notes the index of every sample it hands out, in order."""

    def __init__(self, dataset: Dataset, seen: list[int]) -> None:
        self.dataset, self.seen = dataset, seen

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        self.seen.append(int(index))
        return self.dataset[index]


class NoStep:
    """Stands in for an optimizer that never changes the weights (and costs no import)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self, closure=None) -> None:
        pass


def indices(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def loaded(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


# --- sharding and shuffling, in this process ------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 4])
def test_each_rank_loads_its_own_shard_and_the_shards_cover_the_data(world_size):
    """make_loader(rank, world_size): disjoint shards of equal size that cover the data set."""
    n = 12 * world_size
    shards = [call(ddp.make_loader, indices(n), 5, rank, world_size,
                   what=f"make_loader(dataset of {n}, batch_size=5, rank={rank}, "
                        f"world_size={world_size})")
              for rank in range(world_size)]
    seen = [loaded(loader) for loader in shards]
    for rank, got in enumerate(seen):
        if len(got) == n:
            fail(f"With world_size={world_size}, rank {rank}'s loader yields all {n} samples of "
                 f"the data set. Expected its shard of {n // world_size}: when every rank "
                 f"trains on the whole data set, {world_size} processes repeat the same work "
                 f"and one 'epoch' goes over the data {world_size} times.")
        if len(got) != n // world_size or len(set(got)) != len(got):
            fail(f"With world_size={world_size}, rank {rank}'s loader yields {len(got)} "
                 f"samples ({len(set(got))} different ones); expected a shard of "
                 f"{n // world_size} different samples.")
    for a in range(world_size):
        for b in range(a + 1, world_size):
            shared = set(seen[a]) & set(seen[b])
            if shared:
                fail(f"Ranks {a} and {b} both load the samples {sorted(shared)[:6]}... "
                     f"({len(shared)} in all). Expected disjoint shards: every rank must draw "
                     f"its shard from the same shuffled order (the same seed), or the shards "
                     f"overlap and some samples are never seen.")
    missing = set(range(n)) - {i for got in seen for i in got}
    if missing:
        fail(f"No rank loads the samples {sorted(missing)[:6]}: the shards must cover the "
             f"data set.")


@pytest.mark.requires("test_each_rank_loads_its_own_shard_and_the_shards_cover_the_data")
def test_make_loader_shuffles_only_when_asked():
    """shuffle=True: the seed decides a shuffled order; shuffle=False: the shard in order."""

    def order(**options) -> list[int]:
        args = ", ".join(f"{k}={v}" for k, v in options.items())
        return loaded(call(ddp.make_loader, indices(40), 5, 0, 2, **options,
                           what=f"make_loader(dataset of 40, 5, rank=0, world_size=2, {args})"))

    kept = order(shuffle=False)
    if kept != sorted(kept):
        fail("make_loader(..., shuffle=False) yields rank 0's shard out of order. Expected "
             "the order of the data set: validation and test loaders do not shuffle.")
    first, second = order(shuffle=True, seed=0), order(shuffle=True, seed=1)
    if first == sorted(first):
        fail("make_loader(..., shuffle=True) yields rank 0's shard in the order of the data "
             "set. Expected a shuffled order: batches in a fixed order train worse.")
    if first == second:
        fail("make_loader(..., shuffle=True) yields the same order with seed=0 and seed=1. "
             "Expected the seed to decide the shuffle (and so to make a run repeatable).")
    if order() != first:
        fail("make_loader(dataset, 5, rank=0, world_size=2) yields another order than with "
             "shuffle=True, seed=0; expected those documented defaults: a training loader "
             "shuffles unless told otherwise, repeatably.")


def test_each_epoch_visits_the_shard_in_a_new_order():
    """train_one_epoch(..., epoch) shuffles differently in epochs 0, 1 and 2."""
    x = torch.linspace(-1, 1, 64).unsqueeze(1)  # (64, 1)
    y = (x[:, 0] > 0).long()
    seen: list[int] = []
    data = Recording(TensorDataset(x, y), seen)
    loader = DataLoader(data, batch_size=8,
                        sampler=DistributedSampler(data, num_replicas=2, rank=0, seed=0))
    model, optimizer = nn.Linear(1, 2), NoStep()  # only the order of the samples matters
    orders = []
    for epoch in range(3):
        seen.clear()
        call(train.train_one_epoch, model, loader, optimizer, epoch,
             what=f"train_one_epoch(model, loader, optimizer, epoch={epoch})")
        orders.append(list(seen))
    for a, b in ((0, 1), (1, 2)):
        if orders[a] == orders[b]:
            fail(f"train_one_epoch visited the samples of its shard in exactly the same order "
                 f"in epochs {a} and {b} (a loader with a DistributedSampler, shuffle=True). "
                 f"Expected a new order each epoch: DistributedSampler shuffles with its seed "
                 f"plus the epoch it was told, the same on every rank, and it cannot know the "
                 f"epoch unless it is told. The same order every epoch trains worse.")


def test_train_one_epoch_returns_the_mean_loss_over_the_shards_samples():
    """train_one_epoch returns the mean cross-entropy per sample of the shard, not per batch."""
    x = torch.linspace(-1, 1, 44).unsqueeze(1)  # (44, 1): a shard of 22, batches 8, 8 and 6
    y = (x[:, 0] > 0.3).long()
    data = TensorDataset(x, y)
    loader = DataLoader(data, batch_size=8,
                        sampler=DistributedSampler(data, num_replicas=2, rank=1, seed=0))
    torch.manual_seed(0)
    model = nn.Linear(1, 2)  # NoStep: the weights stay put, so every batch's loss is known
    got = call(train.train_one_epoch, model, loader, NoStep(), 0,
               what="train_one_epoch(model, loader, optimizer, epoch=0)")
    shard = list(loader.sampler)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x[shard]), y[shard]).item()
    if not isinstance(got, float) or abs(got - expected) > 1e-5:
        fail(f"train_one_epoch on a shard of 22 samples in batches of 8, 8 and 6 returned "
             f"{got!r}; expected {expected:.5f}, the mean loss per sample of the shard (each "
             f"batch's mean loss weighted by its size): a plain number, comparable between "
             f"epochs and batch sizes.")


def test_make_data_is_four_blobs_at_the_corners_of_a_square():
    """make_data(): 512 + 256 points of 4 classes, blob k centred at (+-2, +-2), spread 1."""
    train_set, val_set = call(train.make_data, 0, what="make_data(0)")
    x = torch.cat([train_set.tensors[0], val_set.tensors[0]])
    y = torch.cat([train_set.tensors[1], val_set.tensors[1]])
    if (len(train_set), len(val_set)) != (512, 256) or tuple(x.shape) != (768, 2):
        fail(f"make_data() gave {len(train_set)} training and {len(val_set)} validation points "
             f"of shape {tuple(x.shape[1:])}; expected 512 and 256 points in the plane (2,).")
    centres = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])
    for k, centre in enumerate(centres):
        blob = x[y == k]
        mean, spread = blob.mean(dim=0), blob.std(dim=0)
        if (len(blob) < 150 or (mean - centre).abs().max() > 0.3
                or (spread - 1).abs().max() > 0.15):
            fail(f"Class {k} of make_data() has {len(blob)} points centred at "
                 f"{[round(v, 2) for v in mean.tolist()]} with spread "
                 f"{[round(v, 2) for v in spread.tolist()]}; expected about a quarter of the "
                 f"768 points around {centre.tolist()} with spread 1 in each direction: four "
                 f"blobs at the corners of a square that overlap a little, so that accuracy "
                 f"says how well the model draws the boundaries.")
    noise = x - centres[y]  # (768, 2)
    correlation = torch.corrcoef(noise.T)[0, 1].item()
    if abs(correlation) > 0.2:
        fail(f"The two coordinates of make_data()'s points scatter around their centres with a "
             f"correlation of {correlation:.2f}; expected independent noise in each direction "
             f"(about 0): round blobs, not streaks along a diagonal.")
    again = call(train.make_data, what="make_data()")
    if not torch.equal(again[1].tensors[0], val_set.tensors[0]):
        fail("make_data() and make_data(0) give different points; expected the same: the "
             "default seed is 0, so that every rank (and every run) builds the same data.")
    model = call(train.make_model, what="make_model()")
    logits = call(model, x[:5], what="make_model()(points (5, 2))")
    if tuple(logits.shape) != (5, 4):
        fail(f"make_model() maps 5 points (5, 2) to logits of shape {tuple(logits.shape)}; "
             f"expected (5, 4), one logit per class of make_data().")


@pytest.mark.requires("test_make_data_is_four_blobs_at_the_corners_of_a_square")
def test_make_data_draws_the_points_the_readme_describes():
    """make_data(seed): labels, then offsets from the centres, from one generator seeded seed."""
    centres = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])
    for seed in (0, 1):
        train_set, val_set = call(train.make_data, seed, what=f"make_data({seed})")
        x = torch.cat([train_set.tensors[0], val_set.tensors[0]])  # (768, 2)
        y = torch.cat([train_set.tensors[1], val_set.tensors[1]])  # (768,)
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(4, (768,), generator=g)
        offsets = torch.randn(768, 2, generator=g)
        if not torch.equal(y, labels):
            fail(f"make_data({seed}) labels its points differently from the README's draw "
                 f"(torch.randint(4, (768,)) from a torch.Generator seeded {seed}) at "
                 f"{(y != labels).sum().item()} of 768 points. Expected the documented data "
                 f"set: every rank builds its own copy, and the copies must agree point for "
                 f"point, run after run.")
        diff = (x - centres[y] - offsets).abs().max().item()
        if diff > 1e-6:
            fail(f"make_data({seed}) places its points up to {diff:.2f} away from where the "
                 f"README's draw puts them (each label's centre plus the offset "
                 f"torch.randn(768, 2) draws next from the same generator). Expected the "
                 f"documented points: the same points on every rank and in every run, so that "
                 f"runs can be compared and the README's description holds.")


def test_make_model_is_the_documented_mlp():
    """make_model(): 2 -> 32 -> 4, one hidden layer; its knobs set each width."""
    for args, (inp, hidden, out) in (((), (2, 32, 4)), ((3, 5, 6), (3, 5, 6))):
        model = call(train.make_model, *args, what=f"make_model{args}")
        got = [tuple(p.shape) for p in model.parameters()]
        expected = [(hidden, inp), (hidden,), (out, hidden), (out,)]
        if got != expected:
            fail(f"make_model{args} has parameters of shapes {got}; expected {expected}: an "
                 f"MLP {inp} -> {hidden} -> {out} (in_features -> hidden -> num_classes, with "
                 f"the defaults the README states). The width is part of the model: a "
                 f"checkpoint loads only into a model of the same shapes.")


def test_loopback_interface_exists_on_this_machine():
    """ddp.LOOPBACK_INTERFACE is this machine's loopback ('lo' on Linux, 'lo0' on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    if ddp.LOOPBACK_INTERFACE not in names:
        fail(f"ddp.LOOPBACK_INTERFACE is {ddp.LOOPBACK_INTERFACE!r}, but this machine "
             f"({sys.platform}) has the interfaces {names}. gloo binds its connections to the "
             f"interface named in GLOO_SOCKET_IFNAME: one that does not exist stops the launch "
             f"before the first rank connects.")


@pytest.mark.requires("test_loopback_interface_exists_on_this_machine")
def test_loopback_interface_is_lo0_on_macos_and_lo_on_linux(monkeypatch):
    """ddp.py imported where sys.platform is 'darwin' names 'lo0'; where it is 'linux', 'lo'."""
    path = Path(ddp.resolve().__file__)
    for platform, expected in (("darwin", "lo0"), ("linux", "lo")):
        spec = importlib.util.spec_from_file_location(f"ddp_on_{platform}", path)
        module = importlib.util.module_from_spec(spec)
        with monkeypatch.context() as patch:
            # a str made at run time, as the interpreter's sys.platform is (not a literal)
            patch.setattr(sys, "platform", platform.encode().decode())
            call(spec.loader.exec_module, module,
                 what=f"importing ddp.py where sys.platform is {platform!r}")
        if module.LOOPBACK_INTERFACE != expected:
            fail(f"Imported where sys.platform is {platform!r}, ddp.py sets LOOPBACK_INTERFACE "
                 f"to {module.LOOPBACK_INTERFACE!r}; expected {expected!r}, that system's "
                 f"name for the loopback interface. gloo binds to the interface in "
                 f"GLOO_SOCKET_IFNAME: a name the system does not have stops every launch "
                 f"there before the first rank connects.")


def test_free_port_is_one_the_os_picked_and_nothing_holds():
    """free_port() returns a port number (1024..65535) that a new socket can listen on."""
    port = call(ddp.free_port, what="free_port()")
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        fail(f"free_port() returned {port!r}; expected a port number that the OS picked from "
             f"its free ports (binding to port 0 asks for one): an unprivileged port above "
             f"1023, for MASTER_PORT.")
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError as exc:
            fail(f"free_port() returned {port}, but binding a new socket to it failed ({exc}); "
                 f"expected a port that nothing holds once free_port() returns, so that rank "
                 f"0 can listen on it.")


def test_setup_joins_the_group_with_the_given_time_limit(monkeypatch):
    """setup(timeout_s) hands the group timeout_s seconds (60 by default); returns (rank, size)."""
    joined, signature = [], inspect.signature(dist.init_process_group)
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kwargs: joined.append(
        signature.bind(*args, **kwargs).arguments))
    monkeypatch.setattr(dist, "get_rank", lambda *args, **kwargs: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda *args, **kwargs: 2)
    for args, seconds in (((), 60.0), ((2.5,), 2.5)):
        joined.clear()
        what = f"setup({', '.join(map(str, args))})"
        got = call(ddp.setup, *args, what=what + " (init_process_group replaced by a stub)")
        if got != (1, 2):
            fail(f"{what} returned {got!r} where the group says rank 1 of 2; expected (1, 2), "
                 f"(rank, world_size).")
        timeout = joined[-1].get("timeout") if joined else None
        if timeout != datetime.timedelta(seconds=seconds):
            which = "the number it was given" if args else "the documented default, as --timeout's"
            fail(f"{what} joined the process group with timeout={timeout!r}; expected "
                 f"{seconds:g} seconds, {which}. "
                 f"Every collective call waits that long for the other ranks before it "
                 f"raises: the limit that turns a hang into an error.")


class Wrapped(DistributedDataParallel):
    """A DistributedDataParallel wrapper that needs no process group: only its ``module``."""

    def __init__(self, module: nn.Module) -> None:
        nn.Module.__init__(self)  # DDP's own __init__ would join the process group
        self.module = module


def test_save_checkpoint_creates_its_folder_and_overwrites(tmp_path):
    """save_checkpoint(wrapper, DIR/a/b/model.pt) creates the folders, and saves again over it."""
    torch.manual_seed(0)
    model = train.make_model()
    path = tmp_path / "a" / "b" / "model.pt"
    for attempt in ("first", "second"):
        call(ddp.save_checkpoint, Wrapped(model), path,
             what=f"save_checkpoint(model, {path.relative_to(tmp_path)}) ({attempt} time)",
             why="Expected it to create the missing folders, and to overwrite the file of an "
                 "earlier run, so that the script works in a fresh checkout and when run twice.")
    state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or set(state) != set(model.state_dict()):
        fail(f"save_checkpoint wrote {type(state).__name__} with keys "
             f"{list(state)[:3] if isinstance(state, dict) else '-'}; expected the wrapped "
             f"model's own state_dict, {list(model.state_dict())[:3]}...")


BAD_ARGUMENTS = [["--nproc", "0"], ["--epochs", "0"], ["--batch-size", "-2"], ["--lr", "0"],
                 ["--lr", "-0.1"], ["--timeout", "0"], ["--timeout", "-1"]]


def test_script_help_says_what_it_does():
    """`python train.py --help` describes the script with its docstring's first line."""
    assert_help_opens_with_summary(train.resolve(), "train.py")


def test_script_launches_with_the_documented_defaults(monkeypatch):
    """python train.py starts 2 ranks of Config(); under torchrun (RANK set) it runs one rank."""
    started = []
    module = train.resolve()
    monkeypatch.setattr(module, "launch", lambda nproc, cfg: started.append(("launch", nproc, cfg)))
    monkeypatch.setattr(module, "run", lambda cfg: started.append(("run", None, cfg)))
    monkeypatch.delenv("RANK", raising=False)
    call(train.main, [], what="train.main([])")
    expected = ("launch", 2, module.Config(epochs=5, batch_size=32, lr=0.1, seed=0, timeout=60.0,
                                           out=module.RUNS))
    if started != [expected]:
        fail(f"python train.py (no RANK in the environment) did {started}; expected "
             f"{[expected]}: it starts its own 2 ranks with the documented defaults (5 epochs, "
             f"batches of 32 per rank, lr 0.1, seed 0, a timeout of 60 s).")
    started.clear()
    argv = ["--nproc", "1", "--epochs", "1", "--batch-size", "7", "--timeout", "0.5"]
    call(train.main, argv, what=f"train.main({argv})")
    if [(kind, n, cfg.epochs, cfg.batch_size, cfg.timeout) for kind, n, cfg in started] != [
            ("launch", 1, 1, 7, 0.5)]:
        fail(f"python train.py {' '.join(argv)} did {started}; expected one launch of 1 rank "
             f"with 1 epoch, batches of 7 and a timeout of 0.5 s: any whole number from 1 and "
             f"any positive timeout are valid.")
    started.clear()
    monkeypatch.setenv("RANK", "0")
    call(train.main, ["--epochs", "1"], what="train.main(['--epochs', '1']) with RANK=0")
    if [kind for kind, _, _ in started] != ["run"]:
        fail(f"Under torchrun (RANK=0 in the environment), train.py did {started}; expected "
             f"run(cfg) in this process: torchrun has started the ranks already.")


def test_script_rejects_bad_arguments(capsys, monkeypatch):
    """python train.py --nproc 0 (and other nonsense) stops at once with a one-line error."""
    started = []
    monkeypatch.setattr(train.resolve(), "launch", lambda *args: started.append("launch"))
    monkeypatch.setattr(train.resolve(), "run", lambda *args: started.append("run"))
    for argv in BAD_ARGUMENTS:
        command = "python train.py " + " ".join(argv)
        try:
            train.main(argv)
        except SystemExit as exc:
            if exc.code in (0, None):
                fail(f"{command} exited with status 0; expected a non-zero status.")
        else:
            fail(f"{command} went on to {' and '.join(started) or 'the end'}; expected it to "
                 f"refuse the argument with a one-line error and a non-zero exit before "
                 f"starting any process.")
        if "error" not in capsys.readouterr().err:
            fail(f"{command} exited without saying why on stderr.")


def test_script_runs_main_when_started_as_a_file(capsys):
    """`python train.py --nproc 0` reaches main(): its argument check ends the run (code 2)."""
    ended = run_as_main(train.resolve().__file__, ["--nproc", "0"])
    capsys.readouterr()
    if ended == "returned":
        fail("python train.py --nproc 0 ended without an error: main() never ran. Run as a "
             "file, a script's module is named '__main__', and the block at its end decides "
             "whether main() runs.")
    if ended != "exited with status 2":
        fail(f"python train.py --nproc 0 {ended}; expected status 2, the usage error of "
             f"main()'s argument check.")


@pytest.mark.requires("test_script_runs_main_when_started_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    train.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(train.resolve().__file__, "train.py")


# --- one real run of two ranks (and one of a single rank) -------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def describe(exc: BaseException, folder: Path) -> str:
    """The error's type and first line, and the last line of the code under test that ran."""
    first = (str(exc).splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first[:200]}{'...' if len(first) > 200 else ''}"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve().parent == folder:
            return f"{text}\n  at {Path(frame.filename).name}:{frame.lineno}: {frame.line}"
    return text


def where(stack_file: Path, folder: Path) -> str:
    """From a faulthandler dump (innermost frame first): the code under test's line."""
    if not stack_file.exists():
        return ""
    for line in stack_file.read_text(errors="replace").splitlines():
        line = line.strip()  # File "/path/train.py", line 80 in evaluate
        if line.startswith('File "') and '", line ' in line:
            path, rest = line[6:].split('", line ', 1)
            if Path(path).resolve().parent == folder:
                number, _, function = rest.partition(" in ")
                return f"{Path(path).name}:{number} (in {function})"
    return ""


class Printed(io.StringIO):
    """A rank's stdout: also notes how much had been written at each flush()."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed_at: list[int] = []

    def flush(self) -> None:
        self.flushed_at.append(len(self.getvalue()))
        super().flush()


def rank_main(rank: int, port: int, folder: Path, out: Path, world_size: int,
              epochs: int) -> None:
    """One rank, in a forked process: run train.run() and record what it did to out/."""
    torch.set_num_threads(1)  # the parent's OpenMP threads do not exist in a forked child
    os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      GLOO_SOCKET_IFNAME=LOOPBACK_INTERFACE)
    stack = open(out / f"stack{rank}.txt", "w")  # noqa: SIM115 - open until the process ends
    faulthandler.enable(file=stack)  # a crash (gloo aborts) leaves its stack here
    faulthandler.dump_traceback_later(DEADLINE - 5, file=stack)  # and so does a hang
    faulthandler.register(signal.SIGTERM, file=stack, chain=True)  # and being stopped
    module = train.resolve()
    seen: list[int] = []
    val_seen: list[int] = []
    record: dict = {"steps": [], "saves": [], "seen": seen, "val_seen": val_seen,
                    "forwards": []}
    make_data, make_model = module.make_data, module.make_model

    def recording_data(*args, **kwargs):
        train_set, val_set = make_data(*args, **kwargs)
        return Recording(train_set, seen), Recording(val_set, val_seen)

    def recording_model(*args, **kwargs):  # notes the mode, grad mode and size of each batch
        model = make_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: record["forwards"].append(
            (m.training, torch.is_grad_enabled(), len(inputs[0]))))
        return model

    def params(optimizer):
        return [p for group in optimizer.param_groups for p in group["params"]]

    def before_step(optimizer, args, kwargs):
        batch = seen[sum(len(s["batch"]) for s in record["steps"]):]
        record["steps"].append({
            "batch": list(batch),
            "before": [p.detach().clone() for p in params(optimizer)],
            "grads": [None if p.grad is None else p.grad.detach().clone()
                      for p in params(optimizer)]})

    def after_step(optimizer, args, kwargs):
        record["steps"][-1]["after"] = [p.detach().clone() for p in params(optimizer)]

    real_save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        record["saves"].append(str(f))
        return real_save(obj, f, *args, **kwargs)

    module.make_data, module.make_model = recording_data, recording_model
    register_optimizer_step_pre_hook(before_step)
    register_optimizer_step_post_hook(after_step)
    torch.save = recording_save
    try:
        cfg = module.Config(epochs=epochs, batch_size=BATCH, lr=0.1, seed=0,
                            timeout=GROUP_TIMEOUT, out=out / "runs")
        with contextlib.redirect_stdout(Printed()) as printed:
            try:
                returned = module.run(cfg)
            finally:
                record["printed"] = printed.getvalue()
                record["flushed_at"] = printed.flushed_at
        record["group_left_open"] = dist.is_initialized()
        record["returned"] = ({k: v for k, v in returned.items() if isinstance(v, (int, float))}
                              if isinstance(returned, dict) else repr(returned)[:200])
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        record["error"] = describe(exc, folder)
    torch.save = real_save
    with open(out / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(record, f)
    faulthandler.cancel_dump_traceback_later()
    if "error" in record:
        raise SystemExit(1)
    if dist.is_initialized():
        dist.destroy_process_group()  # leave cleanly, whatever run() did


class Ranks:
    """What each rank recorded, or why the run failed (``problem``)."""

    def __init__(self, records: list[dict | None], problem: str) -> None:
        self.records, self.problem = records, problem

    def check(self) -> list[dict]:
        __tracebackhide__ = True
        if self.problem:
            fail(self.problem)
        return self.records


def start_ranks(out: Path, world_size: int = WORLD_SIZE, epochs: int = EPOCHS) -> Ranks:
    """Run train.run() on forked ranks; wait at most DEADLINE; leave no rank running."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("these tests start their ranks with fork, which this OS does not have")
    folder = Path(train.resolve().__file__).resolve().parent
    ddp.resolve()  # import errors show here, in this process, not in the ranks
    for attempt in range(2):  # a port that was free may be taken before rank 0 listens on it
        run_dir = out / f"attempt{attempt}"
        run_dir.mkdir(parents=True)
        context = mp.start_processes(rank_main,
                                     args=(free_port(), folder, run_dir, world_size, epochs),
                                     nprocs=world_size, join=False, start_method="fork")
        late, deadline = [], time.monotonic() + DEADLINE
        try:
            while not context.join(timeout=0.05, grace_period=1.0):
                if time.monotonic() > deadline:
                    late = [r for r, p in enumerate(context.processes) if p.is_alive()]
                    break
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            pass  # one rank failed and join() stopped the others; the records say more
        finally:
            for process in context.processes:  # no rank outlives the test
                if process.is_alive():
                    process.kill()
                process.join()
        records = []
        for rank in range(world_size):
            path = run_dir / f"rank{rank}.pkl"
            records.append(pickle.loads(path.read_bytes()) if path.exists() else None)
        errors = [rec["error"] for rec in records if rec and "error" in rec]
        if attempt == 0 and any("address already in use" in e.lower() for e in errors):
            continue
        codes = [p.exitcode for p in context.processes]
        return Ranks(records, diagnose(records, codes, late, run_dir, folder))
    raise AssertionError("unreachable")


def diagnose(records: list, codes: list, late: list[int], run_dir: Path, folder: Path) -> str:
    """Why the run failed, root cause first; "" if every rank finished train.run()."""
    on = "two ranks" if len(records) == 2 else f"{len(records)} rank(s)"
    if late:
        waits = ", ".join(f"rank {r} at {where(run_dir / f'stack{r}.txt', folder) or '?'}"
                          for r in late)
        return (f"train.run() did not finish within {DEADLINE:g} s on {on} (it needs about "
                f"a second); the test stopped {waits}. Expected every rank to finish. Note that "
                f"a collective call (all_reduce, barrier, DDP's gradient averaging in backward) "
                f"waits until every rank makes the same call: a rank that skips it, or makes "
                f"another call instead, leaves the others waiting.")
    found = []
    for rank, (record, code) in enumerate(zip(records, codes)):
        if record is None and code not in (0, -signal.SIGTERM, -signal.SIGKILL):
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            at = where(run_dir / f"stack{rank}.txt", folder)
            found.append(f"rank {rank} died ({how}){' at ' + at if at else ''}. gloo aborts a "
                         f"process when the ranks' collective calls do not match: every rank "
                         f"must make the same calls in the same order")
    for rank, record in enumerate(records):
        if record is not None and "error" in record:
            found.append(f"rank {rank} raised {record['error']}")
    for rank, (record, code) in enumerate(zip(records, codes)):
        at = where(run_dir / f"stack{rank}.txt", folder)
        if found and record is None and code in (-signal.SIGTERM, -signal.SIGKILL) and at:
            found.append(f"rank {rank} was still at {at} when the test stopped it")
    if not found and None in records:
        found.append(f"a rank ended without finishing (exit codes {codes})")
    if found:
        return f"train.run() failed on {on}: " + ";\n".join(found) + "."
    return ""


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Ranks:
    # The first optimizer of a process imports torch._dynamo (seconds): here, once, instead
    # of in each rank.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])
    return start_ranks(tmp_path_factory.mktemp("ranks"))


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> Ranks:
    """train.run() for one epoch on a single rank, as `python train.py --nproc 1` runs it."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # as in ranks(): torch._dynamo once
    return start_ranks(tmp_path_factory.mktemp("one_rank"), world_size=1, epochs=1)


def data_sets():
    return train.resolve().make_data(0)


def plain_model() -> nn.Module:
    return train.resolve().make_model()


def checks(*functions) -> None:
    """Names the code under test that a test checks, for the report of its failure."""


def load_weights(model: nn.Module, tensors: list[torch.Tensor]) -> nn.Module:
    with torch.no_grad():
        for p, t in zip(model.parameters(), tensors):
            p.copy_(t)
    return model


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.trains
@pytest.mark.requires("test_each_rank_loads_its_own_shard_and_the_shards_cover_the_data")
def test_each_epoch_of_a_run_trains_on_every_sample_once(ranks):
    """In train.run() on two ranks, each epoch's batches together hold every sample once."""
    checks(train.run, ddp.make_loader)
    records = ranks.check()
    n = len(data_sets()[0])
    for epoch in range(EPOCHS):
        got = []
        for record in records:
            per_epoch = len(record["seen"]) // EPOCHS
            got += record["seen"][epoch * per_epoch:(epoch + 1) * per_epoch]
        if sorted(got) != list(range(n)):
            fail(f"In epoch {epoch} of a run on two ranks, the ranks trained on {len(got)} "
                 f"samples ({len(set(got))} different ones) of the {n} in the training set. "
                 f"Expected each of the {n} exactly once, half on each rank: run() must give "
                 f"each rank its own shard.")


@pytest.mark.trains
def test_every_rank_holds_the_same_weights_after_each_step(ranks):
    """After every optimizer step, rank 1's weights equal rank 0's."""
    checks(train.run, train.train_one_epoch)
    zero, one = (record["steps"] for record in ranks.check())
    if len(zero) != len(one) or not zero:
        fail(f"Rank 0 took {len(zero)} optimizer steps and rank 1 took {len(one)}; expected "
             f"the same number, more than zero.")
    if max_difference(zero[0]["before"], one[0]["before"]) > 1e-6:
        fail("Before the first step, the ranks' weights differ. Expected the same starting "
             "point on every rank.")
    for step, (a, b) in enumerate(zip(zero, one), 1):
        diff = max_difference(a["after"], b["after"])
        if diff > 1e-6:
            fail(f"After step {step}, the weights on rank 1 differ from those on rank 0 by up "
                 f"to {diff:.2g}. Expected the copies to stay identical: every rank must take "
                 f"the same step, from the gradient averaged over all ranks. Copies that "
                 f"drift apart are several models trained on parts of the data, not one.")


@pytest.mark.trains
@pytest.mark.requires("test_each_rank_loads_its_own_shard_and_the_shards_cover_the_data")
def test_each_step_uses_the_gradient_of_the_whole_global_batch(ranks):
    """Each rank's step uses the gradient of both ranks' batches together, as one process would."""
    checks(train.run, train.train_one_epoch)
    zero, one = (record["steps"] for record in ranks.check())
    x, y = data_sets()[0].tensors
    model = plain_model()
    for step, (a, b) in enumerate(zip(zero, one), 1):
        batch = a["batch"] + b["batch"]
        load_weights(model, a["before"])
        model.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        expected = [p.grad for p in model.parameters()]
        for rank, record in ((0, a), (1, b)):
            if any(g is None for g in record["grads"]):
                fail(f"At step {step} on rank {rank}, a parameter had no gradient when "
                     f"optimizer.step() ran.")
            if max_difference(record["grads"], expected) > 1e-5:
                ratio = (torch.cat([g.flatten() for g in record["grads"]]).norm()
                         / torch.cat([g.flatten() for g in expected]).norm()).item()
                fail(f"At step {step}, the gradient on rank {rank} is not the gradient of the "
                     f"global batch (rank 0's {len(a['batch'])} samples and rank 1's "
                     f"{len(b['batch'])}, as one process would compute it on all of them); "
                     f"its norm is {ratio:.2f} times that one's. DistributedDataParallel "
                     f"averages the ranks' gradients during backward(), when the forward pass "
                     f"went through the wrapper and nothing scales the loss.")


@pytest.mark.trains
@pytest.mark.requires("test_each_rank_loads_its_own_shard_and_the_shards_cover_the_data",
                      "test_every_rank_holds_the_same_weights_after_each_step")
def test_every_rank_reports_the_metrics_of_the_whole_validation_set(ranks):
    """run() returns, on every rank, the loss and accuracy over all the validation data."""
    checks(train.run, train.evaluate)
    records = ranks.check()
    x, y = data_sets()[1].tensors
    model = load_weights(plain_model(), records[0]["steps"][-1]["after"])
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    for rank, record in enumerate(records):
        got = record["returned"]
        if not isinstance(got, dict) or not {"val_loss", "val_accuracy"} <= got.keys():
            fail(f"run() returned {got!r} on rank {rank}; expected a dict with the numbers "
                 f"'val_loss' and 'val_accuracy'.")
        if (abs(got["val_loss"] - loss) > 1e-4 * max(1.0, loss)
                or abs(got["val_accuracy"] - accuracy) > 1e-6):
            fail(f"Rank {rank} reported a validation loss of {got['val_loss']:.4f} and an "
                 f"accuracy of {got['val_accuracy']:.2%}; over the whole validation set "
                 f"({len(y)} points) the final model has a loss of {loss:.4f} and an "
                 f"accuracy of {accuracy:.2%}. Each rank evaluates only its shard: a number "
                 f"computed from one shard describes that shard, not the model. Every rank "
                 f"must report the metric of all the shards together.")


@pytest.mark.trains
def test_validation_runs_the_model_with_autograd_off(ranks):
    """Every forward pass of validation (the model in eval mode) runs with autograd off."""
    checks(train.run, train.evaluate)
    for rank, record in enumerate(ranks.check()):
        grad_modes = [grad for training, grad, _ in record["forwards"] if not training]
        if not grad_modes:
            fail(f"In a run on two ranks, rank {rank} never ran the model in eval mode; "
                 f"expected a validation pass after every epoch, with model.eval().")
        if any(grad_modes):
            fail(f"In a run on two ranks, rank {rank} ran {sum(grad_modes)} of its "
                 f"{len(grad_modes)} validation batches with autograd recording "
                 f"(torch.is_grad_enabled() was True); expected it off, as under "
                 f"@torch.no_grad(). Validation never calls backward: a recorded graph only "
                 f"holds every layer's activations in memory until the batch is done, and "
                 f"DistributedDataParallel prepares a gradient reduction that never comes.")


@pytest.mark.trains
@pytest.mark.requires("test_every_rank_reports_the_metrics_of_the_whole_validation_set")
def test_validation_reads_the_shard_in_order_in_batches_of_128(one_rank):
    """run() on one rank validates the 256 points in their order, in batches of 128 and 128."""
    checks(train.run, ddp.make_loader)
    (record,) = one_rank.check()
    n = len(data_sets()[1])
    order, expected = record["val_seen"], list(range(n))
    sizes = [size for training, _, size in record["forwards"] if not training]
    if order != expected or sizes != [128] * (n // 128):
        shown = f"{order[:6]}{' ...' if len(order) > 6 else ''}"
        fail(f"In a one-epoch run on one rank (python train.py --nproc 1), validation read "
             f"{len(order)} points in the order {shown}, in batches of {sizes}; expected the "
             f"{n} validation points in their order ({expected[:6]} ...), in batches of 128, "
             f"as the README says. Validation learns nothing from an order: shuffling it only "
             f"makes which padded samples a DistributedSampler repeats (when the length does "
             f"not divide by the number of ranks), and the rounding of every sum, depend on a "
             f"seed; its batch size decides its memory and the last digits of its metrics.")


@pytest.mark.trains
def test_only_rank_0_writes_the_checkpoint(ranks):
    """Exactly one torch.save in the whole run, by rank 0."""
    checks(train.run)
    saves = [record["saves"] for record in ranks.check()]
    if saves[1] or len(saves[0]) != 1:
        fail(f"In a run on two ranks, rank 0 called torch.save {len(saves[0])} time(s) and "
             f"rank 1 {len(saves[1])} time(s); expected one checkpoint, written by rank 0. "
             f"The weights are the same on every rank: more writers only write the same file "
             f"at the same moment (and can leave it corrupt), or litter the folder with "
             f"copies.")


@pytest.mark.trains
def test_the_checkpoint_loads_into_a_plain_model(ranks):
    """The checkpoint loads into make_model() (no DDP, no process group) with the final weights."""
    checks(ddp.save_checkpoint)
    records = ranks.check()
    if not records[0]["saves"]:
        fail("Rank 0 wrote no checkpoint (no torch.save call in the whole run).")
    path = Path(records[0]["saves"][-1])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the message names what could not be loaded
        fail(f"torch.load({path.name}, weights_only=True) cannot read the checkpoint: "
             f"{str(exc).splitlines()[0]}. Expected a state_dict: plain tensors by name.")
    model = plain_model()
    expected = list(model.state_dict())
    if not isinstance(state, dict) or list(state) != expected:
        keys = list(state)[:3] if isinstance(state, dict) else type(state).__name__
        fail(f"The checkpoint's keys are {keys}...; a plain model built by make_model() has "
             f"{expected[:3]}... and cannot load it. DistributedDataParallel wraps the model, "
             f"and what it returns names every weight through the wrapper. A checkpoint should "
             f"load into the model itself, in a program that knows nothing of how it was "
             f"trained.")
    model.load_state_dict(state)
    if max_difference(list(model.parameters()), records[0]["steps"][-1]["after"]) > 0:
        fail("The checkpoint does not hold the weights the model had at the end of training.")


@pytest.mark.trains
def test_run_leaves_no_process_group_behind(ranks):
    """When run() returns, torch.distributed.is_initialized() is False on every rank."""
    checks(train.run)
    records = ranks.check()
    open_on = [rank for rank, record in enumerate(records) if record["group_left_open"]]
    if open_on:
        fail(f"After run() returned, the process group was still initialized on rank(s) "
             f"{open_on}. Expected run() to leave the group it joined: its sockets and threads "
             f"stay open until the process ends, and the next init_process_group() in the same "
             f"process fails because a default group already exists.")


@pytest.mark.trains
@pytest.mark.requires("test_every_rank_reports_the_metrics_of_the_whole_validation_set")
def test_only_rank_0_prints_the_metrics_of_each_epoch(ranks):
    """Rank 0 prints 'epoch i/3: validation loss ..., accuracy ...% (2 processes)'; rank 1 not."""
    checks(train.run)
    zero, one = ranks.check()
    pattern = (r"epoch (\d+)/(\d+): validation loss ([\d.]+), accuracy ([\d.]+)% "
               r"\((\d+) processes\)")
    found = re.findall(pattern, zero["printed"])
    got = [(int(e), int(n), int(p)) for e, n, _, _, p in found]
    expected = [(epoch, EPOCHS, WORLD_SIZE) for epoch in range(1, EPOCHS + 1)]
    final = zero["returned"]
    if one["printed"].strip() or got != expected or not isinstance(final, dict) or abs(
            float(found[-1][2]) - final.get("val_loss", -1)) > 1e-4 or abs(
            float(found[-1][3]) - 100 * final.get("val_accuracy", -1)) > 0.051:
        fail(f"In a run of {EPOCHS} epochs on two ranks, rank 0 printed:\n"
             f"{zero['printed'].strip()}\nand rank 1 printed:\n{one['printed'].strip()}\n"
             f"Expected rank 0 alone to print one line per epoch, 'epoch 1/{EPOCHS}: validation "
             f"loss ..., accuracy ...% ({WORLD_SIZE} processes)' counting from 1, the last with "
             f"the metrics run() returns; rank 1 prints nothing: every rank would print the "
             f"same numbers, and N copies of each line bury the one you want.")


@pytest.mark.trains
@pytest.mark.requires("test_only_rank_0_prints_the_metrics_of_each_epoch")
def test_rank_0_flushes_each_line_as_it_prints_it(ranks):
    """Every line rank 0 prints (each epoch's metrics, 'saved ...') is flushed at once."""
    checks(train.run)
    zero = ranks.check()[0]
    end, late = 0, []
    for line in zero["printed"].splitlines(keepends=True):
        end += len(line)
        if end not in zero["flushed_at"]:
            late.append(line.strip())
    if late:
        shown = "\n".join(late)
        fail(f"In a run on two ranks, rank 0 printed these lines without flushing them:\n"
             f"{shown}\nExpected each line to be flushed as it is printed. A rank is a "
             f"process of its own: when its output goes to a pipe or a file (`python train.py "
             f"| tee log`, a cluster's job log), Python buffers it, and the lines show up late, "
             f"all at once at the end, or never if the rank is killed.")
