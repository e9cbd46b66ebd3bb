"""Exercise 10: segmentation with MONAI, where image and mask must stay in step.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import copy
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from monai.data import get_track_meta, set_track_meta
from monai.data.synthetic import create_test_image_2d
from torch.nn import functional as F

from torchkata import targets, under_test
from torchkata.checks import (
    assert_finite,
    assert_grads_flow,
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    how_script_ended,
    network_attempts,
    run_as_main,
    run_script,
    shell_argv,
)

transforms = under_test("transforms")
model = under_test("model")
data = under_test("data")
train = under_test("train")

CHANNEL_HINT = ("MONAI's array transforms read the first axis as channels and the rest as "
                "space: the data must be channel-first before anything resizes or flips it.")
TINY = (4, 8, 16)  # channels of a two-level U-Net: sizes must be divisible by 4


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Models and images here are tiny: on a CPU, threads cost more than they bring (the
    plugin restores the thread count after each test)."""
    torch.set_num_threads(1)


# --- helpers: masks with a known layout, and images built from them ----------------------


def grid_mask(seed: int, cells: int, classes: int, h: int, w: int) -> tuple[np.ndarray, bool]:
    """(h, w) int64 mask of cells x cells blocks of random classes (at least three distinct
    when classes >= 3), and whether the layout changes a lot under any flip or turn."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, classes, size=(cells, cells))
    grid.flat[rng.permutation(cells * cells)[:3]] = np.arange(3) % classes
    rows = np.arange(h) * cells // h
    cols = np.arange(w) * cells // w
    moved = [np.rot90(g, k) for g in (grid, grid.T) for k in range(4)][1:]
    asymmetric = min(float((m != grid).mean()) for m in moved) >= 0.3
    return grid[rows][:, cols].astype(np.int64), asymmetric


def image_from_mask(mask: np.ndarray, channels: int) -> np.ndarray:
    """An (H, W, C) image whose brightness is the class index: it names the mask everywhere."""
    return np.repeat(mask[..., None].astype(np.float32), channels, axis=-1)


def as_array(x) -> np.ndarray:
    return np.asarray(torch.as_tensor(x).detach().cpu().float())


def interior(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels of a (1, H, W) label whose whole (2r+1)^2 neighbourhood has their class."""
    t = torch.as_tensor(label)[None].float()
    k, p = 2 * radius + 1, radius
    hi = F.max_pool2d(t, k, stride=1, padding=p)
    lo = -F.max_pool2d(-t, k, stride=1, padding=p)
    return (hi == lo)[0, 0].numpy()


def run_transform(pipeline, sample: dict, what: str) -> dict:
    return call(pipeline, sample, what=what, why=CHANNEL_HINT)


def check_shapes(out: dict, channels: int, size: int, what: str) -> None:
    image, label = tuple(out["image"].shape), tuple(out["label"].shape)
    if image != (channels, size, size) or label != (1, size, size):
        fail(f"{what} gave an image of shape {image} and a mask of shape {label}; expected "
             f"({channels}, {size}, {size}) and (1, {size}, {size}): channels first, then the "
             f"resized height and width. The raw image is (H, W, C) and the raw mask (H, W) "
             f"without any channel axis. {CHANNEL_HINT}")


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, 1, H, W) indices -> (B, C, H, W) 0/1 float."""
    return F.one_hot(labels[:, 0].long(), classes).permute(0, 3, 1, 2).float()


def hand_dice(predicted: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """Oracle: per image, mean over the foreground classes present in truth of
    2|P & T| / (|P| + |T|), from (B, H, W) class-index maps."""
    scores = []
    for p, t in zip(predicted, truth):
        per_class = [2 * ((p == c) & (t == c)).sum() / ((p == c).sum() + (t == c).sum())
                     for c in range(1, classes) if (t == c).any()]
        scores.append(torch.stack(per_class).double().mean() if per_class else torch.tensor(0.0))
    return torch.stack(scores).double()


# --- transforms: shapes, class values, alignment ------------------------------------------


@given(h=st.integers(20, 90), w=st.integers(20, 90), channels=st.sampled_from([1, 3]),
       size=st.sampled_from([16, 32, 48]))
def test_preprocess_gives_channel_first_image_and_mask(h, w, channels, size):
    """val_transforms(size): (H, W, C) image and (H, W) mask -> (C, size, size), (1, size, size)."""
    mask, _ = grid_mask(0, 4, 3, h, w)
    sample = {"image": image_from_mask(mask, channels), "label": mask}
    what = f"val_transforms({size}) on an image ({h}, {w}, {channels}) and a mask ({h}, {w})"
    out = run_transform(transforms.val_transforms(size), sample, what)
    check_shapes(out, channels, size, what)
    assert_finite(torch.as_tensor(out["image"]), f"{what}: the image")
    image = as_array(out["image"])
    if image.min() < -1e-6 or image.max() > 1 + 1e-6:
        fail(f"{what}: image intensities span [{image.min():.3g}, {image.max():.3g}]; expected "
             f"them scaled into [0, 1], so that every image reaches the network on one scale.")


@pytest.mark.requires("test_preprocess_gives_channel_first_image_and_mask")
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(8, 100), w=st.integers(8, 100),
       classes=st.integers(3, 6), size=st.sampled_from([16, 32, 48]))
def test_label_values_stay_in_the_class_set(seed, h, w, classes, size):
    """After val_transforms every mask pixel still holds one of the mask's own class indices."""
    mask, _ = grid_mask(seed, 5, classes, h, w)
    sample = {"image": image_from_mask(mask, 1), "label": mask}
    classes_in = sorted(int(c) for c in np.unique(mask))
    what = f"val_transforms({size}) on a ({h}, {w}) mask with classes {classes_in}"
    out = run_transform(transforms.val_transforms(size), sample, what)
    values = np.unique(as_array(out["label"]))
    foreign = [v for v in values if v not in classes_in]
    if foreign:
        shown = ", ".join(f"{v:.3g}" for v in foreign[:5])
        fail(f"{what} gave mask values {shown}, which are not classes of that mask. A mask "
             f"holds class indices: class 1.5 or 0.33 means nothing, and it becomes a wrong "
             f"class when cast to an integer. Transforms meant for intensities (blending "
             f"neighbours when resizing, rescaling to [0, 1]) must not touch the mask's values.")
    check_shapes(out, 1, size, what)


@given(seed=st.integers(0, 2**31 - 1), cells=st.sampled_from([3, 4]),
       size=st.sampled_from([16, 24, 32]), channels=st.sampled_from([1, 3]))
def test_augmentation_moves_image_and_mask_together(seed, cells, size, channels):
    """Compose(augment()) on a channel-first sample: the image still names the mask's class
    at every pixel, whatever the random draw."""
    from monai.transforms import Compose

    mask, asymmetric = grid_mask(seed, cells, 3, size, size)
    if not asymmetric:
        return
    image = torch.from_numpy(image_from_mask(mask, channels)).permute(2, 0, 1)  # (C, H, W)
    label = torch.from_numpy(mask)[None].float()  # (1, H, W)
    pipeline = call(lambda: Compose(transforms.augment()), what="Compose(augment())")
    pipeline.set_random_state(seed=seed)
    what = f"augment() on a ({channels}, {size}, {size}) image and (1, {size}, {size}) mask"
    out = call(pipeline, {"image": image, "label": label}, what=what)
    got_image, got_label = as_array(out["image"]), as_array(out["label"])
    if got_image.shape[1:] != got_label.shape[1:]:
        fail(f"After augment() the image is {got_image.shape} and the mask {got_label.shape}: a "
             f"turn of one without the other. Every random spatial transform must move both.")
    agree = (got_image == got_label).all(axis=0).mean()
    if agree < 1:
        fail(f"After augment() (random seed {seed}) the image and its mask agree on only "
             f"{agree:.0%} of the pixels (the test's image is the mask itself, so they must agree "
             f"everywhere). A flip or turn that moves the image but not its mask teaches the "
             f"network that objects are where they are not. Each random spatial transform must "
             f"draw once and apply the same move to the image and to the label.")


def test_augmentation_changes_orientation():
    """augment() is really random: over 32 draws, several orientations of the image appear."""
    from monai.transforms import Compose

    mask, _ = grid_mask(3, 4, 3, 16, 16)
    sample = {"image": torch.from_numpy(mask)[None].float(), "label": torch.from_numpy(mask)[None]}
    pipeline = call(lambda: Compose(transforms.augment()), what="Compose(augment())")
    seen = set()
    for seed in range(32):
        pipeline.set_random_state(seed=seed)
        out = call(pipeline, dict(sample), what="augment() on a (1, 16, 16) image and mask")
        seen.add(as_array(out["image"]).tobytes())
    if len(seen) < 4:
        fail(f"Over 32 random draws augment() produced only {len(seen)} different orientations "
             f"of the image. Expected random flips and quarter turns (up to 8 orientations): "
             f"augmentation that never changes anything does not augment.")


@given(seed=st.integers(0, 2**31 - 1), h=st.integers(32, 96), w=st.integers(32, 96),
       cells=st.sampled_from([3, 4]), channels=st.sampled_from([1, 3]),
       size=st.sampled_from([32, 48]))
def test_training_pipeline_keeps_image_and_mask_aligned(seed, h, w, cells, channels, size):
    """train_transforms: build an image from its mask, transform both; away from class edges
    the image's brightness still names the mask's class at every pixel."""
    mask, asymmetric = grid_mask(seed, cells, 3, h, w)
    if not asymmetric:
        return
    sample = {"image": image_from_mask(mask, channels), "label": mask}
    pipeline = call(transforms.train_transforms, size, what=f"train_transforms({size})")
    pipeline.set_random_state(seed=seed)
    what = f"train_transforms({size}) on an image ({h}, {w}, {channels}) and a mask ({h}, {w})"
    out = run_transform(pipeline, sample, what)
    check_shapes(out, channels, size, what)
    image, label = as_array(out["image"]), as_array(out["label"])
    lo, hi = mask.min(), mask.max()
    named = image[0] * (hi - lo) + lo  # undo the [0, 1] scaling: the class each pixel shows
    inside = interior(label)
    agree = (np.abs(named - label[0]) < 1e-3)[inside].mean()
    if agree < 1:
        fail(f"{what} (random seed {seed}): away from the edges between classes, the image and "
             f"its mask agree on only {agree:.0%} of the pixels (the test's image is drawn from "
             f"the mask, so they must agree everywhere there). Whatever moves the image's pixels "
             f"must move the mask's pixels the same way, with the same random draw.")


