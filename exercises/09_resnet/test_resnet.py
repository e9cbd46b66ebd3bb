"""Exercise 09: a ResNet18 for 32x32 images, transfer learning, CIFAR augmentation, training.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters. Nothing here downloads: torchvision's
ImageNet weights are stood in for by a local checkpoint of the same shapes, and CIFAR-10 by
a few generated images written in its on-disk format.
"""

import copy
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.resnet import BasicBlock as TorchvisionBlock
from torchvision.transforms import v2

from torchkata import data, targets, under_test, vision_files
from torchkata.checks import (
    accuracy_of,
    assert_finite,
    assert_grads_flow,
    call,
    fail,
    network_attempts,
    run_script,
)

resnet = under_test("resnet")
transfer = under_test("transfer")
cifar = under_test("cifar")
train = under_test("train")

SHORTCUT_HINT = ("A residual block adds its input to its output, so the shortcut must bring x "
                 "to the output's shape (channels and size) whenever the block changes either.")
STAGES_HINT = ("Each stage must hand the next one (and fc) the number of channels it reads: "
               "width, 2 * width, 4 * width, 8 * width, whatever the width.")
IMAGENET = ResNet18_Weights.DEFAULT  # only its metadata is read: nothing is downloaded


def shapes_loader(n: int = 8, classes: int = 4, batch: int = 8, seed: int = 0) -> DataLoader:
    x, y = data.coloured_shapes(n=n, classes=classes, seed=seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)


def randomise_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-default weights and statistics, as a trained network has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A torchvision resnet18 state_dict standing in for ImageNet weights: random weights
    whose BatchNorm statistics were measured on 64 coloured shapes, as trained ones are."""
    model = resnet18(weights=None)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: one pass gives the batch's statistics
    with torch.no_grad():
        model.train()(data.coloured_shapes(n=16, classes=4, seed=5)[0])
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return path


def build(checkpoint: Path, device, freeze: bool, classes: int = 4) -> nn.Module:
    model = call(transfer.build_transfer_model, classes, weights=None, freeze_backbone=freeze,
                 checkpoint=checkpoint,
                 what=f"build_transfer_model({classes}, freeze_backbone={freeze})")
    return model.to(device)


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if not k.startswith("fc.")}


# --- the basic block and the network ---------------------------------------------------


@given(in_planes=st.sampled_from([4, 8]), planes=st.sampled_from([4, 8, 16]),
       stride=st.sampled_from([1, 2]), size=st.integers(1, 9), batch=st.integers(1, 3))
def test_block_output_shape_for_any_stride_and_width(device, in_planes, planes, stride, size,
                                                      batch):
    """BasicBlock(in_planes, planes, stride) maps (B, in_planes, H, W) to (B, planes, H/s, W/s)."""
    what = f"BasicBlock({in_planes}, {planes}, stride={stride})"
    block = call(resnet.BasicBlock, in_planes, planes, stride, what=what).to(device).eval()
    x = torch.randn(batch, in_planes, size, size, device=device)
    out = call(block, x, what=f"{what} on input {tuple(x.shape)}", why=SHORTCUT_HINT)
    side = -(-size // stride)  # ceil(size / stride)
    if tuple(out.shape) != (batch, planes, side, side):
        fail(f"{what} on input {tuple(x.shape)} returned shape {tuple(out.shape)}, expected "
             f"{(batch, planes, side, side)}. {SHORTCUT_HINT}")


def test_block_ends_with_relu_after_the_addition(device):
    """Every block's output passes through a final ReLU: it is never negative."""
    for in_planes, planes, stride in [(8, 8, 1), (8, 16, 2)]:
        what = f"BasicBlock({in_planes}, {planes}, stride={stride})"
        block = call(resnet.BasicBlock, in_planes, planes, stride, what=what).to(device)
        x = torch.randn(4, in_planes, 8, 8, device=device)  # negative values included
        out = call(block, x, what=f"{what} on input {tuple(x.shape)}", why=SHORTCUT_HINT)
        assert_finite(out, f"{what}'s output")
        if out.min().item() < 0:
            fail(f"{what} returned negative values (down to {out.min().item():.2f}) for an "
                 f"input with negative entries. A residual block computes F(x) + shortcut(x) "
                 f"and only then applies its last ReLU: the sum is what the next block reads. "
                 f"Rectifying F(x) alone lets the shortcut carry negative values through and "
                 f"makes the block a different function from the ResNet paper's.")


def test_block_matches_torchvision_basic_block(device):
    """With the same weights, BasicBlock computes what torchvision's BasicBlock computes."""
    for in_planes, planes, stride in [(8, 8, 1), (8, 16, 2), (8, 8, 2), (16, 8, 1)]:
        what = f"BasicBlock({in_planes}, {planes}, stride={stride})"
        ours = call(resnet.BasicBlock, in_planes, planes, stride, what=what)
        randomise_batchnorm(ours)
        x = torch.randn(4, in_planes, 8, 8)
        ours = ours.to(device).eval()
        got = call(ours, x.to(device), what=f"{what} on input {tuple(x.shape)}",
                   why=SHORTCUT_HINT)
        downsample = None
        if stride != 1 or in_planes != planes:
            downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        oracle = TorchvisionBlock(in_planes, planes, stride, downsample)
        theirs = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
        mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        if mine != theirs:
            fail(f"{what} has the parameters {sorted(mine)}, but torchvision's block of the "
                 f"same shape has {sorted(theirs)} (same names and shapes expected, so that "
                 f"torchvision's weights fit). {SHORTCUT_HINT}")
        oracle.load_state_dict(ours.state_dict())
        oracle = oracle.to(device)
        for mode in ("eval", "train"):
            if mode == "train":
                got = call(ours.train(), x.to(device), what=f"{what} in train mode")
            expected = oracle.train(mode == "train")(x.to(device))
            assert_finite(got, f"{what}'s output in {mode} mode")
            if not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
                gap = (got - expected).abs().max().item()
                fail(f"{what} ({mode} mode) differs from torchvision's BasicBlock with the same "
                     f"weights by up to {gap:.3g}. Expected relu(bn2(conv2(relu(bn1(conv1(x)))))"
                     f" + shortcut(x)): the shortcut is added before the block's last ReLU.")
        stale = [k for k, v in oracle.state_dict().items()
                 if not torch.allclose(ours.state_dict()[k].float(), v.float(), atol=1e-5)]
        if stale:
            fail(f"After one forward pass in train mode, {what}'s BatchNorm statistics "
                 f"{stale[:3]} differ from those of torchvision's block, which saw the same "
                 f"batch. Expected standard BatchNorm layers (default momentum, running "
                 f"statistics tracked), so that torchvision's weights and statistics carry over.")


