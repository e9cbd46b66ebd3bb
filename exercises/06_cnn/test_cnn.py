"""Exercise 06: a CNN, the arithmetic of its sizes, and a complete train / evaluate project.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters. The last tests run the real command line,
`python main.py train` and `python main.py evaluate model.pt`, in a temporary folder.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchkata import data as kata_data
from torchkata import under_test
from torchkata.checks import assert_grads_flow, call, fail
from torchkata.vision_files import write_mnist

model = under_test("model")
data = under_test("data")
main = under_test("main")

SHAPES_HINT = ("Each layer must accept what the layer before it produces: read the sizes in "
               "the error, and follow a (B, 1, 28, 28) batch through the network on paper.")
# `python main.py train` in the tests: a short run on part of the digits (seconds on a CPU).
TRAIN_FLAGS = ["--n-train", "2000", "--epochs", "2", "--lr", "2e-3"]
MIN_TEST_ACCURACY = 0.75  # reference with TRAIN_FLAGS, seeds 0-4: 0.857 to 0.874;
# training without zero_grad: 0.09 to 0.42


@st.composite
def windows(draw):
    """(size, kernel, stride, padding) where at least one window fits the padded input."""
    kernel = draw(st.integers(1, 7))
    padding = draw(st.integers(0, kernel // 2))  # nn.MaxPool2d allows at most half a kernel
    stride = draw(st.integers(1, 4))
    size = draw(st.integers(max(1, kernel - 2 * padding), 40))
    return size, kernel, stride, padding


def _check_output_size(layer: nn.Module, case: tuple[int, int, int, int], device) -> None:
    size, kernel, stride, padding = case
    real = layer.to(device)(torch.zeros(1, 1, size, size, device=device)).shape[-1]
    what = (f"conv_output_size(size={size}, kernel={kernel}, stride={stride}, "
            f"padding={padding})")
    got = call(model.conv_output_size, size, kernel, stride, padding, what=what)
    if not isinstance(got, int):
        fail(f"{what} returned {got!r} (a {type(got).__name__}); {type(layer).__name__} "
             f"produces {real} positions. A size counts whole window positions, so it is an "
             f"int: layers are built from it (nn.Linear(C * H * W, ...) accepts only ints), "
             f"and a last window that would stick out past the padded border is not counted.")
    if got != real:
        fail(f"{what} returned {got}, but {type(layer).__name__} with these settings turns "
             f"{size} pixels into {real}. Work it out by hand: padding adds P pixels on each "
             f"side, and the window of K pixels moves S pixels at a time.")


@given(case=windows())
def test_conv_output_size_matches_conv2d(device, case):
    """conv_output_size gives the height/width nn.Conv2d really produces."""
    size, kernel, stride, padding = case
    _check_output_size(nn.Conv2d(1, 1, kernel, stride=stride, padding=padding), case, device)


@given(case=windows())
def test_conv_output_size_matches_maxpool2d(device, case):
    """conv_output_size gives the height/width nn.MaxPool2d really produces."""
    size, kernel, stride, padding = case
    _check_output_size(nn.MaxPool2d(kernel, stride=stride, padding=padding), case, device)


# --- the model -------------------------------------------------------------------------


def test_features_take_grayscale_images(device):
    """Net().features maps (B, 1, 28, 28) grayscale digits to (B, 32, 7, 7) feature maps."""
    features = model.Net().features.to(device)
    x = torch.rand(8, 1, 28, 28, device=device)
    out = call(features, x, what="Net().features on digits of shape (8, 1, 28, 28)",
               why="A digit has one (grayscale) channel, not three like a colour photo. A "
                   "Conv2d's in_channels must equal the channels of what it is given.")
    if tuple(out.shape) != (8, 32, 7, 7):
        fail(f"Net().features turned (8, 1, 28, 28) into {tuple(out.shape)}; expected "
             f"(8, 32, 7, 7), as Net's docstring says: the classifier is built for that shape.")


def test_classifier_takes_the_feature_maps(device):
    """Net().classifier maps (B, 32, 7, 7) feature maps to (B, 10) scores."""
    classifier = model.Net().classifier.to(device)
    x = torch.rand(8, 32, 7, 7, device=device)
    out = call(classifier, x, what="Net().classifier on feature maps of shape (8, 32, 7, 7)",
               why="nn.Flatten turns each sample's C x H x W feature maps into one vector; "
                   "the first Linear layer must expect exactly that many numbers. "
                   "conv_output_size tells you H and W after each layer.")
    if tuple(out.shape) != (8, 10):
        fail(f"Net().classifier returned shape {tuple(out.shape)}; expected (8, 10): one row of "
             f"10 class scores per image.")


@given(batch=st.integers(1, 16))
def test_forward_shape_any_batch_size(device, batch):
    """Net maps a batch of B digits (B, 1, 28, 28) to B rows of 10 scores."""
    net = model.Net().to(device).eval()
    out = call(net, torch.rand(batch, 1, 28, 28, device=device),
               what=f"Net() on digits of shape ({batch}, 1, 28, 28)", why=SHAPES_HINT)
    if tuple(out.shape) != (batch, 10):
        fail(f"Net() on ({batch}, 1, 28, 28) returned shape {tuple(out.shape)}, expected "
             f"({batch}, 10).")


def test_every_parameter_gets_a_gradient(device):
    """One backward pass reaches every weight and bias with a finite, non-zero gradient."""
    x, y, _, _ = kata_data.mnist_subset(n_train=32, n_test=0)
    net = model.Net().to(device)
    out = call(net, x.to(device), what="Net() on 32 digits", why=SHAPES_HINT)
    assert_grads_flow(net, nn.functional.cross_entropy(out, y.to(device)), "Net()")


# --- the data --------------------------------------------------------------------------


def _raw_pixels(n: int, flat: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 784) if flat else (n, 28, 28), generator=g,
                         dtype=torch.uint8)


@given(n=st.integers(1, 16), flat=st.booleans(), seed=st.integers(0, 2**16))
def test_to_images_adds_a_channel_dimension(n, flat, seed):
    """to_images turns (N, 784) or (N, 28, 28) pixels into images (N, 1, 28, 28)."""
    pixels = _raw_pixels(n, flat, seed)
    images = call(data.to_images, pixels, what=f"to_images() on pixels {tuple(pixels.shape)}")
    if tuple(images.shape) != (n, 1, 28, 28):
        fail(f"to_images() on pixels of shape {tuple(pixels.shape)} returned shape "
             f"{tuple(images.shape)}; expected ({n}, 1, 28, 28). nn.Conv2d reads (B, C, H, W): "
             f"without the channel dimension, a batch of (B, 28, 28) is taken for ONE image "
             f"with B channels.")


@given(n=st.integers(1, 16), flat=st.booleans(), seed=st.integers(0, 2**16))
def test_to_images_scales_pixels_to_unit_range(n, flat, seed):
    """to_images gives float images whose values are the 8-bit pixels mapped onto [0, 1]."""
    pixels = _raw_pixels(n, flat, seed)
    pixels[0].view(-1)[0] = 255  # every set holds a white pixel
    images = call(data.to_images, pixels, what=f"to_images() on pixels {tuple(pixels.shape)}")
    if not images.is_floating_point():
        fail(f"to_images() returned dtype {images.dtype}; expected floating point images: "
             f"convolutions and gradients work on real numbers.")
    expected = pixels.double().div(255).reshape(n, 1, 28, 28)
    if images.numel() != expected.numel():
        fail(f"to_images() returned {images.numel()} values for {pixels.numel()} pixels.")
    lo, hi = images.min().item(), images.max().item()
    if not torch.allclose(images.double().reshape(expected.shape), expected, atol=1e-6):
        fail(f"to_images() on 8-bit pixels (0 to 255) returned values from {lo:.3g} to "
             f"{hi:.3g}; expected each pixel mapped linearly onto [0, 1] (0 stays 0, 255 "
             f"becomes 1). Layers are initialised for inputs of about that size; inputs in "
             f"the hundreds blow up the first activations and gradients, and images prepared "
             f"on another scale (another data set, a photo) no longer look alike to the model.")


@pytest.mark.parametrize("name", ["mnist", "fashionmnist"])
def test_torchvision_datasets_load_offline(tmp_path, name):
    """torchvision_digits reads torchvision's MNIST / FashionMNIST files into (N, 1, 28, 28)."""
    g = torch.Generator().manual_seed(0)
    splits = {}
    for train, n in ((True, 12), (False, 5)):
        pixels = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g)
        write_mnist(tmp_path, pixels.numpy(), labels.numpy().astype(np.uint8), train=train,
                    name={"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[name])
        splits[train] = (pixels, labels)
    got = call(data.torchvision_digits, name, root=str(tmp_path), download=False,
               what=f"torchvision_digits({name!r}, download=False) on files written offline")
    for dataset, (pixels, truth), split in zip(got, splits.values(), ("train", "test")):
        images, labels = dataset.tensors
        if tuple(images.shape) != (len(pixels), 1, 28, 28):
            fail(f"{name} {split}: images of shape {tuple(images.shape)}; expected "
                 f"({len(pixels)}, 1, 28, 28), one grayscale channel per image.")
        if not torch.allclose(images.double(), pixels.double().div(255).unsqueeze(1),
                              atol=1e-6):
            fail(f"{name} {split}: image values run from {images.min().item():.3g} to "
                 f"{images.max().item():.3g}; expected the 8-bit pixels mapped onto [0, 1], "
                 f"like the offline digits: a model trained on one scale fails on another.")
        if not torch.equal(labels.long().cpu(), truth):
            fail(f"{name} {split}: the labels do not match the ones in the files.")


@given(quarter_turns=st.lists(st.integers(-4, 4), min_size=1, max_size=6))
def test_rotate_by_quarter_turns_matches_rot90(quarter_turns):
    """rotate(images, degrees) turns each image counter-clockwise by its own angle."""
    g = torch.Generator().manual_seed(len(quarter_turns))
    images = torch.rand(len(quarter_turns), 1, 28, 28, generator=g)
    degrees = torch.tensor([90.0 * k for k in quarter_turns])
    got = call(data.rotate, images, degrees, what=f"rotate() by {degrees.tolist()} degrees")
    expected = torch.stack([torch.rot90(im, k, dims=(-2, -1))
                            for im, k in zip(images, quarter_turns)])
    if tuple(got.shape) != tuple(images.shape) or not torch.allclose(got, expected, atol=1e-4):
        fail(f"rotate() by {degrees.tolist()} degrees does not match torch.rot90 (counter-"
             f"clockwise quarter turns, image by image). Check the angle's unit, its "
             f"direction, and that each image gets its own angle.")


def test_corrupted_digits_are_reproducible_and_rotated():
    """corrupt_mnist gives the same rotated digits on every call, split as asked."""
    first = call(data.corrupt_mnist, 300, 100, what="corrupt_mnist(300, 100)")
    again = call(data.corrupt_mnist, 300, 100, what="corrupt_mnist(300, 100)")
    upright = call(data.corrupt_mnist, 300, 100, max_degrees=0.0,
                   what="corrupt_mnist(300, 100, max_degrees=0)")
    (x, y), x_test = first[0].tensors, first[1].tensors[0]
    if (len(x), len(x_test)) != (300, 100):
        fail(f"corrupt_mnist(300, 100) gave {len(x)} training and {len(x_test)} test images.")
    if not all(torch.equal(a, b) for s, t in zip(first, again)
               for a, b in zip(s.tensors, t.tensors)):
        fail("Two calls of corrupt_mnist() gave different data: it must be reproducible, so "
             "that the test set a model is evaluated on is the one every run sees.")
    if torch.allclose(x, upright[0].tensors[0], atol=1e-3):
        fail("corrupt_mnist() returned the same images as with max_degrees=0: the digits "
             "are not rotated.")
    if tuple(x.shape[1:]) != (1, 28, 28) or x.min() < 0 or x.max() > 1:
        fail(f"corrupt_mnist() images: shape {tuple(x.shape)}, values {x.min().item():.3g} to "
             f"{x.max().item():.3g}; expected (N, 1, 28, 28) in [0, 1].")
    if y.dtype != torch.int64 or set(y.tolist()) != set(range(10)):
        fail(f"corrupt_mnist() labels: dtype {y.dtype}, classes {sorted(set(y.tolist()))}; "
             f"expected int64 class indices 0 to 9 (what nn.CrossEntropyLoss takes).")


# --- evaluation ------------------------------------------------------------------------


class _Spy(nn.Module):
    """Predicts the class written in each image's first pixel; records how it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []  # (training, grad enabled) per forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()  # (B, 10)


def _spy_run(device):
    g = torch.Generator().manual_seed(0)
    predicted = torch.randint(0, 10, (45,), generator=g)
    labels = torch.where(torch.rand(45, generator=g) < 0.6, predicted,
                         torch.randint(0, 10, (45,), generator=g))
    images = torch.zeros(45, 1, 28, 28)
    images[:, 0, 0, 0] = predicted.float()
    spy = _Spy().train()
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)  # a short last batch
    result = call(main.accuracy, spy, loader, device, what="accuracy() on 45 images")
    return spy, result, (predicted == labels).double().mean().item()


def test_accuracy_counts_correct_predictions(device):
    """accuracy(model, loader, device) is the fraction of all images classified correctly."""
    _, got, expected = _spy_run(device)
    if not isinstance(got, float) or abs(got - expected) > 1e-6:
        fail(f"accuracy() returned {got!r} for a model that gets {expected:.4f} of 45 images "
             f"right (in batches of 8, the last one short). Expected a float: correct "
             f"predictions over all images.")


def test_accuracy_switches_dropout_and_batchnorm_to_eval(device):
    """accuracy() runs the model in evaluation mode."""
    spy, _, _ = _spy_run(device)
    if not spy.calls or any(training for training, _ in spy.calls):
        fail("accuracy() ran the model in training mode. There, dropout still zeroes random "
             "activations and BatchNorm normalises with the statistics of each test batch "
             "(and updates its running averages with test data), so the accuracy is noisy, "
             "depends on the batch size, and changes the model.")


def test_accuracy_does_not_track_gradients(device):
    """accuracy() runs the model with gradient tracking switched off."""
    spy, _, _ = _spy_run(device)
    if not spy.calls or any(grad for _, grad in spy.calls):
        fail("accuracy() ran the model with gradient tracking on. Every forward pass then "
             "records a graph for a backward pass that never comes, costing memory and time "
             "for nothing; evaluation needs no gradients.")


# --- checkpoints -----------------------------------------------------------------------

WHOLE_MODULE_WHY = ("Pickling a whole nn.Module stores a reference to its class and source "
                    "module: the file breaks when the code moves or changes, and loading such "
                    "a file runs whatever code the pickle names.")


def _load_weights_only(path) -> tuple[object, str]:
    """(what torch.load(path, weights_only=True) returns, or None; why it failed, or "")."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), ""
    except Exception as exc:
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if named:
            return None, f"the file names the Python object {named.group(1)}"
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def test_checkpoint_holds_only_a_state_dict(tmp_path):
    """save_checkpoint writes a state_dict that loads with torch.load(..., weights_only=True)."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    path = tmp_path / "model.pt"
    call(main.save_checkpoint, net, str(path), what="save_checkpoint(model, path)")
    state, problem = _load_weights_only(path)
    if problem:
        fail(f"The file save_checkpoint() wrote does not load with torch.load(..., "
             f"weights_only=True): {problem}. It holds pickled Python objects, not only "
             f"tensors. {WHOLE_MODULE_WHY}")
    expected = net.state_dict()
    if not isinstance(state, dict) or list(state) != list(expected) or not all(
            torch.equal(state[k], v) for k, v in expected.items()):
        fail(f"save_checkpoint() wrote a {type(state).__name__} that is not the model's "
             f"state_dict: expected exactly its parameters and buffers ({', '.join(expected)}), "
             f"which a fresh model can take back with load_state_dict().")


class _RunsCodeWhenUnpickled:
    """Unpickling this object calls a function: here it creates a file."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_evaluate_loads_only_weights(tmp_path, device):
    """`evaluate` refuses a checkpoint that would run code when unpickled."""
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "model.pt"
    state = {**model.Net().state_dict(), "surprise": _RunsCodeWhenUnpickled(marker)}
    torch.save(state, checkpoint)
    try:
        main.main(["evaluate", str(checkpoint), "--n-test", "10", "--device", device.type])
    except (Exception, SystemExit):  # refusing the file is the expected outcome
        pass
    if marker.exists():
        fail("`python main.py evaluate` ran code hidden in the checkpoint file: loading it "
             "unpickled arbitrary Python objects. A checkpoint from anywhere else can do "
             "anything your account can. Load it so that only tensors (a state_dict) are "
             "accepted.")


# --- the command line: python main.py train / evaluate ---------------------------------


def _run(folder, *argv: str, device) -> subprocess.CompletedProcess:
    # One thread: a model this small gains little from more, and threads that wait on each
    # other stall badly on a busy CPU (the self-check runs several suites at once).
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(main.resolve().__file__), *argv,
                           "--device", device.type],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, device):
    """A folder where `python main.py train` ran with TRAIN_FLAGS, and how it went."""
    folder = tmp_path_factory.mktemp("cli")
    return folder, _run(folder, "train", *TRAIN_FLAGS, device=device)