def test_validation_transforms_are_not_random():
    """val_transforms gives the same output for the same sample, whatever the random state."""
    mask, _ = grid_mask(5, 4, 3, 40, 40)
    outs = []
    for seed in (0, 1, 2, 3):
        pipeline = transforms.val_transforms(32)
        pipeline.set_random_state(seed=seed)
        out = run_transform(pipeline, {"image": image_from_mask(mask, 1), "label": mask},
                            "val_transforms(32)")
        outs.append(as_array(out["label"]))
    if any(not np.array_equal(outs[0], o) for o in outs[1:]):
        fail("val_transforms(32) gave different masks for the same sample under different "
             "random seeds. Validation must measure the model on fixed data: augmentation "
             "belongs to the training split only.")


@pytest.mark.requires("test_preprocess_gives_channel_first_image_and_mask")
def test_transforms_resize_to_64_pixels_by_default():
    """preprocess(), train_transforms() and val_transforms() without a size give 64 x 64."""
    from monai.transforms import Compose

    mask, _ = grid_mask(1, 4, 3, 40, 50)
    for name, make in (("preprocess()", lambda: Compose(transforms.preprocess())),
                       ("train_transforms()", transforms.train_transforms),
                       ("val_transforms()", transforms.val_transforms)):
        pipeline = call(make, what=name)
        sample = {"image": image_from_mask(mask, 1), "label": mask}
        out = run_transform(pipeline, sample, f"{name} on a (40, 50, 1) image")
        image, label = tuple(out["image"].shape), tuple(out["label"].shape)
        if image != (1, 64, 64) or label != (1, 64, 64):
            fail(f"{name} without a size gave an image {image} and a mask {label}; expected "
                 f"(1, 64, 64) and (1, 64, 64): the default size is 64, the window that "
                 f"predict() and fit() use by default, so that a model sees at inference "
                 f"the size it was trained on.")


@pytest.mark.requires("test_preprocess_gives_channel_first_image_and_mask")
def test_transforms_give_plain_float32_tensors():
    """train_transforms and val_transforms end in plain float32 torch tensors, without
    MONAI's metadata (MetaTensor), for both the image and the mask."""
    mask, _ = grid_mask(2, 4, 3, 20, 20)
    for name, make in (("train_transforms(16)", transforms.train_transforms),
                       ("val_transforms(16)", transforms.val_transforms)):
        sample = {"image": image_from_mask(mask, 1), "label": mask}
        out = run_transform(call(make, 16, what=name), sample, f"{name} on a (20, 20) sample")
        kinds = {key: (type(out[key]).__name__, str(getattr(out[key], "dtype", None)))
                 for key in ("image", "label")}
        if any(kind != ("Tensor", "torch.float32") for kind in kinds.values()):
            fail(f"{name} gave (type, dtype) {kinds}; expected ('Tensor', 'torch.float32') "
                 f"for both: plain tensors batch and train faster than MONAI's MetaTensor, "
                 f"whose metadata (affine, file names) this exercise never reads.")


def orientation_counts(pipeline, draws: int) -> list[int]:
    """How often Compose(augment()) gave each of the 8 orientations of a (1, 8, 8) sample:
    the 4 that keep height and width (as is, the two flips, the half turn) first, then the 4
    that swap them (the quarter turns, the two transposes)."""
    square = np.arange(64, dtype=np.float32).reshape(8, 8)
    keep = [square, square[::-1], square[:, ::-1], square[::-1, ::-1]]
    swap = [np.rot90(square), np.rot90(square, 3), square.T, square[::-1, ::-1].T]
    counts = [0] * 8
    sample = {"image": torch.from_numpy(square)[None], "label": torch.from_numpy(square)[None]}
    tracking = get_track_meta()
    set_track_meta(False)  # plain tensors: 2-3 times faster, the same moves
    try:
        for _ in range(draws):
            out = call(pipeline, dict(sample), what="augment() on a (1, 8, 8) image and mask")
            got = as_array(out["image"])[0]
            which = [i for i, o in enumerate(keep + swap) if o.shape == got.shape
                     and np.array_equal(o, got)]
            if which:
                counts[which[0]] += 1
    finally:
        set_track_meta(tracking)
    return counts


@pytest.mark.requires("test_augmentation_moves_image_and_mask_together")
def test_augmentation_flips_each_axis_and_turns_half_the_time():
    """Over 360 draws, augment() gives each orientation as often as a flip of the height, a
    flip of the width and a turn by 1 to 3 quarters, each with probability 1/2, predict:
    each of the 4 orientations that keep height and width 1/6 of the time, each of the 4
    that swap them 1/12."""
    from monai.transforms import Compose

    pipeline = call(lambda: Compose(transforms.augment()), what="Compose(augment())")
    pipeline.set_random_state(seed=0)
    draws = 360
    counts = orientation_counts(pipeline, draws)
    expected = [draws / 6] * 4 + [draws / 12] * 4
    chi2 = sum((c - e) ** 2 / e for c, e in zip(counts, expected))
    if sum(counts) != draws or chi2 > 24:  # 7 degrees of freedom: p < 0.001 by chance
        fail(f"Over {draws} draws augment() gave the orientations (as is, flipped along the "
             f"height, along the width, half turn | quarter turn, three quarters, the two "
             f"transposes) {counts} times ({draws - sum(counts)} other results); expected "
             f"about {[round(e) for e in expected]}, as from a flip along the height, a flip "
             f"along the width and a quarter turn, each applied with probability 0.5. A "
             f"flip always or never applied, or two flips of the same axis, skews the "
             f"orientations the network learns from.")


# --- the network, the loss ----------------------------------------------------------------


@given(batch=st.integers(1, 3), depth=st.integers(1, 3), k=st.integers(1, 3),
       in_channels=st.sampled_from([1, 3]), classes=st.integers(2, 5),
       res_units=st.integers(0, 1))
def test_unet_output_shape(device, batch, depth, k, in_channels, classes, res_units):
    """build_unet maps (B, C_in, H, W) to (B, num_classes, H, W) when H, W divide by 2^depth."""
    channels = TINY[:1] + tuple(4 * 2**i for i in range(1, depth + 1))
    side = k * 2**depth
    net = call(model.build_unet, in_channels, classes, channels, res_units,
               what=f"build_unet({in_channels}, {classes}, {channels}, {res_units})").to(device)
    x = torch.rand(batch, in_channels, side, side + 2**depth, device=device)
    out = call(net, x, what=f"the U-Net on input {tuple(x.shape)}")
    expected = (batch, classes, side, side + 2**depth)
    if tuple(out.shape) != expected:
        fail(f"build_unet({in_channels}, {classes}, channels={channels}) on input "
             f"{tuple(x.shape)} returned {tuple(out.shape)}; expected {expected}: one score per "
             f"class for every pixel of the input.")


def test_build_unet_has_the_documented_levels():
    """build_unet() is MONAI's UNet for 1-channel images and 3 classes, with channels
    (16, 32, 64, 128), 2 residual units per block and a stride of 2 between levels; other
    channels get one stride of 2 per level after the first, without a warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nets = {"build_unet()": call(model.build_unet, what="build_unet()"),
                "build_unet(3, 5, (8, 16), 0)": call(model.build_unet, 3, 5, (8, 16), 0,
                                                      what="build_unet(3, 5, (8, 16), 0)")}
    expected = {"build_unet()": (1, 3, (16, 32, 64, 128), (2, 2, 2), 2),
                "build_unet(3, 5, (8, 16), 0)": (3, 5, (8, 16), (2,), 0)}
    for name, net in nets.items():
        got = tuple(getattr(net, a, None) for a in ("in_channels", "out_channels", "channels",
                                                    "strides", "num_res_units"))
        got = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in got)
        if got != expected[name]:
            fail(f"{name} built a UNet with (in_channels, out_channels, channels, strides, "
                 f"num_res_units) = {got}; expected {expected[name]}. The defaults are those "
                 f"the script's checkpoints are saved with (a checkpoint loads only into the "
                 f"same network), and each level after the first halves the image: one "
                 f"stride of 2 per level, as the docstring promises.")
    if caught:
        fail(f"build_unet warned: {str(caught[0].message)[:200]!r}. Expected MONAI to accept "
             f"its arguments as they are: one stride for each level after the first.")


def test_loss_takes_class_index_labels(device):
    """build_loss() compares logits (B, C, H, W) with labels (B, 1, H, W) of class indices."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g).to(device)
    labels = torch.randint(0, 3, (2, 1, 16, 16), generator=g).float().to(device)
    loss = call(model.build_loss(), logits, labels,
                what="build_loss() on logits (2, 3, 16, 16) and labels (2, 1, 16, 16)",
                why="The pipeline gives one class index per pixel, while Dice compares one 0/1 "
                    "mask per class with the matching channel of the logits: the labels must "
                    "become one mask per class inside the loss.")
    if loss.dim() != 0 or not torch.isfinite(loss):
        fail(f"build_loss() returned {loss}; expected one finite number for the batch.")


@pytest.mark.requires("test_loss_takes_class_index_labels")
def test_loss_ignores_a_constant_added_to_every_class_score(device):
    """Adding the same number to all C scores of a pixel changes no class probability, so
    it must not change the loss."""
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(2, 3, 16, 16, generator=g)).to(device)
    shift = (5 * torch.randn(2, 1, 16, 16, generator=g)).to(device)
    labels = torch.randint(0, 3, (2, 1, 16, 16), generator=g).float().to(device)
    loss_fn = model.build_loss()
    what = "build_loss() on logits (2, 3, 16, 16) and class-index labels (2, 1, 16, 16)"
    before = call(loss_fn, logits, labels, what=what).item()
    after = call(loss_fn, logits + shift, labels, what=what).item()
    if not np.isfinite([before, after]).all():
        fail(f"build_loss() gave {before} and {after}: expected finite losses.")
    if abs(before - after) > 1e-4 * max(1.0, abs(before)):
        fail(f"The loss went from {before:.4f} to {after:.4f} when the same number was added to "
             f"every class score of each pixel. The class probabilities (softmax over the "
             f"class axis) did not change, so neither should the loss. Dice must be computed on "
             f"probabilities that compete across classes, not on raw scores or on independent "
             f"per-class squashing.")