def test_zero_init_residual_makes_blocks_start_as_identity(device):
    """zero_init_residual zeroes each block's last BatchNorm weight: blocks start as identity."""
    model = call(resnet.ResNet18, 10, width=8, zero_init_residual=True,
                 what="ResNet18(10, width=8, zero_init_residual=True)").to(device)
    blocks = [m for m in model.modules() if isinstance(m, resnet.BasicBlock)]
    not_zero = [i for i, b in enumerate(blocks) if b.bn2.weight.abs().sum().item() != 0]
    if len(blocks) != 8 or not_zero:
        fail(f"ResNet18(zero_init_residual=True) has {len(blocks)} BasicBlocks (expected 8), "
             f"and the weight of the BatchNorm that closes the residual branch (bn2) is not "
             f"zero in blocks {not_zero}. With that weight at zero, the branch outputs "
             f"nothing at first and each block starts as its shortcut.")
    block = model.layer1[0]
    x = torch.rand(2, 8, 8, 8, device=device)  # non-negative, like the output of a ReLU
    for mode in ("train", "eval"):
        block.train(mode == "train")
        with torch.no_grad():
            out = call(block, x, what="the first block of layer1")
        if not torch.allclose(out, x, atol=1e-6):
            fail(f"With zero_init_residual=True, the first block of layer1 (no downsample) "
                 f"changes a non-negative input in {mode} mode (by up to "
                 f"{(out - x).abs().max().item():.3g}). Expected relu(x + 0) = x: a block "
                 f"whose residual branch is zero must pass its input through unchanged.")


@pytest.mark.requires("test_block_output_shape_for_any_stride_and_width")
@pytest.mark.parametrize(("classes", "width"), [(7, 64), (3, 8)], ids=["width64", "width8"])
def test_resnet18_feature_and_output_shapes(device, classes, width):
    """32x32 stays 32x32 in layer1 (no ImageNet stem), halves per stage; logits (B, classes)."""
    what = f"ResNet18({classes}, width={width})"
    model = call(resnet.ResNet18, classes, width=width, what=what).to(device).eval()
    seen = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
        for name in ("layer1", "layer2", "layer3", "layer4")]
    with torch.no_grad():
        out = call(model, torch.rand(2, 3, 32, 32, device=device),
                   what=f"{what} on (2, 3, 32, 32)", why=STAGES_HINT)
    for h in hooks:
        h.remove()
    w = width
    expected = {"layer1": (2, w, 32, 32), "layer2": (2, 2 * w, 16, 16),
                "layer3": (2, 4 * w, 8, 8), "layer4": (2, 8 * w, 4, 4)}
    if seen != expected or tuple(out.shape) != (2, classes):
        fail(f"{what} on (2, 3, 32, 32): stages gave {seen} and logits "
             f"{tuple(out.shape)}; expected {expected} and (2, {classes}). On 32x32 images the "
             f"stem keeps the full resolution, and each later stage halves it and doubles the "
             f"width; fc reads the 8 * width pooled features.")


@pytest.mark.requires("test_block_output_shape_for_any_stride_and_width")
def test_body_matches_torchvision_resnet18(device):
    """layer1..layer4 have torchvision's names, shapes and parameter count (11,166,976)."""
    ours = call(resnet.ResNet18, what="ResNet18()")
    oracle = resnet18(weights=None)
    stages = ("layer1.", "layer2.", "layer3.", "layer4.")
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items() if k.startswith(stages)}
    theirs = {k: tuple(v.shape) for k, v in oracle.state_dict().items() if k.startswith(stages)}
    count = sum(p.numel() for n, p in ours.named_parameters() if n.startswith(stages))
    expected = sum(p.numel() for n, p in oracle.named_parameters() if n.startswith(stages))
    if mine != theirs or count != expected:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))[:4]
        fail(f"The body of ResNet18 (layer1..layer4) has {count:,} parameters; torchvision's "
             f"resnet18 has {expected:,}. First differences (name, shape): {diff}. The four "
             f"stages of two BasicBlocks each (64, 128, 256, 512 channels) must match "
             f"torchvision's so that its weights load into them.")


@pytest.mark.requires("test_block_output_shape_for_any_stride_and_width",
                      "test_resnet18_feature_and_output_shapes")
def test_every_parameter_gets_a_gradient(device):
    """One backward pass reaches every weight of ResNet18 with a finite, non-zero gradient."""
    model = call(resnet.ResNet18, 4, width=8, what="ResNet18(4, width=8)").to(device)
    x, y = data.coloured_shapes(n=2, classes=4)
    out = call(model, x.to(device), what="ResNet18(4, width=8) on 8 images", why=SHORTCUT_HINT)
    assert_grads_flow(model, nn.functional.cross_entropy(out, y.to(device)), "ResNet18")


# --- transfer learning -----------------------------------------------------------------


