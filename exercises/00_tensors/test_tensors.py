"""Exercise 00: tensors, views, the numpy bridge, and broadcasting.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import re

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from torchkata import under_test
from torchkata.checks import (
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    run_as_main,
    shell_argv,
)

tensors = under_test("tensors")
distances = under_test("distances")

BROADCAST_HINT = (
    "Broadcasting lines shapes up from the right: a dimension of size 1 stretches to fit, "
    "any other mismatch is an error. Check each line's shape comment against what the line "
    "really computes."
)
FLOAT_DTYPES = (torch.float32, torch.float64)
# PyTorch names the two operands of the one operation that failed "tensor a" and "tensor b".
BROADCAST_ERROR = re.compile(r"size of tensor a \((\d+)\) must match the size of tensor b "
                             r"\((\d+)\) at non-singleton dimension (\d+)")


def same_memory(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()


def points(n: int, d: int, seed: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)


def naive_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The specification, one pair at a time: sum over k of (a[i, k] - b[j, k])^2."""
    rows_a, rows_b = a.double().cpu().tolist(), b.double().cpu().tolist()
    return torch.tensor([[sum((p - q) ** 2 for p, q in zip(u, v)) for v in rows_b]
                         for u in rows_a], dtype=torch.float64).reshape(len(rows_a), len(rows_b))


def retelling_broadcast_errors(fn):
    """``fn``, with PyTorch's broadcasting error retold in terms of the learner's function.

    PyTorch's message says "the size of tensor a (3) must match the size of tensor b (2)":
    its a and b are the two operands of one line inside the function, which a learner reads
    as the function's own arguments a and b.
    """
    def run(*args):
        try:
            return fn(*args)
        except RuntimeError as exc:
            found = BROADCAST_ERROR.search(str(exc))
            if found:
                left, right, dim = found.groups()
                exc.args = (f"two intermediate tensors of one line inside it cannot be "
                            f"broadcast together: along dimension {dim} of that line's result "
                            f"one has size {left} and the other size {right} (PyTorch calls "
                            f"these two operands 'tensor a' and 'tensor b'; they are not the "
                            f"arguments a and b)",)
            raise
    return run


def sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, m = len(a), len(b)
    return call(retelling_broadcast_errors(distances.pairwise_sq_distances), a, b,
                what=f"pairwise_sq_distances(a {tuple(a.shape)}, b {tuple(b.shape)})",
                why=f"The result should be ({n}, {m}): one row per point of a, one column per "
                    f"point of b. {BROADCAST_HINT}")


def tolerance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) rounding budget of the ||a||^2 + ||b||^2 - 2<a, b> formula in a's dtype."""
    eps = 1e-5 if a.dtype == torch.float32 else 1e-12
    a_sq = a.double().cpu().pow(2).sum(dim=1)
    b_sq = b.double().cpu().pow(2).sum(dim=1)
    return eps * (1 + a_sq[:, None] + b_sq[None, :])


shapes = st.integers(1, 12)
dtypes = st.sampled_from(FLOAT_DTYPES)
seeds = st.integers(0, 2**31 - 1)


# --- the numpy bridge ------------------------------------------------------------------


@given(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
       rows=st.integers(1, 5), cols=st.integers(1, 5))
def test_shared_from_numpy_shares_memory(dtype, rows, cols):
    """shared_from_numpy wraps the array's own memory, keeping its dtype: a write shows in both."""
    array = np.arange(rows * cols).reshape(rows, cols).astype(dtype)
    t = call(tensors.shared_from_numpy, array, what=f"shared_from_numpy(a {dtype.__name__} array)")
    if tuple(t.shape) != array.shape:
        fail(f"shared_from_numpy returned shape {tuple(t.shape)} for an array of shape "
             f"{array.shape}; expected the same shape.")
    if t.dtype != torch.from_numpy(array[:0]).dtype:
        fail(f"shared_from_numpy turned a numpy {np.dtype(dtype).name} array into a {t.dtype} "
             f"tensor. Changing the dtype means converting every element, which needs new "
             f"memory: the result can no longer share the array's memory.")
    array[0, 0] = 7
    if t[0, 0].item() != 7:
        fail(f"After array[0, 0] = 7 the tensor from shared_from_numpy still holds "
             f"{t[0, 0].item()} there: it is a copy, not a view of the array's memory. Some ways "
             f"of making a tensor from an ndarray always copy, others never do; the docstring "
             f"promises no copy (for a large image batch a copy costs memory and time, and "
             f"writes through one no longer reach the other).")