@pytest.mark.requires("test_loss_takes_class_index_labels",
                      "test_loss_ignores_a_constant_added_to_every_class_score")
def test_loss_is_small_for_a_confident_right_answer(device):
    """Confident logits for the true classes give a loss near 0; for wrong classes, a large one."""
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (2, 1, 16, 16), generator=g).float().to(device)
    right = 20 * one_hot(labels, 3)
    wrong = 20 * one_hot((labels + 1) % 3, 3)
    loss_fn = model.build_loss()
    what = "build_loss() on logits (2, 3, 16, 16) and class-index labels (2, 1, 16, 16)"
    good = call(loss_fn, right, labels, what=what).item()
    bad = call(loss_fn, wrong, labels, what=what).item()
    if not (good < 0.05 and bad > 0.5):
        fail(f"The loss is {good:.3f} for confident right logits and {bad:.3f} for confident "
             f"wrong ones; expected about 0 and clearly more than 0.5.")


@pytest.mark.requires("test_loss_takes_class_index_labels")
def test_every_parameter_gets_a_gradient(device):
    """One backward pass of the loss reaches every weight of the U-Net."""
    net = model.build_unet(1, 3, TINY, 1).to(device)
    x = torch.rand(2, 1, 16, 16, device=device)
    labels = torch.randint(0, 3, (2, 1, 16, 16)).float().to(device)
    loss = call(model.build_loss(), net(x), labels,
                what="build_loss() on the U-Net's logits (2, 3, 16, 16) and labels (2, 1, 16, 16)")
    assert_grads_flow(net, loss, "the U-Net")


# --- inference and the score ----------------------------------------------------------------


@given(h=st.integers(20, 80), w=st.integers(20, 80))
def test_predict_handles_any_image_size(device, h, w):
    """predict gives (B, C, H, W) logits for images whose size the U-Net alone cannot take."""
    net = model.build_unet(1, 3, TINY, 0).to(device)
    x = torch.rand(2, 1, h, w, device=device)
    out = call(model.predict, net, x, 32, what=f"predict() on images {tuple(x.shape)}, window 32",
               why="A U-Net halves and doubles sizes: any image must be cut into windows it takes.")
    if tuple(out.shape) != (2, 3, h, w):
        fail(f"predict() on images {tuple(x.shape)} returned {tuple(out.shape)}; expected "
             f"(2, 3, {h}, {w}): logits for every pixel of the input, whatever its size.")


class WindowSizes(torch.nn.Module):
    """A stand-in network that records the (H, W) of every window it is given, and how many
    windows each call holds, and answers 3 class scores per pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        self.batches.append(x.shape[0])
        return x.repeat(1, 3, 1, 1)


def test_predict_uses_64_pixel_windows_by_default(device):
    """predict(model, images) without roi_size cuts the images into 64 x 64 windows."""
    net = WindowSizes()
    x = torch.rand(1, 1, 100, 90, device=device)
    out = call(model.predict, net, x, what="predict(model, images (1, 1, 100, 90))")
    if set(net.sizes) != {(64, 64)} or tuple(out.shape) != (1, 3, 100, 90):
        fail(f"predict(model, images (1, 1, 100, 90)) showed the network windows of "
             f"{sorted(set(net.sizes))} and returned {tuple(out.shape)}; expected only "
             f"(64, 64) windows (the default roi_size, the size the script trains on) and "
             f"logits (1, 3, 100, 90).")


@pytest.mark.requires("test_predict_uses_64_pixel_windows_by_default")
def test_predict_runs_sw_batch_size_windows_at_a_time(device):
    """predict hands the network sw_batch_size windows per call (8 by default) until fewer
    remain: the 9 windows of a 128 x 128 image go as 8 and 1, or as 4, 4, 1 with 4."""
    x = torch.rand(1, 1, 128, 128, device=device)  # 3 x 3 windows of 64, overlapping by 16
    for options, expected in (({}, [8, 1]), ({"sw_batch_size": 4}, [4, 4, 1])):
        net = WindowSizes()
        shown = ", ".join(f"{k}={v}" for k, v in options.items())
        what = f"predict(model, images (1, 1, 128, 128){', ' + shown if shown else ''})"
        call(model.predict, net, x, what=what, **options)
        if net.batches != expected:
            per = options.get("sw_batch_size", 8)
            fail(f"{what} ran the network on batches of {net.batches} windows; expected "
                 f"{expected}: the image makes 9 windows of 64 x 64, and each call takes "
                 f"sw_batch_size of them ({per}{' by default' if not options else ''}) until "
                 f"fewer remain. The number of windows per call "
                 f"decides the memory one forward pass needs, and on a GPU too few leave it "
                 f"idle: a caller who sets it (or relies on the default) must get it.")


def test_predict_builds_no_autograd_graph(device):
    """predict's logits carry no autograd graph, even with gradients enabled around it."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1).to(device)
    x = torch.rand(2, 1, 32, 32, device=device)
    out = call(model.predict, net, x, 32, what="predict() on images (2, 1, 32, 32), window 32")
    if torch.as_tensor(out).requires_grad:
        fail("predict() returned logits that require a gradient: it recorded an autograd "
             "graph of every window, which holds all their activations in memory. Inference "
             "needs no gradients: run it under torch.no_grad().")