def _crash_report(stderr: str) -> str:
    """The error of a crashed command, and the last line of the exercise's code that ran."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", stderr).strip().splitlines()
    errors = [i for i, line in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    error = lines[errors[-1]][:300] if errors else "\n".join(lines[-4:])
    unpickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", stderr)
    if unpickled:
        error += f" [weights_only=True refused the Python object {unpickled.group(1)}]"
    frames = [i for i, line in enumerate(lines)
              if line.strip().startswith("File ") and "site-packages" not in line]
    if frames and frames[-1] + 1 < len(lines):
        where = re.sub(r'^File "(.*)", line (\d+).*$', r"\1:\2", lines[frames[-1]].strip())
        where = where.removeprefix(f"{os.getcwd()}{os.sep}")
        error += f"\n  at {where}: {lines[frames[-1] + 1].strip()}"
    return error


def _train_ran(trained) -> None:
    folder, proc = trained
    if proc.returncode != 0:
        fail(f"`python main.py train {' '.join(TRAIN_FLAGS)}` failed (exit code "
             f"{proc.returncode}):\n{_crash_report(proc.stderr)}")


def test_train_saves_a_state_dict(trained):
    """`python main.py train` saves model.pt as a state_dict that loads with weights_only."""
    _train_ran(trained)
    path = trained[0] / "model.pt"
    if not path.is_file():
        fail("`python main.py train` finished, but wrote no model.pt in the current folder.")
    state, problem = _load_weights_only(path)
    if problem:
        fail(f"model.pt does not load with torch.load(..., weights_only=True): {problem}. "
             f"{WHOLE_MODULE_WHY}")
    expected = model.Net()
    expected(torch.zeros(2, 1, 28, 28))  # materialise lazy layers, if any
    expected = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    if not isinstance(state, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in
                                       state.items()} != expected:
        fail(f"model.pt holds {type(state).__name__} with keys {list(state)[:4]}...; expected "
             f"the state_dict of Net: exactly its parameter and buffer names and shapes, "
             f"which Net().load_state_dict() accepts.")


def test_train_saves_the_training_curve(trained):
    """`python main.py train` saves a PNG of the training curve (step vs loss)."""
    _train_ran(trained)
    path = trained[0] / "training_curve.png"
    if not path.is_file() or path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        fail("`python main.py train` did not write training_curve.png (a PNG image) in the "
             "current folder.")


def test_evaluate_prints_the_test_accuracy(trained, device):
    """`python main.py evaluate model.pt` prints a test accuracy the short training reaches."""
    _train_ran(trained)
    proc = _run(trained[0], "evaluate", "model.pt", device=device)
    if proc.returncode != 0:
        fail(f"`python main.py evaluate model.pt` failed (exit code {proc.returncode}):\n"
             f"{_crash_report(proc.stderr)}")
    found = re.search(r"accuracy\D*?(\d+(?:\.\d+)?)\s*(%?)", proc.stdout, re.IGNORECASE)
    if not found:
        fail(f"`python main.py evaluate model.pt` printed no accuracy:\n{proc.stdout[-500:]}")
    value = float(found.group(1)) / (100 if found.group(2) else 1)
    if value < MIN_TEST_ACCURACY:
        fail(f"After `python main.py train {' '.join(TRAIN_FLAGS)}`, evaluate prints a test "
             f"accuracy of {value:.1%}; expected at least {MIN_TEST_ACCURACY:.0%} (the "
             f"reference reaches it on every seed we measured). If the other tests pass, "
             f"compare how train and evaluate prepare the model and the data.")