def test_to_numpy_accepts_a_tensor_that_requires_grad(device):
    """to_numpy works on a tensor that is part of an autograd graph, on any device."""
    w = torch.linspace(-1, 1, 6, device=device).reshape(2, 3).requires_grad_()
    out = call(tensors.to_numpy, w * 2, what="to_numpy(a tensor that requires grad)",
               why="A tensor in an autograd graph must be taken out of the graph before numpy "
                   "can see its values, and numpy only knows CPU memory.")
    if not isinstance(out, np.ndarray):
        fail(f"to_numpy returned a {type(out).__name__}, expected a numpy.ndarray.")
    if out.shape != (2, 3) or not np.allclose(out, (w * 2).detach().cpu().numpy()):
        fail(f"to_numpy on a (2, 3) tensor returned an array of shape {out.shape} with other "
             f"values than the tensor's; expected the same shape and values.")


class HostOnly(torch.Tensor):
    """Stands in for a GPU tensor on a machine without one: numpy refuses it until it is
    copied to the host (with .cpu() or .to("cpu")), as it refuses a real CUDA tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__array__ or (
                func is torch.Tensor.numpy and not kwargs.get("force", False)):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use "
                            "Tensor.cpu() to copy the tensor to host memory first.")
        out = super().__torch_function__(func, types, args, kwargs)
        if func in (torch.Tensor.cpu, torch.Tensor.to) and isinstance(out, torch.Tensor):
            return out.as_subclass(torch.Tensor).clone()  # now a plain host tensor
        return out


def test_to_numpy_copies_a_gpu_tensor_to_the_host():
    """to_numpy of a GPU tensor (a CPU stand-in that numpy refuses the same way) works."""
    w = torch.linspace(-1, 1, 6).reshape(2, 3).requires_grad_()
    on_gpu = (w * 2).as_subclass(HostOnly)
    out = call(tensors.to_numpy, on_gpu, what="to_numpy(a tensor on a GPU that requires grad)",
               why="(This test runs on the CPU with a tensor that numpy refuses exactly as it "
                   "refuses a CUDA tensor.) numpy only knows host memory: a tensor in GPU "
                   "memory must be copied to the CPU before numpy can see its values. The "
                   "docstring promises that to_numpy accepts a GPU tensor.")
    if not isinstance(out, np.ndarray) or out.shape != (2, 3) or not np.allclose(
            out, (w * 2).detach().numpy()):
        fail("to_numpy on a (stand-in) GPU tensor returned something other than a (2, 3) "
             "numpy array with the tensor's values.")


def test_to_numpy_shares_memory_on_the_cpu():
    """For a CPU tensor, the array from to_numpy is a view of the tensor's memory."""
    t = torch.zeros(3, 4)
    out = call(tensors.to_numpy, t, what="to_numpy(a CPU tensor)")
    t[1, 2] = 5
    if out[1, 2] != 5:
        fail("After t[1, 2] = 5 the array from to_numpy(t) still holds 0 there: it copied the "
             "tensor. On the CPU, numpy and torch can share one block of memory; a copy costs "
             "time and memory and hides later writes. Only a GPU tensor needs copying.")


# --- views -----------------------------------------------------------------------------