def batchnorm_net(seed: int = 0) -> torch.nn.Module:
    """A stand-in segmentation net, (B, 1, H, W) -> (B, 3, H, W), whose output depends on the
    mode: its BatchNorm holds statistics far from those of any one batch."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3))
    with torch.no_grad():
        net[1].running_mean.fill_(2.0)
        net[1].running_var.fill_(0.25)
    return net


def test_predict_runs_the_model_in_eval_mode(device):
    """predict gives the eval-mode logits even when handed a model in training mode."""
    net = batchnorm_net().to(device).train()
    x = torch.rand(2, 1, 32, 32, device=device)
    out = call(model.predict, net, x, 32, what="predict() on a model in training mode")
    with torch.no_grad():
        expected = copy.deepcopy(net).eval()(x)
    assert_finite(torch.as_tensor(out), "predict()'s logits")
    if not torch.allclose(out, expected, atol=1e-4):
        fail("predict() on a model left in training mode returned logits other than the "
             "model's eval-mode logits. Inference runs in eval mode: BatchNorm must use its "
             "stored statistics (and dropout must be off), whatever mode the model was in.")


def test_predict_of_one_window_is_the_model_output(device):
    """For an image exactly the window's size, predict returns the network's own logits."""
    net = model.build_unet(1, 3, TINY, 1).to(device)
    x = torch.rand(2, 1, 32, 32, device=device)
    out = call(model.predict, net, x, 32, what="predict() on images (2, 1, 32, 32), window 32")
    with torch.no_grad():
        expected = net.eval()(x)
    assert_finite(torch.as_tensor(out), "predict()'s logits")
    if not torch.allclose(out, expected, atol=1e-4):
        fail("predict() on an image exactly one window in size should give the network's "
             "logits for it, in eval mode; it returned something else.")


def dice_case(seed: int, batch: int, classes: int, side: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch, 1, side, side), generator=g)
    labels[:, 0, 0, :classes] = torch.arange(classes)  # every class appears in every image
    return g, labels.float()


@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), classes=st.integers(2, 5),
       side=st.integers(6, 16))
def test_dice_of_a_perfect_prediction_is_one(device, seed, batch, classes, side):
    """Logits whose highest score is the true class at every pixel score Dice 1 per image,
    whatever their scale or offset."""
    g, labels = dice_case(seed, batch, classes, side)
    offset = 20 * torch.rand(batch, 1, side, side, generator=g) - 10
    logits = 3 * one_hot(labels, classes) + offset + 0.1 * torch.rand(labels.shape, generator=g)
    got = call(model.dice_per_image, logits.to(device), labels.to(device), classes,
               what=f"dice_per_image() on logits {tuple(logits.shape)}")
    got = torch.as_tensor(got).detach().cpu().double().flatten()
    if got.shape != (batch,) or not torch.allclose(got, torch.ones(batch, dtype=torch.double)):
        fail(f"dice_per_image() scored a perfect prediction {[round(v, 4) for v in got.tolist()]}; "
             f"expected 1.0 for "
             f"each of the {batch} images. The prediction of a pixel is its highest-scoring "
             f"class; raw scores are not probabilities, and their size says nothing by itself.")


@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), classes=st.integers(2, 5),
       side=st.integers(6, 16))
def test_dice_matches_a_hand_count(device, seed, batch, classes, side):
    """dice_per_image equals 2|P & T| / (|P| + |T|), averaged over the foreground classes."""
    g, labels = dice_case(seed, batch, classes, side)
    logits = torch.randn(batch, classes, side, side, generator=g) + 2 * one_hot(labels, classes)
    got = call(model.dice_per_image, logits.to(device), labels.to(device), classes,
               what=f"dice_per_image() on logits {tuple(logits.shape)}")
    got = torch.as_tensor(got).detach().cpu().double().flatten()
    expected = hand_dice(logits.argmax(dim=1), labels[:, 0], classes)
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-5):
        fail(f"dice_per_image() gave {[round(v, 4) for v in got.tolist()]}; counting by hand "
             f"gives {[round(v, 4) for v in expected.tolist()]}. For each image and each "
             f"foreground class: predicted mask P (pixels whose best class it is), true mask T, "
             f"Dice = 2|P & T| / (|P| + |T|); then the mean over the classes.")


# --- training -------------------------------------------------------------------------------


def batch_of_circles(n: int = 4, side: int = 16, seed: int = 0):
    """(n, 1, side, side) images and (n, 1, side, side) float labels of classes 0, 1, 2."""
    rng = np.random.RandomState(seed)
    pairs = [create_test_image_2d(side, side, num_objs=3, rad_max=side // 4, rad_min=2,
                                  num_seg_classes=2, random_state=rng) for _ in range(n)]
    images = torch.stack([torch.from_numpy(i).float()[None] for i, _ in pairs])
    labels = torch.stack([torch.from_numpy(m).float()[None] for _, m in pairs])
    return images, labels


def as_loader(images, labels, batch_size: int):
    """A plain DataLoader of {"image", "label"} dictionaries, in order."""
    samples = [{"image": x, "label": y} for x, y in zip(images, labels)]
    return torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=False)


@pytest.mark.requires("test_loss_takes_class_index_labels")
def test_train_step_reports_the_loss_of_its_batch(device):
    """train_step returns build_loss() of the model's logits and the labels before the
    update, and the update lowers that loss."""
    torch.manual_seed(0)
    net = model.build_unet(1, 3, TINY, 1).to(device)
    images, labels = (t.to(device) for t in batch_of_circles())
    loss_fn = model.build_loss()
    with torch.no_grad():
        expected = loss_fn(copy.deepcopy(net)(images), labels).item()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = call(train.train_step, net, optimizer, loss_fn, images, labels,
                what="train_step(model, optimizer, build_loss(), images, labels)")
    loss = torch.as_tensor(loss).detach().float().cpu()
    assert_finite(loss, "the loss train_step returned")
    if loss.numel() != 1 or abs(loss.item() - expected) > 1e-4:
        fail(f"train_step returned {loss.flatten().tolist()[:4]}; the loss function it was "
             f"given, applied to the model's logits for these images and to their labels, is "
             f"{expected:.4f}. The loss a training loop reports must be the one it minimises, "
             f"between the model's output and the labels.")
    with torch.no_grad():
        after = loss_fn(copy.deepcopy(net)(images), labels).item()
    if not after < expected:
        fail(f"After train_step the loss on the same batch went from {expected:.4f} to "
             f"{after:.4f}; one step must lower it (the optimizer must step the model whose "
             f"loss was differentiated).")


@pytest.mark.requires("test_loss_takes_class_index_labels")
def test_train_step_autocasts_only_when_asked(device):
    """amp_dtype=torch.bfloat16 runs the U-Net in bfloat16, None in float32; the loss is a
    float32 number either way (CPU autocast stands in for the GPU's here)."""
    for amp_dtype in (torch.bfloat16, None):
        torch.manual_seed(0)
        net = model.build_unet(1, 3, TINY, 1).to(device)
        seen = []
        net.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        images, labels = (t.to(device) for t in batch_of_circles())
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss = call(train.train_step, net, optimizer, model.build_loss(), images, labels,
                    amp_dtype, what=f"train_step(..., amp_dtype={amp_dtype})")
        loss = torch.as_tensor(loss).detach()
        assert_finite(loss.float(), f"train_step's loss with amp_dtype={amp_dtype}")
        wanted = amp_dtype or torch.float32
        weights = {p.dtype for p in net.parameters()}
        if seen != [wanted] or loss.dtype != torch.float32 or weights != {torch.float32}:
            fail(f"train_step(..., amp_dtype={amp_dtype}): the logits were computed in {seen}, "
                 f"the loss is {loss.dtype} and the weights {sorted(map(str, weights))}. "
                 f"Expected one forward pass in {wanted} (autocast on exactly when amp_dtype "
                 f"is given), the loss in float32 and float32 weights.")


def test_train_step_leaves_parameters_its_loss_does_not_reach(device):
    """A parameter the loss does not reach keeps its value: train_step clears the old
    gradients to None (not to zeros), so the optimizer skips it, weight decay included."""
    net = torch.nn.ModuleDict({"used": torch.nn.Linear(4, 3), "spare": torch.nn.Linear(4, 3)})
    net = net.to(device)
    forward = lambda x: net["used"](x)  # noqa: E731 - "spare" is a head for another task
    for p in net["spare"].parameters():
        p.grad = torch.ones_like(p)  # left over from a step on the other task
    spare = [p.detach().clone() for p in net["spare"].parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.1)
    x, y = torch.randn(6, 4, device=device), torch.arange(6, device=device) % 3
    call(train.train_step, forward, optimizer, F.cross_entropy, x, y,
         what="train_step(model, SGD(weight_decay=0.1), cross_entropy, x, y)")
    moved = [i for i, (p, q) in enumerate(zip(net["spare"].parameters(), spare))
             if not torch.equal(p.detach(), q)]
    if moved:
        fail(f"train_step moved {len(moved)} tensor(s) of a head that its loss does not "
             f"reach (it had gradients from an earlier step). The old gradients must be "
             f"cleared to None, not to zeros: a zero gradient still lets weight decay (AdamW's "
             f"too) and momentum move a weight, while the optimizer skips a parameter without "
             f"one.")


class NearestClass(torch.nn.Module):
    """A fixed 'network' for the metric: each pixel's logits say how close its brightness is
    to each class index 0, 1, 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(3, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return -10 * (x - classes) ** 2  # (B, 1, H, W) -> (B, 3, H, W)


@pytest.mark.requires("test_dice_matches_a_hand_count")
def test_evaluate_averages_dice_over_every_image(device):
    """evaluate() is the mean Dice over all images of the loader, however it is batched."""
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (7, 1, 16, 16), generator=g).float()
    labels[:, 0, 0, :3] = torch.arange(3.0)  # every class in every image
    noise = torch.linspace(0.1, 0.6, 7).view(7, 1, 1, 1)  # some images harder than others
    images = labels + noise * torch.randn(labels.shape, generator=g)
    net = NearestClass()
    expected = hand_dice(net(images).argmax(dim=1), labels[:, 0], 3).mean().item()
    got = call(train.evaluate, net, as_loader(images, labels, 3), 3, 16, device,
               what="evaluate() on 7 images in batches of 3, 3, 1")
    if not abs(got - expected) <= 1e-4:
        fail(f"evaluate() gave {got:.4f} on 7 images in batches of 3, 3 and 1; the mean of "
             f"the 7 images' Dice is {expected:.4f}. Every image counts once: a mean of the "
             f"batch means over-weights the last, smaller batch, and a loop that stops early "
             f"scores only part of the validation set.")


def test_evaluate_runs_with_autograd_off_throughout(device):
    """evaluate() keeps autograd off for its whole loop, loading included: a loader with
    num_workers=0 runs its transforms and collation inside that loop."""
    images, labels = batch_of_circles(n=4, side=16)
    modes = []

    def batches():  # a loader: notes the grad mode in force whenever it makes a batch
        for start in (0, 2):
            modes.append(torch.is_grad_enabled())
            yield {"image": images[start:start + 2], "label": labels[start:start + 2]}

    call(train.evaluate, NearestClass(), batches(), 3, 16, device,
         what="evaluate() on a loader of 2 batches")
    if modes != [False, False]:
        fail(f"While evaluate() fetched its batches, torch.is_grad_enabled() was {modes}; "
             f"expected [False, False]: evaluation never calls backward, so its whole loop "
             f"belongs under torch.no_grad(), not only the forward pass. The validation "
             f"transforms and collation run inside that loop (num_workers=0 runs them in this "
             f"process), and with autograd on, any of their tensor operations on a tensor "
             f"that requires grad records a graph that nothing will use.")


@pytest.mark.trains
@pytest.mark.requires("test_train_step_reports_the_loss_of_its_batch")
def test_fit_records_each_epoch_and_its_mean_training_loss(device):
    """fit(epochs=2, lr=0) returns records for epochs 1 and 2, each with the mean loss of the
    epoch's batches, and (lr=0) leaves the weights where they were."""
    torch.manual_seed(0)
    net = model.build_unet(1, 3, TINY, 1)
    images, labels = batch_of_circles(8, seed=4)
    loader = as_loader(images, labels, 4)
    with torch.no_grad():
        copy_ = copy.deepcopy(net)
        loss_fn = model.build_loss()
        expected = np.mean([loss_fn(copy_(images[i:i + 4]), labels[i:i + 4]).item()
                            for i in (0, 4)])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    history = call(train.fit, net, loader, loader, 3, epochs=2, lr=0.0, device=device,
                   roi_size=16, what="fit(..., epochs=2, lr=0.0) on 8 images")
    epochs = [h.get("epoch") for h in history] if isinstance(history, list) else history
    if epochs != [1, 2]:
        fail(f"fit(epochs=2) returned records for the epochs {epochs}; expected [1, 2]: one "
             f"record per epoch, numbered from 1.")
    moved = [k for k, v in net.state_dict().items() if not torch.equal(v.cpu(), before[k])]
    if moved:
        fail(f"fit(..., lr=0.0) changed {len(moved)} tensors of the model (e.g. {moved[:2]}). "
             f"Expected the learning rate it was given to reach the optimizer: with lr=0 "
             f"nothing may move.")
    losses = [float(h["loss"]) for h in history]
    if not all(abs(v - expected) <= 1e-4 for v in losses):
        fail(f"fit reported the training losses {[round(v, 4) for v in losses]}; the 2 batches "
             f"of each epoch have a mean loss of {expected:.4f} (with lr=0 the weights cannot "
             f"move). An epoch's loss is the mean over its batches.")


@pytest.mark.trains
@pytest.mark.requires("test_loss_takes_class_index_labels")
def test_fit_trains_in_train_mode_after_each_validation(device):
    """fit() runs training steps in train mode and validation in eval mode, every epoch."""
    net = batchnorm_net()
    calls = []
    net.register_forward_pre_hook(
        lambda m, i: calls.append(("train" if torch.is_grad_enabled() else "validate",
                                   m.training)))
    images, labels = batch_of_circles(4, seed=5)
    loader = as_loader(images, labels, 2)
    call(train.fit, net, loader, loader, 3, epochs=2, lr=1e-3, device=device, roi_size=16,
         what="fit(..., epochs=2) on a model with BatchNorm")
    wrong = sorted({"training steps in eval mode" if kind == "train" else
                    "validation in train mode" for kind, mode in calls
                    if mode != (kind == "train")})
    steps = sum(kind == "train" for kind, _ in calls)
    if wrong or steps != 4:
        fail(f"fit(epochs=2) on 2 batches ran {steps} training forward passes (expected 4), "
             f"and found: {wrong or 'nothing wrong with the modes'}. Training steps run in "
             f"train mode and "
             f"validation in eval mode; since validation switches the model to eval, training "
             f"must switch it back at the start of every epoch, or BatchNorm and dropout "
             f"behave as in inference from the second epoch on.")


def two_conv_net(seed: int = 0) -> torch.nn.Module:
    """(B, 1, H, W) -> (B, 3, H, W): its second convolution's weight (3, 4, 3, 3) shows the
    memory format the model is in."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1),
                               torch.nn.Conv2d(4, 3, 3, padding=1))


def memory_format_of(net: torch.nn.Module) -> str:
    weight = net[1].weight
    if weight.is_contiguous():
        return "contiguous"
    return "channels_last" if weight.is_contiguous(memory_format=torch.channels_last) else "other"


@pytest.mark.requires("test_dice_matches_a_hand_count")
def test_evaluate_autocasts_only_when_asked(device):
    """evaluate(..., amp_dtype=torch.bfloat16) runs the network in bfloat16; without
    amp_dtype, in float32."""
    images, labels = batch_of_circles(2, seed=7)
    for amp_dtype in (None, torch.bfloat16):
        net = two_conv_net().to(device)
        seen = []
        net.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        call(train.evaluate, net, as_loader(images, labels, 2), 3, 16, torch.device(device),
             amp_dtype, what=f"evaluate(..., amp_dtype={amp_dtype})")
        wanted = amp_dtype or torch.float32
        if set(seen) != {wanted}:
            fail(f"evaluate(..., amp_dtype={amp_dtype}) ran the network in "
                 f"{sorted(map(str, set(seen)))}; expected {wanted}: autocast on exactly when "
                 f"amp_dtype is given.")


@pytest.mark.requires("test_run_steps_takes_full_batches_in_turn")
def test_run_steps_uses_channels_last_only_when_asked(device):
    """run_steps leaves the model's memory format alone by default, and puts it in
    channels-last with channels_last=True."""
    images, labels = (t.to(device) for t in batch_of_circles(2, seed=8))
    for kwargs, wanted in (({}, "contiguous"), ({"channels_last": True}, "channels_last")):
        net = two_conv_net().to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
        call(train.run_steps, net, optimizer, model.build_loss(), images, labels, 1, **kwargs,
             what=f"run_steps(..., steps=1{''.join(f', {k}={v}' for k, v in kwargs.items())})")
        if memory_format_of(net) != wanted:
            fail(f"After run_steps(...{', channels_last=True' if kwargs else ''}) the model's "
                 f"weights are in {memory_format_of(net)} memory; expected {wanted}. "
                 f"Channels-last is a GPU speed-up that the caller asks for "
                 f"(channels_last=False by default), and then the model must be converted.")


@pytest.mark.requires("test_run_steps_takes_full_batches_in_turn")
def test_run_steps_compiles_only_when_asked(device, monkeypatch):
    """run_steps trains the model itself by default, and what torch.compile made of it with
    compile=True (torch.compile replaced here by a wrapper that counts its calls)."""
    made = []

    class Compiled(torch.nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net, self.calls = net, 0
            made.append(self)

        def forward(self, x):
            self.calls += 1
            return self.net(x)

    monkeypatch.setattr(torch, "compile", lambda net, *args, **kwargs: Compiled(net))
    images, labels = (t.to(device) for t in batch_of_circles(2, seed=9))
    for compile_ in (False, True):
        made.clear()
        net = two_conv_net().to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
        kwargs = {"compile": True} if compile_ else {}
        call(train.run_steps, net, optimizer, model.build_loss(), images, labels, 2, **kwargs,
             what=f"run_steps(..., steps=2{', compile=True' if compile_ else ''})")
        seen = [(m.net is net, m.calls) for m in made]
        if seen != ([(True, 2)] if compile_ else []):
            fail(f"run_steps(..., steps=2{', compile=True' if compile_ else ''}) compiled "
                 f"{len(made)} time(s) (calls of the compiled model: "
                 f"{[c for _, c in seen]}); expected "
                 f"{'one compilation of the model, trained for both steps' if compile_ else 'none'}"
                 f". Compiling takes seconds to minutes: only when the caller asks for it.")


@pytest.mark.requires("test_run_steps_takes_full_batches_in_turn")
def test_run_steps_takes_all_images_when_the_batch_is_larger(device):
    """run_steps(images (3, ...), steps=2, batch_size=8) trains on all 3 images each step."""
    net = batchnorm_net().to(device)
    seen = []
    net.register_forward_pre_hook(lambda m, i: seen.append(len(i[0])))
    images, labels = (t.to(device) for t in batch_of_circles(3, seed=10))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    call(train.run_steps, net, optimizer, model.build_loss(), images, labels, 2, batch_size=8,
         what="run_steps(..., steps=2, batch_size=8) on 3 images")
    if seen != [3, 3]:
        fail(f"run_steps(..., steps=2, batch_size=8) on 3 images trained on batches of "
             f"{seen} images; expected [3, 3]: a batch larger than the data is all the data.")


@pytest.mark.trains
@pytest.mark.requires("test_fit_records_each_epoch_and_its_mean_training_loss")
def test_fit_defaults_match_its_signature(device, capsys):
    """fit(model, train, val, num_classes) trains as with epochs=10 and lr=1e-3, validates
    in 64 x 64 windows, keeps the model's memory format contiguous and prints nothing."""
    images, labels = batch_of_circles(2, seed=11)
    loader = as_loader(images, labels, 2)
    net, twin = two_conv_net(), two_conv_net()
    windows = []
    net.register_forward_pre_hook(
        lambda m, i: None if torch.is_grad_enabled() else windows.append(tuple(i[0].shape[-2:])))
    history = call(train.fit, net, loader, loader, 3, device=device,
                   what="fit(model, loader, loader, 3, device=device)")
    said = capsys.readouterr()
    call(train.fit, twin, loader, loader, 3, epochs=10, lr=1e-3, device=device,
         what="fit(..., epochs=10, lr=1e-3)")
    capsys.readouterr()
    if len(history) != 10:
        fail(f"fit without epochs returned {len(history)} records; its signature promises 10 "
             f"epochs by default.")
    if not all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.parameters())):
        fail("fit without lr ended with other weights than fit(..., epochs=10, lr=1e-3) from "
             "the same start: the default learning rate is 1e-3.")
    if set(windows) != {(64, 64)}:
        fail(f"fit without roi_size validated the 16 x 16 images in windows of "
             f"{sorted(set(windows))}; expected (64, 64), the default roi_size.")
    if memory_format_of(net) != "contiguous":
        fail(f"fit without channels_last left the model in {memory_format_of(net)} memory; "
             f"expected the ordinary contiguous format: channels-last is for GPUs, when asked.")
    if said.out.strip() or said.err.strip():
        fail(f"fit without progress printed {(said.out + said.err).strip()[:160]!r}; expected "
             f"silence: progress is False by default, for logs, pipes and tests.")