def test_head_replaces_fc(device, checkpoint):
    """The new head replaces fc: one Linear from the 512 pooled features to the classes."""
    model = build(checkpoint, device, freeze=True, classes=7)
    linears = [(name, m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    out = call(model.eval(), torch.rand(2, 3, 32, 32, device=device),
               what="the transfer model on (2, 3, 32, 32)")
    if linears != [("fc", 512, 7)] or tuple(out.shape) != (2, 7):
        fail(f"build_transfer_model(7) holds the Linear layers (name, in, out) {linears} and "
             f"returns logits of shape {tuple(out.shape)}; expected [('fc', 512, 7)] and "
             f"(2, 7). ImageNet's fc maps the 512 pooled features to 1000 ImageNet classes; a "
             f"head on top of those 1000 scores squeezes every image through classes that "
             f"have nothing to do with yours.")


@pytest.mark.requires("test_head_replaces_fc")
def test_backbone_starts_from_the_pretrained_weights(device, checkpoint):
    """Everything but the head holds the weights and statistics of the checkpoint."""
    model = build(checkpoint, device, freeze=True)
    saved = torch.load(checkpoint, weights_only=True)
    mine = backbone_state(model)
    missing = [k for k in saved if not k.startswith("fc.") and k not in mine]
    if missing:
        fail(f"The transfer model has no {missing[:2]}...: {len(missing)} tensors of "
             f"torchvision's resnet18 are not found under their names. Expected torchvision's "
             f"resnet18 itself with only its head changed, so that its weights stay where "
             f"torchvision (and its checkpoints) put them.")
    differ = [k for k, v in saved.items() if not k.startswith("fc.")
              and not torch.equal(mine[k], v)]
    if differ:
        fail(f"{len(differ)} tensors of the backbone (e.g. {differ[:3]}) are not those of "
             f"the pretrained weights. Transfer learning starts from what the backbone has "
             f"learnt: load the weights first, then change the head.")


def test_frozen_backbone_trains_only_the_head(device, checkpoint):
    """freeze_backbone=True: fc's weight and bias require gradients, nothing else does."""
    model = build(checkpoint, device, freeze=True)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    if trainable != ["fc.bias", "fc.weight"]:
        shown = trainable if len(trainable) < 6 else trainable[:4] + ["..."]
        fail(f"With freeze_backbone=True the parameters that require gradients are "
             f"{shown} ({len(trainable)} in all); expected exactly fc.weight and fc.bias. A "
             f"frozen backbone keeps what it learnt; the new head must still learn.")


def test_optimizer_holds_only_the_trainable_parameters(device, checkpoint):
    """make_optimizer gets exactly the parameters that require gradients, frozen or not."""
    for freeze in (True, False):
        model = build(checkpoint, device, freeze=freeze)
        optimizer = call(transfer.make_optimizer, model, what="make_optimizer(model)")
        given_ = {id(p) for group in optimizer.param_groups for p in group["params"]}
        wanted = {id(p) for p in model.parameters() if p.requires_grad}
        if given_ != wanted:
            fail(f"With freeze_backbone={freeze}, the optimizer holds {len(given_)} parameter "
                 f"tensors; {len(wanted)} require gradients. Frozen parameters do not belong "
                 f"in the optimizer: it would keep state for them, and weight decay or a "
                 f"later unfreezing would move weights that were meant to stay fixed.")


def test_make_optimizer_uses_the_given_settings(device):
    """make_optimizer(model, lr, momentum, weight_decay) builds SGD with exactly those values."""
    model = call(resnet.ResNet18, 4, width=8, what="ResNet18(4, width=8)").to(device)
    settings = {"lr": 0.037, "momentum": 0.5, "weight_decay": 1e-3}
    optimizer = call(transfer.make_optimizer, model, **settings,
                     what="make_optimizer(model, lr=0.037, momentum=0.5, weight_decay=1e-3)")
    used = {k: [g.get(k) for g in optimizer.param_groups] for k in settings}
    wrong = {k: v for k, v in used.items() if any(x != settings[k] for x in v)}
    if wrong:
        fail(f"make_optimizer(model, lr=0.037, momentum=0.5, weight_decay=1e-3) built an "
             f"optimizer whose groups use {wrong}. Expected the values it was given: the "
             f"script's --lr (0.1 from scratch, 0.01 for pretrained weights) only means "
             f"something if it reaches the optimizer.")


def test_frozen_batchnorm_stays_in_eval_mode(device, checkpoint):
    """set_train_mode: the model trains, but a frozen backbone's BatchNorm layers stay in eval."""
    model = build(checkpoint, device, freeze=True)
    model.eval()
    x = torch.rand(8, 3, 32, 32, device=device)
    with torch.no_grad():
        expected = model(x)
    call(transfer.set_train_mode, model, what="set_train_mode(model)")
    training = [n for n, m in model.named_modules()
                if isinstance(m, nn.BatchNorm2d) and m.training]
    with torch.no_grad():
        got = model(x)
    if not model.training or training or not torch.allclose(got, expected, atol=1e-5):
        fail(f"After set_train_mode on a frozen backbone, model.training is {model.training} "
             f"and {len(training)} of its 20 BatchNorm layers are in training mode (e.g. "
             f"{training[:2]}). Expected the model in training mode and every frozen "
             f"BatchNorm in eval mode, so that it normalises with its stored statistics. "
             f"requires_grad=False does not stop a BatchNorm in training mode from "
             f"normalising with batch statistics and overwriting its running statistics; "
             f"note that model.train() switches every submodule.")


@pytest.mark.trains
@pytest.mark.requires("test_head_replaces_fc", "test_frozen_backbone_trains_only_the_head")
def test_frozen_backbone_is_unchanged_by_training(device, checkpoint):
    """train_one_epoch with a frozen backbone moves the head only: weights and statistics."""
    model = build(checkpoint, device, freeze=True)
    optimizer = call(transfer.make_optimizer, model, lr=0.1, what="make_optimizer(model)")
    before = backbone_state(model)
    head = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("fc.")}
    call(train.train_one_epoch, model, shapes_loader(n=8), optimizer, device,
         what="train_one_epoch() on 32 shapes")
    after = backbone_state(model)
    moved_head = [n for n, p in model.named_parameters()
                  if n in head and not torch.equal(head[n], p.detach())]
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    if moved:
        stats = [k for k in moved if "running" in k or "num_batches" in k]
        fail(f"A frozen backbone changed during training: {len(moved)} tensors moved, "
             f"{len(stats)} of them BatchNorm statistics (e.g. {(stats or moved)[:2]}). "
             f"Expected the backbone's weights and its running mean and variance to stay "
             f"exactly as loaded: a BatchNorm layer in training mode updates its statistics "
             f"on every batch, whatever requires_grad says.")
    if not moved_head:
        fail("train_one_epoch did not change the new head (fc): with a frozen backbone the "
             "head is the one part that must learn.")


@pytest.mark.trains
def test_fine_tuning_trains_every_layer(device, checkpoint):
    """freeze_backbone=False: every parameter learns and BatchNorm statistics adapt."""
    model = build(checkpoint, device, freeze=False)
    optimizer = call(transfer.make_optimizer, model, lr=0.01, what="make_optimizer(model)")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    call(train.train_one_epoch, model, shapes_loader(n=4), optimizer, device, max_steps=1,
         what="train_one_epoch() on 16 shapes")
    after = model.state_dict()
    frozen = [k for k, v in before.items() if torch.equal(v, after[k])]
    if frozen:
        fail(f"With freeze_backbone=False, {len(frozen)} tensors did not change in a training "
             f"step (e.g. {frozen[:3]}). Fine-tuning trains every layer, and every BatchNorm "
             f"adapts its statistics to the new data.")


# --- data: augmentation and normalisation ----------------------------------------------


def random_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def normalised(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(32, 32, 3) uint8 -> (3, 32, 32) float, (x / 255 - mean) / std: the oracle."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def augmented_candidates(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(162, 3, 32, 32): every 32x32 crop of the image padded by 4 black pixels, mirrored
    or not, normalised: the images CIFAR augmentation may produce (crop k, mirrored if k >= 81)."""
    padded = np.pad(pixels, ((4, 4), (4, 4), (0, 0)))  # black border, as RandomCrop pads
    crops = [padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
    return torch.stack([normalised(c, mean, std) for c in crops]
                       + [normalised(c[:, ::-1].copy(), mean, std) for c in crops])


def closest_candidate(out: torch.Tensor, candidates: torch.Tensor) -> tuple[int, float]:
    """Index of the candidate nearest to ``out``, and its largest pixel difference."""
    gaps = (candidates - out.detach().cpu().float()).abs().flatten(1).amax(dim=1)
    return int(gaps.argmin()), float(gaps.min())


def what_differs(out: torch.Tensor, pixels: np.ndarray, mean, std) -> str:
    """Names the step of (pixels / 255 - mean) / std that ``out`` got wrong, from a
    per-channel affine fit of the output against the pixels."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).double().flatten(1)  # (3, 1024) in [0, 255]
    y = out.detach().cpu().double().flatten(1)
    a = ((x - x.mean(1, keepdim=True)) * (y - y.mean(1, keepdim=True))).sum(1) / (
        (x - x.mean(1, keepdim=True)) ** 2).sum(1)  # (3,) slope per channel
    b = y.mean(1) - a * x.mean(1)
    if (y - (a[:, None] * x + b[:, None])).abs().max() > 1e-3:
        return ("the output is not the image's own pixels, converted value by value: it was "
                "moved, cropped, flipped or resized (evaluation must see the whole image, "
                "unchanged)")
    ratio = (a * 255 * torch.tensor(std, dtype=torch.double)).mean().item()  # 1 if right
    if ratio > 20:
        return (f"the pixels were not scaled from [0, 255] to [0, 1] before normalising (the "
                f"output grows about {ratio:.0f} times too fast with the pixel values)")
    if ratio < 0.05:
        return (f"the pixels were scaled down more than once (the output grows about "
                f"{1 / ratio:.0f} times too slowly with the pixel values)")
    got_std = 1 / (255 * a)
    got_mean = -b * got_std
    if got_mean.abs().max() < 1e-3 and (got_std - 1).abs().max() < 1e-3:
        return "the pixels were scaled to [0, 1], but not normalised with any mean and std"
    show = lambda t: tuple(round(v, 3) for v in t.tolist())  # noqa: E731
    return (f"the scaling to [0, 1] is right, but the image was normalised with mean "
            f"{show(got_mean)} and std {show(got_std)}")


def test_normalisation_matches_the_weights():
    """ImageNet weights get ImageNet's mean and std; training from scratch, CIFAR-10's."""
    oracle = IMAGENET.transforms()
    mean, std = call(cifar.normalization, IMAGENET, what="normalization(ResNet18_Weights)")
    if not (np.allclose(mean, oracle.mean, atol=1e-3) and np.allclose(std, oracle.std,
                                                                      atol=1e-3)):
        fail(f"normalization(ResNet18_Weights.DEFAULT) gave mean {tuple(mean)}, std "
             f"{tuple(std)}; these weights were trained on images normalised with mean "
             f"{tuple(oracle.mean)} and std {tuple(oracle.std)} (see weights.transforms()). "
             f"Other statistics shift every input the pretrained filters see, and their "
             f"features degrade.")
    mean, std = call(cifar.normalization, None, what="normalization(None)")
    cifar_mean, cifar_std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    if not (np.allclose(mean, cifar_mean, atol=0.01) and np.allclose(std, cifar_std,
                                                                     atol=0.07)):
        fail(f"normalization(None) gave mean {tuple(mean)}, std {tuple(std)}; a network "
             f"trained from scratch on CIFAR-10 normalises with CIFAR-10's own per-channel "
             f"statistics (mean about {cifar_mean}, std about {cifar_std}).")


def test_training_augmentation_shifts_and_mirrors():
    """Training images are 32x32 crops of the image padded by 4 black pixels, maybe mirrored."""
    pixels = random_image()
    mean, std = call(cifar.normalization, None, what="normalization(None)")
    candidates = augmented_candidates(pixels, mean, std)
    transform = call(cifar.make_transform, True, None, what="make_transform(train=True)")
    seen = set()
    for _ in range(40):
        out = call(transform, Image.fromarray(pixels), what="the training transform")
        best, gap = (-1, 1.0) if tuple(out.shape) != (3, 32, 32) else (
            closest_candidate(out, candidates))
        if gap > 1e-4:
            fail(f"The training transform turned a 32x32 image into a tensor of shape "
                 f"{tuple(out.shape)} that is not a 32x32 crop of the image padded with 4 "
                 f"black pixels, mirrored or not, then scaled to [0, 1] and normalised. "
                 f"CIFAR augmentation shifts the image by up to 4 pixels and flips it "
                 f"horizontally; it keeps the scale and the colours.")
        seen.add(best)
    flipped = {k >= 81 for k in seen}
    shifts = {k % 81 for k in seen}
    if flipped != {False, True} or len(shifts) < 8:
        fail(f"In 40 training draws of one image, {len(shifts)} different shifts appeared, "
             f"mirrored: {sorted(flipped)}. Expected random shifts of up to 4 pixels and "
             f"random horizontal flips, both mirrored and unmirrored images.")


@pytest.mark.parametrize("weights", [None, IMAGENET], ids=["scratch", "imagenet"])
def test_test_transform_only_converts_and_normalises(weights):
    """The evaluation transform is deterministic: (pixels / 255 - mean) / std, nothing else."""
    pixels = random_image(1)
    mean, std = IMAGENET.transforms().mean, IMAGENET.transforms().std
    if weights is None:
        mean, std = call(cifar.normalization, None, what="normalization(None)")
    what = f"make_transform(train=False, weights={weights})"
    transform = call(cifar.make_transform, False, weights, what=what)
    outs = [call(transform, Image.fromarray(pixels), what="the test transform") for _ in range(3)]
    expected = normalised(pixels, mean, std)
    if any(tuple(out.shape) != (3, 32, 32) for out in outs):
        fail(f"{what} turned a 32x32 RGB image into shapes {[tuple(o.shape) for o in outs]}; "
             f"expected (3, 32, 32) every time: evaluation sees the whole image.")
    if any(not torch.equal(outs[0], out) for out in outs[1:]):
        fail(f"{what} gave three different results for one image: the test transform is "
             f"random. Evaluation must see each image the same way every time, or test "
             f"accuracy changes between runs with the same weights.")
    assert_finite(outs[0], f"{what}'s output")
    if not torch.allclose(outs[0], expected, atol=1e-5):
        fail(f"{what} does not give (pixels / 255 - mean) / std with mean {tuple(mean)} and "
             f"std {tuple(std)}: {what_differs(outs[0], pixels, mean, std)}. Evaluation must "
             f"see each image as it is, with the statistics the model's weights expect.")


def test_fake_data_splits_like_cifar10():
    """fake_data: training images augmented, test images fixed, and the two splits distinct."""
    train_set, test_set = call(cifar.fake_data, 8, what="fake_data(8)")
    if len(train_set) != 8 or len(test_set) != 8:
        fail(f"fake_data(8) gave splits of {len(train_set)} and {len(test_set)} images; "
             f"expected 8 each.")
    if any(not torch.equal(test_set[i][0], test_set[i][0]) for i in range(8)):
        fail("fake_data's test images change from one read to the next: its test split is "
             "augmented. The smoke data follows CIFAR-10's rules: augmentation for training "
             "only.")
    if all(torch.equal(train_set[i][0], train_set[i][0]) for i in range(8)):
        fail("fake_data's training images come out the same on every read: its training "
             "split is not augmented, so the dry run never exercises the augmentation.")
    raw_train, raw_test = copy.copy(train_set), copy.copy(test_set)
    raw_train.transform = raw_test.transform = np.asarray  # the generated pixels themselves
    shared = sum(np.array_equal(raw_train[i][0], raw_test[j][0])
                 for i in range(8) for j in range(8))
    if shared:
        fail(f"fake_data(8): {shared} test images are also training images. A test split "
             f"holds images the model never trained on, even in smoke data.")


@pytest.fixture
def cifar_files(tmp_path):
    """8 training and 8 test images in CIFAR-10's on-disk format, and their labels."""
    x, y = data.coloured_shapes(n=4, classes=4, seed=3)
    pixels = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (16, 32, 32, 3)
    vision_files.write_cifar10(tmp_path, pixels[:8], y[:8].numpy(), train=True)
    vision_files.write_cifar10(tmp_path, pixels[8:], y[8:].numpy(), train=False)
    return tmp_path, pixels, y


def load_cifar(root, weights=None):
    return call(cifar.cifar10, root, weights=weights, download=False,
                dataset_cls=vision_files.LocalCIFAR10,
                what=f"cifar10(root, weights={weights}, download=False) on 16 local images")


def expected_stats(weights):
    if weights is None:
        return (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return tuple(IMAGENET.transforms().mean), tuple(IMAGENET.transforms().std)


@pytest.mark.parametrize("weights", [None, IMAGENET], ids=["scratch", "imagenet"])
def test_cifar10_test_split_is_not_augmented(cifar_files, weights):
    """Test images come out the same every time: normalised, never cropped or flipped."""
    root, pixels, labels = cifar_files
    _, test_set = load_cifar(root, weights)
    mean, std = cifar.normalization(weights)
    if len(test_set) != 8:
        fail(f"The test split has {len(test_set)} images; 8 were written to test_batch.")
    for i in range(8):
        image, label = test_set[i]
        again, _ = test_set[i]
        expected = normalised(pixels[8 + i], mean, std)
        if not (torch.equal(image, again) and torch.allclose(image, expected, atol=1e-5)):
            seen = "changed between two reads" if not torch.equal(image, again) else (
                "is not just the image scaled to [0, 1] and normalised")
            fail(f"Test image {i} {seen}. "
                 f"Random crops and flips belong to the training split only: evaluation must "
                 f"see each image as it is, the same every time, or test accuracy is noisy "
                 f"and measures something else than the model.")
        if label != labels[8 + i]:
            fail(f"Test image {i} has label {label}, expected {int(labels[8 + i])}.")


@pytest.mark.requires("test_normalisation_matches_the_weights")
@pytest.mark.parametrize("weights", [None, IMAGENET], ids=["scratch", "imagenet"])
def test_cifar10_training_split_is_augmented(cifar_files, weights):
    """Training images differ between reads (random crops and flips), are normalised like
    the test images, and keep their labels."""
    root, pixels, labels = cifar_files
    train_set, _ = load_cifar(root, weights)
    reads = [[train_set[i] for i in range(8)] for _ in range(3)]
    if any(label != labels[i] for read in reads for i, (_, label) in enumerate(read)):
        fail("A training image came back with the wrong label.")
    mean, std = expected_stats(weights)
    for i in range(8):
        _, gap = closest_candidate(reads[0][i][0], augmented_candidates(pixels[i], mean, std))
        if gap > 1e-3:
            fail(f"With weights={weights}, training image {i} is not a shifted or mirrored "
                 f"copy of the image normalised with mean {mean} and std {std}. Both splits "
                 f"are normalised with the statistics of the weights in use: a network that "
                 f"trains on one scale and is tested on another sees different inputs.")
    changed = sum(not torch.equal(reads[0][i][0], reads[k][i][0])
                  for i in range(8) for k in (1, 2))
    if changed == 0:
        fail("Each of 8 training images came out the same in three reads: the training split "
             "is not augmented. Random shifts and flips show the network new variants of "
             "each image every epoch, which curbs overfitting on 50,000 images.")


# --- the training script ---------------------------------------------------------------


def small_model(device, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = call(resnet.ResNet18, 4, width=8, what="ResNet18(4, width=8)")
    randomise_batchnorm(model, seed)
    return model.to(device)


def no_scaler(device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=False)


def test_train_step_reports_the_loss_of_its_batch(device):
    """train_step returns the cross-entropy of the model's logits for (x, y) before the
    update, and the update lowers that loss."""
    model = small_model(device)
    x, y = data.coloured_shapes(n=2, classes=4, seed=4)
    x, y = x.to(device), y.to(device)
    before = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(before(x), y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = call(train.train_step, model.train(), optimizer, no_scaler(device), x, y, None,
                what="train_step(model, optimizer, scaler, x, y, amp_dtype=None)")
    loss = torch.as_tensor(loss).detach().float()
    assert_finite(loss, "the loss train_step returned")
    if loss.numel() != 1 or abs(loss.item() - expected.item()) > 1e-4:
        fail(f"train_step returned {loss.flatten().tolist()[:4]}; the cross-entropy between "
             f"the model's logits (in training mode, before the step) and the labels y is "
             f"{expected.item():.4f}. The loss a training loop reports must be the one it "
             f"minimises, between the model's output and the labels, or every curve and "
             f"every comparison of runs measures something else.")
    with torch.no_grad():
        after = nn.functional.cross_entropy(copy.deepcopy(model).train()(x), y).item()
    if not after < expected.item():
        fail(f"After train_step the loss on the same batch went from {expected.item():.4f} "
             f"to {after:.4f}; one gradient step must lower it (the optimizer must step "
             f"the model whose loss was differentiated).")


def test_train_step_autocasts_only_when_asked(device):
    """amp_dtype=torch.bfloat16 runs the forward pass in bfloat16; None keeps float32; the
    weights stay float32 either way (CPU autocast stands in for the GPU's here)."""
    for amp_dtype in (torch.bfloat16, None):
        model = small_model(device)
        seen = []
        model.fc.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        x, y = data.coloured_shapes(n=2, classes=4, seed=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loss = call(train.train_step, model.train(), optimizer, no_scaler(device),
                    x.to(device), y.to(device), amp_dtype,
                    what=f"train_step(..., amp_dtype={amp_dtype})")
        assert_finite(torch.as_tensor(loss).float(),
                      f"train_step's loss with amp_dtype={amp_dtype}")
        wanted = amp_dtype or torch.float32
        weights = {p.dtype for p in model.parameters()}
        if seen != [wanted] or weights != {torch.float32}:
            fail(f"train_step(..., amp_dtype={amp_dtype}): the logits were computed in "
                 f"{seen} and the weights are {sorted(map(str, weights))}. Expected one "
                 f"forward pass in {wanted} (autocast on exactly when amp_dtype is given) and "
                 f"float32 weights: mixed precision computes in low precision, it does not "
                 f"store the model in it.")


@pytest.mark.trains
@pytest.mark.requires("test_train_step_reports_the_loss_of_its_batch")
def test_train_one_epoch_reports_the_mean_loss_of_its_batches(device):
    """With lr=0 (nothing moves), train_one_epoch returns the mean of its batches' losses."""
    model = small_model(device)
    x, y = data.coloured_shapes(n=6, classes=4, seed=6)  # 24 images: 3 batches of 8
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(reference(xb.to(device)), yb.to(device)).item()
                  for xb, yb in loader]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    got = call(train.train_one_epoch, model, loader, optimizer, device,
               what="train_one_epoch() on 3 batches with lr=0")
    expected = float(np.mean(losses))
    if not np.isfinite(got) or abs(got - expected) > 1e-4:
        fail(f"train_one_epoch reported {got:.4f}; its 3 batches have the losses "
             f"{[round(v, 4) for v in losses]} (the weights cannot move with lr=0), whose "
             f"mean is {expected:.4f}. An epoch's loss is the mean over all its batches, not "
             f"the last one or a sum.")


@pytest.mark.trains
def test_train_one_epoch_covers_every_batch_or_max_steps(device, capsys):
    """Without max_steps an epoch takes every batch once; with max_steps=k, exactly k. By
    default the batches keep their memory layout and no progress bar is drawn."""
    x, y = data.coloured_shapes(n=5, classes=4, seed=7)  # 20 images: 5 batches of 4
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    for max_steps, wanted in ((None, 5), (2, 2)):
        model = small_model(device)
        steps = []
        model.register_forward_pre_hook(
            lambda m, i, steps=steps: steps.append(i[0].is_contiguous()))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        capsys.readouterr()
        call(train.train_one_epoch, model, loader, optimizer, device, max_steps=max_steps,
             what=f"train_one_epoch(..., max_steps={max_steps}) on 5 batches")
        drawn = capsys.readouterr().err
        if drawn.strip() or not all(steps):
            fail(f"train_one_epoch(model, loader, optimizer, device) with its defaults "
                 f"{'drew a progress bar (' + drawn.strip()[-60:] + ')' if drawn.strip() else ''}"
                 f"{' and ' if drawn.strip() and not all(steps) else ''}"
                 f"{'' if all(steps) else 'converted the batches to channels_last'}. Expected "
                 f"neither unless asked (progress=True, channels_last=True): a bar in a log "
                 f"file or a test is noise, and channels_last pays off only on a GPU.")
        if len(steps) != wanted:
            fail(f"train_one_epoch(..., max_steps={max_steps}) on a loader of 5 batches ran "
                 f"{len(steps)} training steps; expected {wanted}. An epoch sees every "
                 f"batch once, and max_steps caps it at exactly that many steps (the dry run "
                 f"and quick experiments rely on it).")


def test_evaluate_reports_accuracy_in_eval_mode(device):
    """evaluate() gives the eval-mode accuracy and leaves the model's statistics alone."""
    model = call(resnet.ResNet18, 4, width=8, what="ResNet18(4, width=8)").to(device)
    randomise_batchnorm(model)
    x, y = data.coloured_shapes(n=8, classes=4, seed=1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = call(train.evaluate, model, DataLoader(TensorDataset(x, y), batch_size=12), device,
               what="evaluate() on 32 shapes in batches of 12")
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    expected = accuracy_of(model, x, y, device)
    if moved or not abs(got - expected) <= 1e-6:
        fail(f"evaluate() reported {got:.1%} (the model in eval mode gets {expected:.1%} on "
             f"all 32 images) and changed {len(moved)} tensors of the model (e.g. "
             f"{moved[:2]}). Evaluation runs in eval mode, where BatchNorm uses its stored "
             f"statistics and updates nothing, and counts every image of every batch, the "
             f"last and smaller one too.")


@pytest.mark.trains
@pytest.mark.requires("test_train_step_reports_the_loss_of_its_batch")
def test_train_steps_for_benchmarks(device, monkeypatch):
    """train_steps runs N timed steps on a device-resident batch, in channels_last too."""
    model = call(resnet.ResNet18, 4, width=8, what="ResNet18(4, width=8)").to(device)
    x, y = data.coloured_shapes(n=2, classes=4, size=16)  # small and quick: (8, 3, 16, 16)
    forwards, rates = [], []
    model.register_forward_pre_hook(lambda m, i: forwards.append(len(i[0])))
    module, real_optimizer = train.resolve(), train.resolve().make_optimizer

    def make_optimizer(model, lr=0.01, *args, **kwargs):
        rates.append(lr)
        return real_optimizer(model, lr, *args, **kwargs)

    monkeypatch.setattr(module, "make_optimizer", make_optimizer)
    result = call(train.train_steps, model, x.to(device), y.to(device), 4, channels_last=True,
                  what="train_steps(model, x, y, 4, channels_last=True)")
    if len(forwards) != 3 + 4 or rates != [0.1]:
        fail(f"train_steps(model, x, y, steps=4) with its defaults ran {len(forwards)} steps "
             f"and built its optimizer with lr {rates}; expected 3 untimed warm-up steps "
             f"plus the 4 timed ones (warmup=3), and lr 0.1, as its signature says: "
             f"benchmarks compare runs only when they do the same work.")
    losses = result.get("losses", []) if isinstance(result, dict) else []
    if len(losses) != 4 or not all(np.isfinite(losses)) or not result.get("seconds", 0) > 0:
        fail(f"train_steps(..., steps=4) returned {result!r}; expected a dict with 4 finite "
             f"losses and the seconds they took.")
    if not losses[-1] < losses[0]:
        fail(f"Four steps on one batch did not lower its loss ({losses[0]:.3f} -> "
             f"{losses[-1]:.3f}): each step must update the model it is given.")


def test_device_and_precision_choices(monkeypatch):
    """pick_device("auto") takes the best device this machine has; mixed precision only on
    CUDA (a CPU or MPS run stays in float32)."""
    best = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    picked = call(train.pick_device, "auto", what='pick_device("auto")')
    chosen = call(train.pick_device, "cpu", what='pick_device("cpu")')
    if torch.device(picked).type != best or torch.device(chosen).type != "cpu":
        fail(f'pick_device("auto") gave {picked} and pick_device("cpu") gave {chosen} on a '
             f'machine whose best device is {best}; expected {best} and cpu: "auto" takes '
             f"the fastest device there is, and a named device is taken as asked.")
    waited = []
    for kind in ("cuda", "mps", "cpu"):  # stand-ins: record which device is waited for
        monkeypatch.setattr(getattr(torch, kind), "synchronize",
                            lambda *args, kind=kind: waited.append(kind))
    for kind in ("cuda", "mps", "cpu"):
        call(train.synchronize, torch.device(kind), what=f'synchronize(torch.device("{kind}"))')
    if waited != ["cuda", "mps"]:
        fail(f"synchronize() on cuda, mps and cpu waited for {waited}; expected cuda and mps: "
             f"a GPU runs its work queued, so a timer must wait for it, while a CPU has "
             f"finished when the call returns.")
    dtype = call(train.amp_dtype_for, torch.device("cpu"), what='amp_dtype_for(cpu)')
    if dtype is not None:
        fail(f"amp_dtype_for(cpu) gave {dtype}; expected None (float32). Autocast to half "
             f"precision pays off on CUDA GPUs; on a CPU it is slow or unsupported.")


def run_main(argv: list[str], tmp_path: Path, monkeypatch, capsys) -> tuple[list[dict], str]:
    """Run train.main(argv) in-process on a machine without a GPU, with train_one_epoch and
    evaluate replaced by recorders (no training): what each epoch was given, and the output."""
    module = train.resolve()
    original = getattr(module.train_one_epoch, "__wrapped__", module.train_one_epoch)
    real = inspect.signature(original)
    epochs: list[dict] = []

    def record(*args, **kwargs):
        given = real.bind(*args, **kwargs)
        given.apply_defaults()
        run = dict(given.arguments)
        optimizer = run.pop("optimizer")
        optimizer.step()  # no gradients, so nothing moves: the scheduler sees a step was taken
        run["lr"] = [group["lr"] for group in optimizer.param_groups]
        run["trainable"] = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        epochs.append(run)
        return 1.0  # the "mean loss" of the epoch

    record.__wrapped__ = original  # a second run in the same test records the same way
    monkeypatch.setattr(module, "train_one_epoch", record)
    monkeypatch.setattr(module, "evaluate", lambda *args, **kwargs: 0.5)
    monkeypatch.setattr(module, "HERE", tmp_path)  # the default outputs go here, not beside it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    capsys.readouterr()
    call(train.main, argv, what=f"train.main({argv}) (training replaced by a recorder)")
    return epochs, capsys.readouterr().out


def settings(run: dict) -> dict:
    loader = run.get("loader")
    return {"device": str(run.get("device")), "amp_dtype": run.get("amp_dtype"),
            "channels_last": run.get("channels_last"), "max_steps": run.get("max_steps"),
            "batch_size": getattr(loader, "batch_size", None),
            "workers": getattr(loader, "num_workers", None),
            "images": len(loader.dataset) if loader is not None else None,
            "shuffled": isinstance(getattr(loader, "sampler", None), RandomSampler),
            "width": run["model"].conv1.out_channels if "model" in run else None}


def test_script_from_scratch_uses_its_documented_settings(tmp_path, monkeypatch, capsys):
    """`train.py` on a CPU: 30 epochs of SGD from lr 0.1 down a cosine, fake data in shuffled
    batches of 128, float32 and no channels_last, a zero-initialised ResNet18 of 10 classes
    saved to runs/resnet18.pt, and one line per epoch."""
    epochs, out = run_main(["--width", "8"], tmp_path, monkeypatch, capsys)
    cosine = [0.05 * (1 + math.cos(math.pi * k / 30)) for k in range(30)]
    lrs = [run["lr"][0] for run in epochs]
    if len(lrs) != 30 or not np.allclose(lrs, cosine, rtol=1e-6):
        fail(f"`train.py` (defaults: 30 epochs, lr 0.1 from scratch) ran {len(lrs)} epochs "
             f"with the learning rates {[round(v, 4) for v in lrs[:4]]}...; expected 30 "
             f"epochs starting at 0.1 and following a cosine (one scheduler step per epoch, "
             f"T_max the number of epochs) down to {cosine[-1]:.5f} in the last one.")
    expected = {"device": "cpu", "amp_dtype": None, "channels_last": False, "max_steps": None,
                "batch_size": 128, "workers": 2, "images": 256, "shuffled": True, "width": 8}
    got = settings(epochs[0])
    if got != expected:
        wrong = {k: v for k, v in got.items() if v != expected[k]}
        fail(f"`train.py` on a CPU trained with {wrong}; expected "
             f"{ {k: expected[k] for k in wrong} }: float32 and the default memory layout off "
             f"CUDA, every batch of each epoch, and the defaults that --help shows.")
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    if len(lines) != 30 or "epoch 30/30" not in lines[-1] or "1.000" not in lines[-1] \
            or "50.0%" not in lines[-1]:
        fail(f"`train.py` printed {len(lines)} epoch lines, the last {lines[-1:]}; expected 30, "
             f"the last saying epoch 30/30, its train loss (1.000 here) and test accuracy "
             f"(50.0% here).")
    saved = tmp_path / "runs" / "resnet18.pt"
    if not saved.is_file() or str(saved) not in out:
        fail(f"`train.py` did not save to runs/resnet18.pt beside the script and say so; it "
             f"wrote {sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*'))}.")
    model = resnet.ResNet18(10, width=8)
    model.load_state_dict(torch.load(saved, weights_only=True))
    if any(b.bn2.weight.abs().sum() != 0 for b in model.modules()
           if isinstance(b, resnet.BasicBlock)):
        fail("The untrained ResNet18 that `train.py` saved has non-zero bn2 weights: the "
             "script builds its model with zero_init_residual=True, so that every block "
             "starts as its shortcut.")


def test_script_dry_run_and_pretrained_settings(tmp_path, monkeypatch, capsys, checkpoint):
    """--dry-run: one epoch of 2 steps of 4 images, a width-16 model, nothing saved.
    --checkpoint: the frozen backbone with a new head, lr 0.01, the weights' normalisation."""
    epochs, out = run_main(["--dry-run"], tmp_path, monkeypatch, capsys)
    got = settings(epochs[0]) if len(epochs) == 1 else None
    expected = {"device": "cpu", "amp_dtype": None, "channels_last": False, "max_steps": 2,
                "batch_size": 4, "workers": 0, "images": 8, "shuffled": True, "width": 16}
    if got != expected or any(tmp_path.iterdir()):
        fail(f"`train.py --dry-run` ran {len(epochs)} epoch(s) with {got} and wrote "
             f"{sorted(p.name for p in tmp_path.iterdir())}; expected one epoch with "
             f"{expected} and nothing written: the smoke test checks the plumbing quickly.")
    epochs, out = run_main(["--checkpoint", str(checkpoint), "--epochs", "1", "--save",
                            str(tmp_path / "head.pt")], tmp_path, monkeypatch, capsys)
    run = epochs[0] if len(epochs) == 1 else {}
    transform = getattr(getattr(run.get("loader"), "dataset", None), "transform", None)
    means = [tuple(t.mean) for t in getattr(transform, "transforms", [])
             if isinstance(t, v2.Normalize)]
    if run.get("lr") != [0.01] or run.get("trainable") != 512 * 10 + 10 or \
            means != [tuple(IMAGENET.transforms().mean)]:
        fail(f"`train.py --checkpoint FILE` trained {run.get('trainable')} parameters at lr "
             f"{run.get('lr')}, normalising with the means {means}; expected only the new "
             f"head (5,130 parameters) at lr 0.01, and ImageNet's mean: pretrained weights "
             f"are fine-tuned gently, and their inputs scaled as in their own training.")


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--batch-size", "-2"],
                                  ["--device", "gpu"], ["--dataset", "cifar10"],
                                  ["--checkpoint", "missing.pt"]],
                         ids=["epochs0", "batch-2", "bad-device", "no-cifar", "no-checkpoint"])
def test_script_rejects_bad_input_in_one_line(argv, tmp_path, monkeypatch, capsys):
    """Nonsense arguments and missing files end the script with one clear line, not a
    traceback, before anything trains; CIFAR-10 is never downloaded unless asked."""
    monkeypatch.chdir(tmp_path)
    if argv[0] == "--dataset":
        argv = [*argv, "--data", str(tmp_path / "data")]
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


@pytest.mark.trains
@pytest.mark.requires("test_block_output_shape_for_any_stride_and_width",
                      "test_resnet18_feature_and_output_shapes")
def test_dry_run_trains_offline_on_cpu(tmp_path, monkeypatch):
    """`python train.py --dry-run` runs a couple of steps on fake data: no GPU, no network,
    nothing saved, and it says that its accuracy means nothing."""
    attempts = network_attempts(monkeypatch)
    proc = run_script(targets.resolve(Path(__file__).parent) / "train.py", ["--dry-run"],
                      tmp_path)
    code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    if code != 0 or "test accuracy" not in stdout:
        tail = "\n".join((stdout + stderr).strip().splitlines()[-6:])
        fail(f"python train.py --dry-run exited with {code}; expected it to train "
             f"two steps on fake images and print a test accuracy. Its last lines:\n{tail}")
    if attempts:
        fail("python train.py --dry-run tried to connect to the network; a smoke test runs "
             "on fake images, offline.")
    if "means nothing" not in stdout:
        fail(f"The dry run printed a test accuracy without saying that it means nothing "
             f"(random images, two steps):\n{stdout[-400:]}")
    made = sorted(p.name for p in tmp_path.iterdir())
    if made:
        fail(f"The dry run wrote {made} into its working directory; a smoke test must not "
             f"download or save anything.")