@given(b=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5))
def test_channels_last_moves_each_pixel_to_its_place(device, b, c, h, w):
    """to_channels_last(x)[n, i, j, k] == x[n, k, i, j]: same pixels, channel axis last."""
    x = torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w).to(device)
    out = call(tensors.to_channels_last, x,
               what=f"to_channels_last on (B, C, H, W) = {(b, c, h, w)}")
    expected = torch.stack([x[:, k] for k in range(c)], dim=-1)  # (B, H, W, C), channel by channel
    if tuple(out.shape) != (b, h, w, c):
        fail(f"to_channels_last turned (B, C, H, W) = {(b, c, h, w)} into {tuple(out.shape)}, "
             f"expected (B, H, W, C) = {(b, h, w, c)}.")
    if not torch.equal(out.cpu(), expected.cpu()):
        fail(f"to_channels_last returned the right shape {(b, h, w, c)} with the pixels in the "
             f"wrong places: out[n, i, j, k] should be x[n, k, i, j]. Reshaping keeps the "
             f"elements in memory order and only regroups them; it cannot move an axis. The "
             f"image of each channel comes out scrambled.")


def test_channels_last_is_a_view(device):
    """to_channels_last copies nothing: the result shares memory with its input."""
    x = torch.zeros(2, 3, 4, 5, device=device)
    out = call(tensors.to_channels_last, x, what="to_channels_last on (2, 3, 4, 5)")
    if not same_memory(out, x):
        fail("to_channels_last returned a tensor with memory of its own: it copied every pixel. "
             "Reordering axes can be a view (same memory, other strides); a copy costs time "
             "and memory for every batch.")


# --- new tensors that fit old ones ---------------------------------------------------------


@given(n=st.integers(1, 6), d=st.integers(0, 4))
def test_add_bias_column_appends_ones(n, d):
    """add_bias_column turns (N, d) into (N, d + 1): x unchanged, then a column of ones."""
    x = torch.randn(n, d)
    out = call(tensors.add_bias_column, x, what=f"add_bias_column on ({n}, {d})")
    if tuple(out.shape) != (n, d + 1):
        fail(f"add_bias_column on shape ({n}, {d}) returned {tuple(out.shape)}, expected "
             f"({n}, {d + 1}).")
    if not (torch.equal(out[:, :d], x) and torch.equal(out[:, d], torch.ones(n))):
        fail("add_bias_column must keep x as it is and append one column of ones.")


def test_add_bias_column_keeps_the_dtype_and_device(device):
    """Rows in float16, bfloat16, float32 or float64 get ones of their own dtype and device."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.randn(4, 3).to(device, dtype)
        out = call(tensors.add_bias_column, x, what=f"add_bias_column on a {dtype} tensor on "
                   f"{device}", why="A new tensor lands on the CPU unless told otherwise: on a "
                   "GPU this is the classic 'Expected all tensors to be on the same device'.")
        if out.dtype != dtype or out.device != x.device:
            fail(f"add_bias_column on a {dtype} tensor on {x.device} returned a {out.dtype} "
                 f"tensor on {out.device}. A new tensor made without saying otherwise gets the "
                 f"default dtype (float32) on the CPU, and torch.cat promotes to the wider "
                 f"dtype: a half-precision batch silently doubles in size, a float64 model gets "
                 f"mixed inputs, and on a GPU the concatenation fails.")


# --- pairwise squared distances --------------------------------------------------------


def test_distances_of_a_worked_example(device):
    """Three points against two, by hand: [[0, 1, 4], [25, 20, 13]]."""
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0]], device=device)
    b = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], device=device)
    expected = naive_sq_distances(a, b)
    got = sq_distances(a, b)
    if tuple(got.shape) != (2, 3) or not torch.allclose(got.cpu().double(), expected):
        fail(f"pairwise_sq_distances(a, b) for a = {a.tolist()} and b = {b.tolist()} returned\n"
             f"{got.cpu().tolist()}\nexpected {expected.tolist()}: entry [i, j] is the squared "
             f"distance from a[i] to b[j].")


@given(n=shapes, m=shapes, d=shapes)
def test_distances_have_shape_n_by_m(device, n, m, d):
    """Any (N, d) against any (M, d) gives one distance per pair: shape (N, M)."""
    a, b = points(n, d, 1, torch.float32).to(device), points(m, d, 2, torch.float32).to(device)
    got = sq_distances(a, b)
    if tuple(got.shape) != (n, m):
        fail(f"pairwise_sq_distances(a {(n, d)}, b {(m, d)}) returned shape {tuple(got.shape)}, "
             f"expected ({n}, {m}): one row per point of a, one column per point of b. "
             f"{BROADCAST_HINT}")


@given(n=shapes, m=shapes, d=shapes, dtype=dtypes, seed=seeds,
       scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_distances_match_a_naive_loop(device, n, m, d, dtype, seed, scale):
    """Every entry equals sum_k (a[i, k] - b[j, k])^2, in the inputs' dtype (float32 or 64)."""
    a = points(n, d, seed, dtype, scale).to(device)
    b = points(m, d, seed + 1, dtype, scale).to(device)
    got = sq_distances(a, b)
    if got.dtype != dtype or tuple(got.shape) != (n, m):
        fail(f"pairwise_sq_distances(a {(n, d)}, b {(m, d)}) in {dtype} returned shape "
             f"{tuple(got.shape)} and dtype {got.dtype}; expected ({n}, {m}) in {dtype}.")
    expected = naive_sq_distances(a, b)
    error = (got.cpu().double() - expected).abs()
    if (error > tolerance(a, b)).any():
        i, j = divmod(int((error - tolerance(a, b)).argmax()), m)
        fail(f"pairwise_sq_distances(a {(n, d)}, b {(m, d)}) in {dtype}: entry [{i}, {j}] is "
             f"{got[i, j].item():.6g}, but sum_k (a[{i}, k] - b[{j}, k])^2 is "
             f"{expected[i, j].item():.6g}. ||a_i||^2 is one number per row of a, ||b_j||^2 one "
             f"per row of b: each must reach every entry of its own row (a) or column (b).")