@pytest.mark.trains
@pytest.mark.requires("test_fit_records_each_epoch_and_its_mean_training_loss")
def test_fit_prints_one_line_per_epoch_when_asked(device, capsys):
    """fit(..., epochs=2, progress=True) prints 'epoch N: loss L, validation Dice D' for
    each epoch with that epoch's record, and draws no bar when stderr is not a terminal."""
    images, labels = batch_of_circles(2, seed=12)
    loader = as_loader(images, labels, 2)
    history = call(train.fit, two_conv_net(), loader, loader, 3, epochs=2, lr=1e-2,
                   device=device, roi_size=16, progress=True,
                   what="fit(..., epochs=2, progress=True)")
    said = capsys.readouterr()
    lines = [line for line in said.out.splitlines() if line.startswith("epoch")]
    wanted = [f"epoch {h['epoch']}: loss {h['loss']:.4f}, validation Dice {h['dice']:.3f}"
              for h in history]
    if lines != wanted:
        fail(f"fit(..., epochs=2, progress=True) printed {lines}; from its records expected "
             f"{wanted}: each epoch's line shows that epoch's loss and Dice.")
    if "epoch 1/2" in said.err or "it/s" in said.err:
        fail("fit(..., progress=True) drew a progress bar although stderr is not a terminal. "
             "In a log file or a pipe, every update of a bar becomes another line of noise.")


DICE_THRESHOLD = 0.6  # measured: see reference/10_unet/bugs.toml


def circles(n: int, seed: int) -> list[dict]:
    """MONAI's synthetic images: noisy circles of classes 1 and 2 (1 is dimmer) on class 0."""
    rng = np.random.RandomState(seed)
    pairs = [create_test_image_2d(64, 64, num_objs=6, rad_max=10, rad_min=4, noise_max=0.5,
                                  num_seg_classes=2, random_state=rng) for _ in range(n)]
    return [{"image": image[..., None].astype(np.float32), "label": mask.astype(np.int64)}
            for image, mask in pairs]


@pytest.fixture(scope="module")
def trained(device):
    """A small U-Net trained by fit() for 6 epochs on 32 synthetic images; 16 held out."""
    from monai.data import DataLoader, Dataset

    torch.set_num_threads(1)  # module fixtures run before one_cpu_thread
    train_set = Dataset(circles(32, seed=100), transform=transforms.train_transforms(64))
    val_set = Dataset(circles(16, seed=200), transform=transforms.val_transforms(64))
    train_loader = DataLoader(train_set, batch_size=8, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=16)
    net = model.build_unet(1, 3, (8, 16, 32), 1)
    history = call(train.fit, net, train_loader, val_loader, 3, epochs=6, lr=3e-2,
                   device=device, roi_size=64, what="fit() on 32 synthetic images")
    batch = next(iter(val_loader))
    with torch.no_grad():
        logits = net.to(device).eval()(batch["image"].to(device)).cpu()
    dice = hand_dice(logits.argmax(dim=1), batch["label"][:, 0], 3).mean().item()
    return history, dice


@pytest.mark.trains
@pytest.mark.requires("test_preprocess_gives_channel_first_image_and_mask",
                      "test_augmentation_moves_image_and_mask_together",
                      "test_loss_takes_class_index_labels",
                      "test_loss_ignores_a_constant_added_to_every_class_score",
                      "test_train_step_reports_the_loss_of_its_batch")
def test_training_reaches_dice_on_held_out_images(trained):
    """fit() trains the U-Net to a measured Dice on held-out synthetic images."""
    _, dice = trained
    if not dice >= DICE_THRESHOLD:
        fail(f"After fit() the U-Net reaches a mean Dice of {dice:.3f} on 16 held-out images; "
             f"expected at least {DICE_THRESHOLD} (the reference solution reaches it on every "
             f"seed we measured). If the tests above pass, look at what reaches the loss: are "
             f"the training images and masks still in step after augmentation?")


@pytest.mark.trains
@pytest.mark.requires("test_dice_of_a_perfect_prediction_is_one", "test_dice_matches_a_hand_count")
def test_fit_reports_the_validation_dice(trained):
    """fit()'s last record holds the validation Dice of the trained model."""
    history, dice = trained
    if not history or "dice" not in history[-1]:
        fail(f"fit() returned {history!r}; expected one record per epoch with a 'dice' entry.")
    reported = float(history[-1]["dice"])
    if not abs(reported - dice) <= 0.02:
        fail(f"fit() reports a validation Dice of {reported:.3f}, but counting by hand on the "
             f"same images gives {dice:.3f}.")


@pytest.mark.trains
@pytest.mark.requires("test_loss_takes_class_index_labels",
                      "test_loss_ignores_a_constant_added_to_every_class_score")
def test_run_steps_learns_one_batch(device):
    """run_steps(..., channels_last=True) drives the loss on one small batch down."""
    rng = np.random.RandomState(0)
    pairs = [create_test_image_2d(32, 32, num_objs=3, rad_max=8, num_seg_classes=2,
                                  random_state=rng) for _ in range(4)]
    images = torch.stack([torch.from_numpy(i).float()[None] for i, _ in pairs]).to(device)
    labels = torch.stack([torch.from_numpy(m).float()[None] for _, m in pairs]).to(device)
    net = model.build_unet(1, 3, TINY, 1).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = call(train.run_steps, net, optimizer, model.build_loss(), images, labels, 40,
                  batch_size=4, channels_last=True, what="run_steps() for 40 steps")
    losses = torch.as_tensor(losses).detach().cpu()
    if losses.shape != (40,) or not torch.isfinite(losses).all():
        fail(f"run_steps() returned {losses}; expected 40 finite losses, one per step.")
    if losses[-5:].mean() > 0.5 * losses[:5].mean():
        fail(f"run_steps() on one batch of 4 images: the loss went from {losses[:5].mean():.3f} "
             f"to {losses[-5:].mean():.3f}; expected it to at least halve.")


@pytest.mark.requires("test_loss_takes_class_index_labels")
def test_run_steps_takes_full_batches_in_turn(device):
    """run_steps(images (8, ...), steps=5, batch_size=2) trains on images 0-1, 2-3, 4-5, 6-7,
    then 0-1 again: every image in turn, in full batches."""
    net = batchnorm_net().to(device)
    seen = []
    net.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    images, labels = (t.to(device) for t in batch_of_circles(8, seed=6))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    call(train.run_steps, net, optimizer, model.build_loss(), images, labels, 5, batch_size=2,
         what="run_steps(..., steps=5, batch_size=2) on 8 images")
    order = [[next((j for j in range(8) if torch.equal(img, images[j])), None) for img in x]
             for x in seen]
    if order != [[0, 1], [2, 3], [4, 5], [6, 7], [0, 1]]:
        fail(f"run_steps(..., steps=5, batch_size=2) on 8 images trained on the images "
             f"{order} (None: not one of the 8); expected [[0, 1], [2, 3], [4, 5], [6, 7], "
             f"[0, 1]]. A benchmark must time full batches of the size it was given, taking "
             f"every image in turn.")


@pytest.mark.gpu
@pytest.mark.trains
def test_run_steps_compiled_in_bfloat16_on_cuda(device):
    """On CUDA, run_steps with bfloat16 autocast, channels-last and torch.compile learns."""
    net = model.build_unet(1, 3, TINY, 1).to(device)
    images = torch.rand(8, 1, 32, 32, device=device)
    labels = (images > 0.5).float() + (images > 0.8).float()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = call(train.run_steps, net, optimizer, model.build_loss(), images, labels, 30,
                  amp_dtype=torch.bfloat16, channels_last=True, compile=True,
                  what="run_steps() compiled, in bfloat16")
    if not torch.isfinite(losses).all() or losses[-5:].mean() > losses[:5].mean():
        fail(f"run_steps() in bfloat16 did not learn: losses {losses[:3].tolist()} ... "
             f"{losses[-3:].tolist()}.")


# --- the data and the script ----------------------------------------------------------------


def write_sbd(root, masks: list[np.ndarray]) -> None:
    """A tiny SBD in the layout torchvision reads: img/*.jpg, cls/*.mat, train.txt."""
    from PIL import Image
    from scipy.io import savemat

    (root / "img").mkdir(parents=True)
    (root / "cls").mkdir()
    names = [f"2008_{i:06d}" for i in range(len(masks))]
    palette = np.random.default_rng(0).integers(0, 256, size=(21, 3), dtype=np.uint8)
    for name, mask in zip(names, masks):
        Image.fromarray(palette[mask]).save(root / "img" / f"{name}.jpg")
        savemat(root / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": mask.astype(np.uint8)}})
    (root / "train.txt").write_text("\n".join(names) + "\n")


def test_synthetic_pairs_follow_their_arguments():
    """synthetic_pairs(n, size, num_classes, seed): n pairs of a (size, size, 1) float32 image
    and a (size, size) int64 mask of classes 0 .. num_classes - 1, the same for the same seed."""
    pairs = call(data.synthetic_pairs, 3, 24, 4, seed=5,
                 what="synthetic_pairs(3, size=24, num_classes=4, seed=5)")
    shapes = [(i.shape, i.dtype, m.shape, m.dtype) for i, m in pairs]
    wanted = [((24, 24, 1), np.float32, (24, 24), np.int64)] * 3
    if shapes != wanted:
        fail(f"synthetic_pairs(3, size=24, ...) gave (image shape, dtype, mask shape, dtype) "
             f"{shapes}; expected {wanted[0]} three times: channel-last images as from disk, "
             f"and masks of class indices without a channel axis.")
    classes = sorted({int(c) for _, m in pairs for c in np.unique(m)})
    if classes != [0, 1, 2, 3]:
        fail(f"synthetic_pairs(..., num_classes=4) gave masks with the classes {classes}; "
             f"expected the background 0 and the classes 1, 2, 3, and nothing else: the "
             f"network has num_classes outputs, one per class the masks use.")
    again = call(data.synthetic_pairs, 3, 24, 4, seed=5, what="synthetic_pairs(..., seed=5)")
    other = call(data.synthetic_pairs, 3, 24, 4, seed=6, what="synthetic_pairs(..., seed=6)")
    same = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(pairs, again))
    if not same or np.array_equal(pairs[0][1], other[0][1]):
        fail(f"synthetic_pairs with seed 5 twice gave {'the same' if same else 'different'} "
             f"data, and seed 6 gave {'the same' if same else 'other'} masks. Expected the "
             f"same data for the same seed and other data for another: the script draws its "
             f"training and validation sets with different seeds, so that they are distinct "
             f"and reproducible.")


@pytest.mark.requires("test_synthetic_pairs_follow_their_arguments")
def test_synthetic_pairs_defaults_match_the_signature():
    """synthetic_pairs(n) gives what synthetic_pairs(n, 64, 3, noise=0.5, seed=0) gives."""
    plain = call(data.synthetic_pairs, 2, what="synthetic_pairs(2)")
    full = call(data.synthetic_pairs, 2, 64, 3, noise=0.5, seed=0,
                what="synthetic_pairs(2, 64, 3, noise=0.5, seed=0)")
    if not all(np.array_equal(a, b) for p, q in zip(plain, full) for a, b in zip(p, q)):
        fail("synthetic_pairs(2) differs from synthetic_pairs(2, 64, 3, noise=0.5, seed=0): "
             "the defaults are those of its signature (64 pixels, 3 classes, noise 0.5, seed "
             "0), which the script and its help rely on.")


@pytest.mark.requires("test_synthetic_pairs_follow_their_arguments")
def test_synthetic_pairs_are_monai_circles_scaled_to_the_size():
    """Each pair is MONAI's create_test_image_2d with 6 circles of radius size // 16 (at
    least 2) to size // 6 (at least 4), drawn in turn from one RandomState(seed)."""
    for size in (18, 24, 32, 64, 120):
        got = call(data.synthetic_pairs, 2, size, 3, seed=7,
                   what=f"synthetic_pairs(2, {size}, 3, seed=7)")
        rng = np.random.RandomState(7)
        wanted = [create_test_image_2d(size, size, num_objs=6, rad_max=max(size // 6, 4),
                                       rad_min=max(size // 16, 2), noise_max=0.5,
                                       num_seg_classes=2, random_state=rng) for _ in range(2)]
        same = [np.array_equal(m, w[1]) and np.allclose(i[..., 0], w[0])
                for (i, m), w in zip(got, wanted)]
        if not all(same):
            fail(f"synthetic_pairs(2, {size}, 3, seed=7) is not MONAI's create_test_image_2d("
                 f"{size}, {size}, num_objs=6, rad_max={max(size // 6, 4)}, rad_min="
                 f"{max(size // 16, 2)}, noise_max=0.5, num_seg_classes=2) drawn twice from "
                 f"RandomState(7). The circles' number and radii (a sixth and a sixteenth of "
                 f"the side) set how hard the task is; the Dice threshold was measured on them.")


class FakeSBDataset:
    """Stands in for torchvision's SBDataset: records how it was made, holds nothing."""

    made: list = []

    def __init__(self, root, image_set="train", mode="boundaries", download=False) -> None:
        FakeSBDataset.made.append({"image_set": image_set, "mode": mode, "download": download})


def test_sbd_downloads_only_when_asked_and_not_there_yet(monkeypatch, tmp_path):
    """data.sbd asks torchvision to download only with download=True and no img/ folder in
    root yet; by default, never."""
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "SBDataset", FakeSBDataset)
    (tmp_path / "have" / "img").mkdir(parents=True)
    cases = [("have", {"download": True}, False), ("empty", {"download": True}, True),
             ("empty", {}, False), ("have", {}, False)]
    for folder, kwargs, wanted in cases:
        FakeSBDataset.made.clear()
        what = f"data.sbd(root {'with' if folder == 'have' else 'without'} img/, 'val'" + \
            "".join(f", {k}={v}" for k, v in kwargs.items()) + ")"
        call(data.sbd, tmp_path / folder, "val", **kwargs, what=what)
        made = FakeSBDataset.made
        if [(m["image_set"], m["mode"], m["download"]) for m in made] != \
                [("val", "segmentation", wanted)]:
            fail(f"{what} made torchvision's SBDataset with (image_set, mode, download) "
                 f"{[(m['image_set'], m['mode'], m['download']) for m in made]}; expected "
                 f"[('val', 'segmentation', {wanted})]. The 1.4 GB archive is fetched only "
                 f"when the user asks and it is not there yet (asking again would re-extract "
                 f"it), and masks are for segmentation.")


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--batch-size", "0"],
                                  ["--device", "gpu"], ["--size", "30"], ["--dataset", "sbd"]],
                         ids=["epochs0", "batch0", "bad-device", "size30", "no-sbd"])