@given(n=shapes, m=shapes, d=shapes, seed=seeds)
def test_distances_are_symmetric(device, n, m, d, seed):
    """The distance from a[i] to b[j] is the distance from b[j] to a[i]: D(a, b) = D(b, a).T."""
    a = points(n, d, seed, torch.float64).to(device)
    b = points(m, d, seed + 1, torch.float64).to(device)
    ab, ba = sq_distances(a, b).cpu(), sq_distances(b, a).cpu()
    if ab.shape != ba.T.shape or not torch.allclose(ab, ba.T, rtol=1e-9, atol=1e-9):
        fail(f"pairwise_sq_distances(a, b) is not the transpose of pairwise_sq_distances(b, a) "
             f"for a {(n, d)} and b {(m, d)}. Distance is symmetric; a result that is not has "
             f"mixed up which input indexes rows and which indexes columns.")


@given(n=shapes, d=shapes, dtype=dtypes, seed=seeds)
def test_distance_of_each_point_to_itself_is_zero(device, n, d, dtype, seed):
    """D(x, x) has a zero diagonal (up to rounding): every point is at distance 0 from itself."""
    x = points(n, d, seed, dtype, 3.0).to(device)
    diagonal = sq_distances(x, x).diagonal().cpu().double()
    if diagonal.shape != (n,) or (diagonal.abs() > tolerance(x, x).diagonal()).any():
        fail(f"The diagonal of pairwise_sq_distances(x, x) for x {(n, d)} is "
             f"{diagonal.tolist()[:6]}, expected zeros: ||x_i||^2 + ||x_i||^2 - 2<x_i, x_i> "
             f"is 0 only if each term is the squared norm of the same row.")


@pytest.mark.requires("test_distances_match_a_naive_loop")
@given(n=st.integers(2, 32), d=st.integers(1, 16), dtype=dtypes, seed=seeds)
@example(n=20, d=16, dtype=torch.float32, seed=0)
def test_distances_are_never_negative(device, n, d, dtype, seed):
    """Close points far from the origin: rounding must not produce negative squared distances."""
    offset = 1e3 if dtype == torch.float32 else 1e8
    x = (offset + points(n, d, seed, torch.float64, 1e-3)).to(dtype).to(device)
    got = sq_distances(x, x)
    if got.min().item() < 0:
        fail(f"pairwise_sq_distances(x, x) for {n} points in {d}-D near {offset:g} (in {dtype}) "
             f"has an entry of {got.min().item():.3g}. A squared distance is never negative, "
             f"but the formula subtracts two large, nearly equal numbers, and rounding leaves "
             f"an error of either sign. Downstream, sqrt of a negative 'squared distance' is "
             f"NaN, and a kernel or k-NN search that assumes d >= 0 misbehaves.")