def test_script_rejects_bad_input_in_one_line(argv, tmp_path, monkeypatch, capsys):
    """Nonsense arguments and missing data end the script with one clear line and a non-zero
    exit, before anything trains; SBD is never downloaded unless asked."""
    monkeypatch.chdir(tmp_path)
    argv = shell_argv([*argv, "--data-dir", str(tmp_path / "sbd"),
                       "--checkpoint", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit) as stop:
        call(train.main, argv, what=f"train.main({argv})")
    said = capsys.readouterr().err.strip().splitlines() or [str(stop.value.code)]
    if stop.value.code in (0, None) or not said[-1].strip():
        fail(f"`python train.py {' '.join(argv)}` ended with exit code {stop.value.code}; "
             f"expected a non-zero exit and one line that says what is wrong.")
    if any(tmp_path.iterdir()):
        fail(f"`python train.py {' '.join(argv)}` wrote "
             f"{sorted(p.name for p in tmp_path.iterdir())}: a run that stops on bad input "
             f"must not download or save anything.")


def recording_script(monkeypatch, gpu: bool = False) -> dict:
    """Stand-ins for train.py's slow parts, recording what main() hands them: fit (which
    returns one made-up record instead of training), synthetic_pairs and sbd (which give
    small blank pairs instead of drawing or reading images). ``gpu``: pretend a CUDA device
    with bfloat16 is there (or, False, that none is)."""
    module = train.resolve()
    calls: dict = {"fit": [], "synthetic_pairs": [], "sbd": []}

    def recording(name, returns):
        signature = inspect.signature(getattr(module, name))

        def record(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            calls[name].append(dict(bound.arguments))
            return returns(bound.arguments)
        monkeypatch.setattr(module, name, record)

    def blank(n, side, channels):
        image = np.linspace(0, 1, side * side * channels, dtype=np.float32)
        pair = (image.reshape(side, side, channels), np.zeros((side, side), np.int64))
        return [pair] * n

    recording("fit", lambda a: [{"epoch": 1, "loss": 1.0, "dice": 0.5}])
    recording("synthetic_pairs", lambda a: blank(a["n"], a["size"], 1))
    recording("sbd", lambda a: blank(600, 40, 3))  # more than a synthetic run's 512
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    return calls


def run_main(argv: list[str], calls: dict) -> dict:
    """train.main(argv) with recording_script's stand-ins; what it handed to fit."""
    try:
        call(train.main, argv, what=f"`python train.py {' '.join(argv)}`")
    except SystemExit as exc:
        if exc.code not in (0, None):
            fail(f"`python train.py {' '.join(argv)}` stopped with exit status {exc.code!r}; "
                 f"expected these options to be accepted.")
    if len(calls["fit"]) != 1:
        fail(f"`python train.py {' '.join(argv)}` called fit {len(calls['fit'])} times; "
             f"expected once.")
    return calls["fit"].pop()


def fit_options(got: dict) -> dict:
    """What the script chose, as seen in fit's arguments."""
    train_loader, val_loader = got["train_loader"], got["val_loader"]
    first = train_loader.dataset[0]
    return {
        "epochs": got["epochs"], "lr": got["lr"], "device": str(got["device"]),
        "roi_size": got["roi_size"], "num_classes": got["num_classes"],
        "amp_dtype": got["amp_dtype"], "channels_last": got["channels_last"],
        "progress": got["progress"],
        "in_channels": getattr(got["model"], "in_channels", None),
        "batch_size": (train_loader.batch_size, val_loader.batch_size),
        "images": (len(train_loader.dataset), len(val_loader.dataset)),
        "workers": (train_loader.num_workers, train_loader.persistent_workers),
        "pin_memory": train_loader.pin_memory,
        "shuffle": (type(train_loader.sampler).__name__, type(val_loader.sampler).__name__),
        "sample": (tuple(first["image"].shape), tuple(first["label"].shape)),
    }


def compare_options(argv: list[str], got: dict, wanted: dict, why: str) -> None:
    wrong = {k: (got[k], v) for k, v in wanted.items() if got[k] != v}
    if wrong:
        shown = "; ".join(f"{k} {g!r} (expected {w!r})" for k, (g, w) in wrong.items())
        fail(f"`python train.py {' '.join(argv)}` handed fit: {shown}. {why}")


SCRIPT_DEFAULTS = {
    "epochs": 20, "lr": 1e-3, "device": "cpu", "roi_size": 64, "num_classes": 3,
    "amp_dtype": None, "channels_last": False, "progress": True, "in_channels": 1,
    "batch_size": (16, 16), "images": (512, 64), "workers": (4, True), "pin_memory": False,
    "shuffle": ("RandomSampler", "SequentialSampler"), "sample": ((1, 64, 64), (1, 64, 64)),
}


@pytest.mark.trains
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.requires("test_preprocess_gives_channel_first_image_and_mask")
def test_script_hands_its_defaults_to_fit(monkeypatch, tmp_path):
    """`python train.py` (no GPU) trains with its documented defaults: 20 epochs, lr 1e-3,
    batches of 16, 4 workers, on 512 synthetic 64 x 64 images, validating on 64 others
    (another seed) in order, on the CPU in float32 with a progress line per epoch; it saves
    the weights, making the folders they go in."""
    calls = recording_script(monkeypatch, gpu=False)
    checkpoint = tmp_path / "new" / "deeper" / "unet.pt"
    argv = ["--checkpoint", str(checkpoint)]
    got = fit_options(run_main(argv, calls))
    compare_options(argv, got, SCRIPT_DEFAULTS,
                    "Expected the defaults its --help shows; the training loader reshuffles "
                    "every epoch and the validation loader keeps its order; without a GPU, "
                    "float32 in ordinary memory.")
    seeds = [c["seed"] for c in calls["synthetic_pairs"]]
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        fail(f"train.py drew its synthetic training and validation images with the seeds "
             f"{seeds}; expected two different seeds, so that the validation images are not "
             f"the training images.")
    if not checkpoint.is_file():
        fail(f"train.py --checkpoint {checkpoint} saved nothing there; expected it to make the "
             f"missing folders and save the weights.")


@pytest.mark.trains
@pytest.mark.requires("test_script_hands_its_defaults_to_fit")
def test_script_hands_its_options_to_fit(monkeypatch, tmp_path):
    """`python train.py --size 24 --epochs 1 --batch-size 3 --lr 0.5 --workers 1 --device
    auto` hands each option to fit; a second run saves over the first checkpoint."""
    calls = recording_script(monkeypatch, gpu=False)
    checkpoint = tmp_path / "runs" / "unet.pt"
    argv = shell_argv(["--size", "24", "--epochs", "1", "--batch-size", "3", "--lr", "0.5",
                       "--workers", "1", "--device", "auto", "--checkpoint", str(checkpoint)])
    for _ in range(2):
        got = fit_options(run_main(argv, calls))
    compare_options(argv, got, {
        "epochs": 1, "lr": 0.5, "device": "cpu", "roi_size": 24, "batch_size": (3, 3),
        "workers": (1, True), "sample": ((1, 24, 24), (1, 24, 24))},
        "Each option must reach fit (--size 24 is a multiple of 8, the least epoch count is "
        "1, and the one worker process is kept between epochs).")
    argv = shell_argv(["--workers", "0", "--checkpoint", str(checkpoint)])
    got = fit_options(run_main(argv, calls))
    compare_options(argv, got, {"workers": (0, False)},
                    "--workers 0 loads in the main process, with no worker to keep.")


@pytest.mark.trains
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.requires("test_script_hands_its_defaults_to_fit")
def test_script_uses_the_gpu_when_there_is_one_unless_told_otherwise(monkeypatch, tmp_path):
    """With a CUDA device that has bfloat16 (pretended here), `python train.py` trains on it
    in bfloat16 autocast with channels-last memory, pinned loader memory and cuDNN's
    benchmark; `--device cpu` still means the CPU, in float32."""
    calls = recording_script(monkeypatch, gpu=True)
    for argv, wanted in (
            ([], {"device": "cuda", "amp_dtype": torch.bfloat16, "channels_last": True,
                  "pin_memory": True}),
            (shell_argv(["--device", "cpu"]), {"device": "cpu", "amp_dtype": None,
                                               "channels_last": False, "pin_memory": False})):
        torch.backends.cudnn.benchmark = not wanted["channels_last"]
        argv = [*argv, "--checkpoint", str(tmp_path / "unet.pt")]
        got = {**fit_options(run_main(argv, calls)),
               "cudnn.benchmark": torch.backends.cudnn.benchmark}
        compare_options(argv, got, {**wanted, "cudnn.benchmark": wanted["channels_last"]},
                        "(A CUDA device with bfloat16 was pretended to be there.) 'auto' "
                        "picks CUDA when it is there, and on CUDA the GPU speed-ups are on; "
                        "on the CPU, none of them.")


@pytest.mark.trains
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.requires("test_script_hands_its_defaults_to_fit")
def test_script_trains_on_sbd_in_rgb_at_256_pixels(monkeypatch, tmp_path):
    """`python train.py --dataset sbd --download` reads SBD's train and val parts (allowed to
    download), and trains a U-Net from 3 channels to SBD's 21 classes on 256 x 256 images,
    on every image of each part (600 each in the stand-in here)."""
    calls = recording_script(monkeypatch, gpu=False)
    argv = shell_argv(["--dataset", "sbd", "--download", "--data-dir", str(tmp_path / "sbd"),
                       "--checkpoint", str(tmp_path / "unet.pt")])
    got = fit_options(run_main(argv, calls))
    parts = [(c["image_set"], c["download"]) for c in calls["sbd"]]
    if sorted(parts) != [("train", True), ("val", True)] or calls["synthetic_pairs"]:
        fail(f"`python train.py {' '.join(argv)}` read SBD's (part, download) {parts} and drew "
             f"{len(calls['synthetic_pairs'])} synthetic sets; expected SBD's train and val "
             f"parts, with download allowed, and no synthetic images.")
    compare_options(argv, got, {"num_classes": 21, "in_channels": 3, "roi_size": 256,
                                "sample": ((3, 256, 256), (1, 256, 256)),
                                "images": (600, 600)},
                    "SBD's photos are RGB, its masks hold the background and PASCAL VOC's 20 "
                    "object classes, and its default size is 256; a real run trains and "
                    "validates on all of SBD's images (only a dry run takes a few).")


@pytest.mark.trains
@pytest.mark.requires("test_script_hands_its_defaults_to_fit")
def test_dry_run_is_one_epoch_of_two_small_batches(monkeypatch, tmp_path):
    """`python train.py --dry-run` trains 1 epoch on 8 images in batches of 4, validates on
    4, and loads them in the main process, on synthetic images as on SBD (600 images in
    each part of the stand-in here)."""
    calls = recording_script(monkeypatch, gpu=False)
    (tmp_path / "sbd" / "img").mkdir(parents=True)  # SBD is there: nothing to download
    for argv in ([], ["--dataset", "sbd", "--data-dir", str(tmp_path / "sbd")]):
        argv = shell_argv(["--dry-run", *argv, "--checkpoint", str(tmp_path / "unet.pt")])
        got = fit_options(run_main(argv, calls))
        compare_options(argv, got, {"epochs": 1, "batch_size": (4, 4), "images": (8, 4),
                                    "workers": (0, False)},
                        "A dry run is a smoke test, whatever the dataset: two batches of "
                        "training, one of validation.")


@pytest.mark.trains
@pytest.mark.requires("test_dry_run_is_one_epoch_of_two_small_batches",
                      "test_synthetic_pairs_follow_their_arguments")
def test_script_draws_its_data_and_weights_from_the_documented_seeds(monkeypatch, tmp_path):
    """As the README says, `python train.py` trains on synthetic_pairs(512, seed=0),
    validates on synthetic_pairs(64, seed=1), and builds its U-Net right after
    torch.manual_seed(0), whatever torch's state before: a dry run (the first 8 and 4 of
    those images) shows each."""
    module = train.resolve()
    draw = module.synthetic_pairs
    calls = recording_script(monkeypatch, gpu=False)
    monkeypatch.setattr(module, "synthetic_pairs", draw)  # the real images, as the script draws
    monkeypatch.setattr(module, "train_transforms", module.val_transforms)  # no random moves
    torch.manual_seed(1234)  # not 0: only the script's own seed may decide its weights
    argv = ["--dry-run", "--checkpoint", str(tmp_path / "unet.pt")]
    got = run_main(argv, calls)
    for part, loader, n, seed in (("training", got["train_loader"], 8, 0),
                                  ("validation", got["val_loader"], 4, 1)):
        wanted = data.PairsAsDicts(data.synthetic_pairs(n, 64, 3, seed=seed),
                                   transforms.val_transforms(64))
        same = len(loader.dataset) == n and all(
            np.array_equal(as_array(loader.dataset[i][k]), as_array(wanted[i][k]))
            for i in range(n) for k in ("image", "label"))
        if not same:
            fail(f"`python train.py --dry-run` gave fit {len(loader.dataset)} {part} images "
                 f"that are not the first {n} of synthetic_pairs(..., seed={seed}) at 64 "
                 f"pixels. The README names the seeds of the training and validation images: "
                 f"the same command must see the same data every run, so that runs can be "
                 f"compared and a change in the Dice means a change in the code.")
    torch.manual_seed(0)
    expected = call(model.build_unet, 1, 3, what="build_unet(1, 3)").state_dict()
    started = got["model"].state_dict()
    differ = [k for k, v in expected.items()
              if k not in started or not torch.equal(started[k].cpu(), v)]
    if differ:
        fail(f"`python train.py --dry-run` handed fit a U-Net whose weights differ in "
             f"{len(differ)} of {len(expected)} tensors (e.g. {differ[:2]}) from those of "
             f"build_unet(1, 3) built right after torch.manual_seed(0). The README promises "
             f"runs seeded with 0: the same command must start from the same weights, so "
             f"that two runs can be compared, and a change in the results is not luck.")


@pytest.mark.trains
@pytest.mark.requires("test_script_hands_its_defaults_to_fit")
def test_script_rejects_a_bad_lr_or_workers_or_a_missing_gpu(monkeypatch, tmp_path):
    """--lr 0 or below, --workers below 0, --device cuda on a machine without CUDA: one line
    and a non-zero exit, before anything trains."""
    calls = recording_script(monkeypatch, gpu=False)
    for argv in (["--lr", "0"], ["--lr", "-0.5"], ["--workers", "-1"], ["--device", "cuda"]):
        argv = shell_argv([*argv, "--checkpoint", str(tmp_path / "unet.pt")])
        ended = how_script_ended(train.main, argv)
        if ended or calls["fit"]:
            fail(f"`python train.py {' '.join(argv)}` (no CUDA device) "
                 f"{ended or 'went on to train'}; expected it to stop with one line that says "
                 f"what is wrong: the learning rate must be positive, the number of loader "
                 f"processes at least 0, and --device cuda needs a CUDA device.")


@pytest.mark.trains
def test_script_help_says_what_it_does():
    """`python train.py --help` starts its description with the docstring's first line."""
    assert_help_opens_with_summary(train.resolve(), "train.py")


@pytest.mark.trains
@pytest.mark.requires("test_script_help_says_what_it_does")
def test_script_runs_when_started_as_a_file(capsys):
    """`python train.py --help` runs main(): the guard at the end of the file lets it."""
    run_as_main(train.resolve().__file__, ["--help"])
    if "--dry-run" not in capsys.readouterr().out:
        fail("`python train.py --help` printed no help. Run as a file, a script's module is "
             "named '__main__', and the block at its end decides whether main() runs.")


@pytest.mark.trains
@pytest.mark.requires("test_script_runs_when_started_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    train.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(train.resolve().__file__, "train.py")


@pytest.mark.requires("test_preprocess_gives_channel_first_image_and_mask")
def test_sbd_samples_become_rgb_network_inputs(tmp_path):
    """SBD's RGB photos and masks go through val_transforms as (3, s, s) and (1, s, s)."""
    masks = [grid_mask(i, 4, 21, 45 + 10 * i, 60)[0] for i in range(2)]
    write_sbd(tmp_path / "sbd", masks)
    pairs = call(data.sbd, tmp_path / "sbd", "train", download=False,
                 what="data.sbd() on a tiny SBD folder (download=False)")
    dataset = data.PairsAsDicts(pairs, transforms.val_transforms(32))
    for i, mask in enumerate(masks):
        out = run_transform(dataset.__getitem__, i, f"SBD sample {i} through val_transforms(32)")
        check_shapes(out, 3, 32, f"val_transforms(32) on SBD photo {i} ({mask.shape} RGB)")
        if not set(np.unique(as_array(out["label"]))) <= set(mask.flat):
            fail(f"SBD sample {i}: the mask holds values that are not its classes after "
                 f"val_transforms(32).")


@pytest.mark.trains
@pytest.mark.requires("test_preprocess_gives_channel_first_image_and_mask",
                      "test_loss_takes_class_index_labels")
def test_dry_run_trains_and_saves_offline(tmp_path, monkeypatch):
    """`python train.py --dry-run --checkpoint PATH` trains briefly on synthetic data, offline,
    prints the validation Dice (saying it means nothing) and the path of the weights it saved,
    which build_unet(1, 3) loads."""
    attempts = network_attempts(monkeypatch)
    cwd, folder = tmp_path, targets.resolve(Path(__file__).parent)
    proc = run_script(folder / "train.py", ["--dry-run", "--checkpoint",
                                            str(cwd / "out" / "dry.pt")], cwd)
    code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    if code != 0:
        lines = stderr.strip().splitlines()
        mine = [i for i, line in enumerate(lines) if str(folder) in line]
        where = "\n".join(lines[mine[-1] : mine[-1] + 2]) if mine else ""
        fail(f"`python train.py --dry-run` exited with code {code}:\n{where}\n"
             f"{lines[-1] if lines else ''}".replace("\n\n", "\n"))
    saved = cwd / "out" / "dry.pt"
    if "Dice" not in stdout or not saved.is_file() or str(saved) not in stdout:
        fail(f"`python train.py --dry-run --checkpoint {saved}` should print the validation "
             f"Dice, save the weights there (making the folder) and print that path; it "
             f"printed:\n{stdout[-500:]}")
    if "means nothing" not in stdout:
        fail(f"The dry run printed a validation Dice without saying that it means nothing "
             f"(a few steps on a few images):\n{stdout[-400:]}")
    if attempts:
        fail("`python train.py --dry-run` tried to connect to the network; the dry run uses "
             "synthetic data, offline.")
    state = torch.load(saved, map_location="cpu", weights_only=True)
    call(model.build_unet(1, 3).load_state_dict, state,
         what="loading dry.pt into build_unet(1, 3)")