@pytest.mark.requires("test_distances_have_shape_n_by_m", "test_distances_match_a_naive_loop")
def test_nearest_neighbour_of_a_training_point_is_itself(device):
    """Querying with some training points returns their own labels (each is its own nearest)."""
    train_x = points(50, 3, 0, torch.float32).to(device)
    train_y = torch.arange(149, 99, -1, device=device)  # labels 149..100: not row indices
    picked = torch.randperm(50)[:20].to(device)
    got = call(retelling_broadcast_errors(distances.nearest_neighbour_labels), train_x,
               train_y, train_x[picked],
               what="nearest_neighbour_labels(train_x (50, 3), train_y (50,), query (20, 3))")
    if tuple(got.shape) != (20,) or not torch.equal(got.cpu(), train_y[picked].cpu()):
        fail("nearest_neighbour_labels with 20 training points as queries should return their "
             "own labels (the labels of train_y, not row numbers): every training point is at "
             "distance 0 from itself. The distances are (Q, N), one row per query: a query's "
             "nearest training point is found within its own row.")


# --- the script ------------------------------------------------------------------------



def run_recording_lookups(monkeypatch, argv: list[str]) -> list[tuple]:
    """distances.main(argv); for each call of nearest_neighbour_labels it makes, the CPU
    copies of (train_x, train_y, query, predicted) and the device the query was on."""
    module = distances.resolve()
    real = module.nearest_neighbour_labels
    calls = []

    def recording(train_x, train_y, query):
        predicted = real(train_x, train_y, query)
        calls.append((train_x.cpu(), train_y.cpu(), query.cpu(), predicted.cpu(),
                      query.device.type))
        return predicted

    monkeypatch.setattr(module, "nearest_neighbour_labels", recording)
    call(module.main, argv, what=f"distances.py {' '.join(argv)}")
    if len(calls) != 1:
        fail(f"distances.py {' '.join(argv)} called nearest_neighbour_labels {len(calls)} "
             f"times; expected once, with the whole lookup half and the whole test half.")
    return calls[0]


def test_blobs_are_unit_clouds_around_centres_in_the_square():
    """blobs(n, classes): n points per class in blocks, unit normal noise, centres in [-4, 4]^2."""
    n, classes = 200, 200
    x, y = call(distances.blobs, n, classes, 0, what=f"blobs({n}, {classes}, seed=0)")
    if tuple(x.shape) != (n * classes, 2) or not torch.equal(
            y, torch.arange(classes).repeat_interleave(n)):
        fail(f"blobs({n}, {classes}, seed=0) returned x {tuple(x.shape)} and labels that are "
             f"not {n} zeros, then {n} ones, and so on; expected x ({n * classes}, 2).")
    centres = torch.stack([x[y == k].mean(dim=0) for k in range(classes)])  # (classes, 2)
    noise = x - centres[y]  # (n * classes, 2)
    low, high = centres.min(dim=0).values, centres.max(dim=0).values
    if not (low > -4.4).all() or not (high < 4.4).all() or not (low < -3.6).all() or not (
            high > 3.6).all():
        span = f"{[round(v, 2) for v in low.tolist()]} to {[round(v, 2) for v in high.tolist()]}"
        fail(f"The {classes} class centres of blobs(seed=0) span {span} (x and y); the "
             f"docstring draws them uniformly from the square [-4, 4]^2, so that many centres "
             f"reach close to each of its edges and none goes beyond.")
    spread = [round(v, 2) for v in noise.std(dim=0).tolist()]
    correlation = torch.corrcoef(noise.T)[0, 1].item()
    if not all(abs(v - 1) < 0.1 for v in spread) or abs(correlation) > 0.1:
        fail(f"Around their centres, blobs' points have standard deviations {spread} in x and "
             f"y, correlated {correlation:.2f}; standard normal clouds have 1 and 1, "
             f"uncorrelated: each coordinate gets noise of its own.")


def test_blobs_draws_the_points_the_readme_describes():
    """blobs(n, classes, seed): the centres, then each point's offset, from one generator."""
    for n, classes, seed in ((5, 3, 0), (4, 2, 1)):
        x, y = call(distances.blobs, n, classes, seed, what=f"blobs({n}, {classes}, {seed})")
        g = torch.Generator().manual_seed(seed)
        centres = torch.rand(classes, 2, generator=g) * 8 - 4  # (classes, 2)
        labels = torch.arange(classes).repeat_interleave(n)  # (n * classes,)
        expected = centres[labels] + torch.randn(n * classes, 2, generator=g)  # (n * classes, 2)
        if tuple(x.shape) != tuple(expected.shape) or not torch.equal(y, labels):
            fail(f"blobs({n}, {classes}, seed={seed}) returned x {tuple(x.shape)} and labels "
                 f"{y.tolist()}; expected x {tuple(expected.shape)} and the labels in blocks of "
                 f"{n}, as the README says.")
        diff = (x.double() - expected.double()).abs().max().item()
        if diff > 1e-6:
            fail(f"blobs({n}, {classes}, seed={seed}) places its points up to {diff:.2f} away "
                 f"from where the README's draw puts them (from a torch.Generator seeded "
                 f"{seed}: the centres torch.rand(classes, 2) * 8 - 4, then each point's "
                 f"offset torch.randn(n * classes, 2) added to its class's centre). Expected "
                 f"the documented points: a seed names one data set, so that a run can be "
                 f"repeated and two runs compared.")


@pytest.mark.trains
@pytest.mark.requires("test_nearest_neighbour_of_a_training_point_is_itself",
                      "test_blobs_are_unit_clouds_around_centres_in_the_square")
def test_script_classifies_the_half_it_did_not_look_up(monkeypatch, capsys):
    """`python distances.py` (defaults: 200 points per class, 3 classes, seed 0) looks up in
    one half of the points, classifies the other half, and prints that half's accuracy."""
    train_x, train_y, query, predicted, _ = run_recording_lookups(monkeypatch, [])
    out = capsys.readouterr().out
    x, y = distances.blobs(400, 3, 0)  # what the defaults make: 2 x 200 points per class
    if (len(train_x), len(query)) != (600, 600):
        fail(f"distances.py looked up in {len(train_x)} points and classified {len(query)}; "
             f"with its defaults it makes 1200 points (3 classes of 2 x 200) and uses half "
             f"to look up, half to classify: 600 and 600.")
    gap_train, row_train = torch.cdist(train_x.double(), x.double()).min(dim=1)
    gap_query, row_query = torch.cdist(query.double(), x.double()).min(dim=1)
    if max(gap_train.max().item(), gap_query.max().item()) > 1e-5:
        fail("distances.py, run without options, used points that blobs(400, 3, seed=0) does "
             "not make: the defaults are 200 points per class, 3 classes and seed 0.")
    if set(row_train.tolist()) & set(row_query.tolist()) or len(
            set(row_train.tolist()) | set(row_query.tolist())) != 1200:
        fail("distances.py looked up in some of the very points it then classified (or left "
             "points out): the two halves must be disjoint and together cover every point. A "
             "test point that is also a lookup point finds itself at distance 0, and the "
             "accuracy measures memory, not the classifier.")
    if not torch.equal(train_y, y[row_train]):
        fail("distances.py handed nearest_neighbour_labels labels that are not those of the "
             "lookup points.")
    expected = 100 * (predicted == y[row_query]).float().mean().item()
    found = re.search(r"accuracy on (\d+) test points: ([\d.]+)%", out)
    if not found or int(found[1]) != 600 or abs(float(found[2]) - expected) > 0.06:
        fail(f"distances.py printed {out.strip()!r}; its 600 test points got the right label "
             f"{expected:.1f}% of the time: the accuracy is the fraction of predicted labels "
             f"equal to the true ones.")


@pytest.mark.trains
@pytest.mark.requires("test_nearest_neighbour_of_a_training_point_is_itself")
def test_script_runs_on_the_device_it_is_told(monkeypatch, capsys):
    """--device auto picks cuda when there is one, else the CPU; --device cpu stays on the CPU
    even where a GPU is available. The smallest sizes (1 point, 1 class) are valid."""
    argv = ["--points", "1", "--classes", "1", "--device", "auto"]
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    device = run_recording_lookups(monkeypatch, shell_argv(argv))[4]
    if device != expected:
        fail(f"distances.py {' '.join(argv)} ran on {device}; on this machine 'auto' means "
             f"{expected}.")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    argv = ["--points", "1", "--classes", "1", "--device", "cpu"]
    device = run_recording_lookups(monkeypatch, shell_argv(argv))[4]
    if device != "cpu":
        fail(f"distances.py {' '.join(argv)}, with a GPU available (pretended here), ran on "
             f"{device}: the user chose the CPU, and only 'auto' may pick the GPU.")
    capsys.readouterr()


@pytest.mark.trains
@pytest.mark.requires("test_nearest_neighbour_of_a_training_point_is_itself")
def test_script_runs_when_started_as_a_file(capsys):
    """`python distances.py --points 5` runs main(): the guard at the end lets it."""
    ended = run_as_main(distances.resolve().__file__, ["--points", "5", "--device", "cpu"])
    if ended != "returned":
        fail(f"python distances.py --points 5 {ended}; expected it to run.")
    out = capsys.readouterr().out
    if "accuracy on 15 test points" not in out:
        fail(f"python distances.py --points 5 printed {out.strip()!r}; expected the accuracy "
             f"on its 15 test points. Run as a file, a script's module is named '__main__', "
             f"and the block at its end decides whether main() runs.")


@pytest.mark.trains
@pytest.mark.requires("test_script_runs_when_started_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    distances.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(distances.resolve().__file__, "distances.py")


@pytest.mark.trains
@pytest.mark.requires("test_nearest_neighbour_of_a_training_point_is_itself")
def test_script_labels_blobs_by_their_nearest_neighbour(device, capsys):
    """`python distances.py` classifies the blobs and prints the 1-nearest-neighbour accuracy."""
    argv = ["--points", "60", "--classes", "3", "--seed", "1", "--device", device.type]
    call(distances.main, argv, what=f"distances.py {' '.join(argv)}")
    out = capsys.readouterr().out
    found = re.search(r"accuracy on (\d+) test points: ([\d.]+)%", out)
    if not found or int(found[1]) != 180:
        fail(f"distances.py {' '.join(argv)} printed {out.strip()!r}; expected the accuracy on "
             f"the 180 test points (half of the 3 x 2 x 60 points it makes).")
    if float(found[2]) < 85:
        fail(f"distances.py {' '.join(argv)} labelled only {found[2]}% of the test points "
             f"right; on these blobs (seed 1) 1-nearest-neighbour gets 91%, and chance "
             f"is 33%. Each test point must take the label of the "
             f"training point closest to it.")


@pytest.mark.trains
def test_script_help_says_what_it_does():
    """`python distances.py --help` describes the script with its docstring's first line."""
    assert_help_opens_with_summary(distances.resolve(), "distances.py")


@pytest.mark.trains
def test_script_rejects_nonsense_arguments(capsys):
    """distances.py refuses zero or negative sizes and unknown devices with one line, exit 2."""
    cases = [["--points", "0"], ["--points", "-3"], ["--classes", "0"], ["--device", "gpu"]]
    if not torch.cuda.is_available():
        cases.append(["--device", "cuda"])
    for argv in map(shell_argv, cases):
        try:
            distances.main(argv)
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - a traceback is the finding
            fail(f"distances.py {' '.join(argv)} raised {type(exc).__name__}: {exc}. Expected "
                 f"argparse to refuse the value with one line and exit status 2: a user should "
                 f"read what is wrong with the command, not a traceback.")
        else:
            fail(f"distances.py {' '.join(argv)} ran to the end. Expected it to refuse the "
                 f"value with one line and exit status 2: sizes must be at least 1 and the "
                 f"device one this machine has.")
        lines = capsys.readouterr().err.strip().splitlines()
        if code != 2 or not lines or "error:" not in lines[-1]:
            err = "\n".join(lines)
            fail(f"distances.py {' '.join(argv)} exited with status {code} and printed "
                 f"{err!r}; expected argparse's usage line and one 'error:' line, status 2.")
