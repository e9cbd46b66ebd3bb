"""Exercise 09: a ResNet18 for 32x32 images, transfer learning, CIFAR augmentation, training.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters. Nothing here downloads: torchvision's
ImageNet weights are stood in for by a local checkpoint of the same shapes, and CIFAR-10 by
a few generated images written in its on-disk format.
"""

import copy
import inspect
import math
import pickle
import types
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


def test_block_keeps_the_identity_shortcut_for_any_equal_width():
    """BasicBlock(n, n) with stride 1 adds x itself, however the number n was computed."""
    planes = int("257")  # a width computed at run time (a new int object above 256)
    block = call(resnet.BasicBlock, planes, int("257"), 1, what="BasicBlock(257, 257, stride=1)")
    extra = sorted(k for k in block.state_dict() if k.startswith("downsample"))
    if extra:
        fail(f"BasicBlock(257, 257, stride=1) has the shortcut parameters {extra[:3]}; "
             f"expected none. A block that keeps the channels and the size adds its input "
             f"unchanged; a shortcut convolution there adds parameters torchvision's weights "
             f"do not have. Compare numbers by value: two equal widths need not be the same "
             f"object.")


def test_resnet18_stem_and_default_classes():
    """ResNet18(width=8) has 10 classes by default (CIFAR-10), and its stem is a 3x3
    convolution without bias (the BatchNorm after it has one), as in torchvision."""
    model = call(resnet.ResNet18, width=8, what="ResNet18(width=8)")
    outside = {k: tuple(v.shape) for k, v in model.state_dict().items()
               if not k.startswith(("layer1.", "layer2.", "layer3.", "layer4."))}
    expected = {"conv1.weight": (8, 3, 3, 3), "bn1.weight": (8,), "bn1.bias": (8,),
                "bn1.running_mean": (8,), "bn1.running_var": (8,),
                "bn1.num_batches_tracked": (), "fc.weight": (10, 64), "fc.bias": (10,)}
    if outside != expected:
        wrong = sorted(set(outside.items()) ^ set(expected.items()))
        fail(f"ResNet18(width=8) has the stem and head tensors {outside}; expected "
             f"{expected} (differences: {wrong}). CIFAR-10 has 10 classes, the default; a "
             f"convolution followed by BatchNorm needs no bias, since BatchNorm subtracts "
             f"the mean and adds its own.")


def test_relus_work_in_place_as_torchvision_s_do():
    """Every ReLU of ResNet18 (the stem's and each block's) is nn.ReLU(inplace=True), as in
    torchvision's resnet18: print(model) shows ReLU(inplace=True) throughout."""
    model = call(resnet.ResNet18, width=8, what="ResNet18(width=8)")
    relus = {name: m.inplace for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    copies = [name for name, inplace in relus.items() if not inplace]
    if not relus or copies:
        fail(f"ResNet18(width=8) has {len(relus)} ReLU modules; not in place: "
             f"{', '.join(copies[:3])}{', ...' if len(copies) > 3 else ''}. Expected "
             f"nn.ReLU(inplace=True) in the stem and in every block, as torchvision's resnet18 "
             f"has (the README says so too). Each ReLU reads a tensor that nothing reads again, "
             f"a BatchNorm's output or the sum with the shortcut: rectifying it in place gives "
             f"the same values and gradients without a second activation-sized buffer, and on "
             f"a GPU memory is what limits the batch.")


def test_convolutions_start_with_he_initialisation():
    """Every convolution of ResNet18 starts from He's normal initialisation, fan-out mode:
    weights of standard deviation sqrt(2 / (out_channels * kernel area))."""
    model = call(resnet.ResNet18, 10, width=8, what="ResNet18(10, width=8)")
    off = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            ratio = m.weight.std().item() / math.sqrt(2 / fan_out)
            if not 0.75 < ratio < 1.25:
                off.append((name, round(ratio, 2)))
    if off:
        fail(f"The convolutions {off[:4]} (name, std / sqrt(2 / fan_out)) do not start with "
             f"He's initialisation in fan-out mode (expected a ratio near 1). PyTorch's own "
             f"default gives weights about 2.5 times smaller, and through 17 convolutions "
             f"and ReLUs the signal of a deep network fades at the start of training.")


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


def test_build_transfer_model_defaults_to_ten_classes_and_a_frozen_backbone(checkpoint):
    """build_transfer_model(checkpoint=FILE) with its defaults: 10 classes (CIFAR-10) and a
    frozen backbone, as its docstring's examples use it."""
    model = call(transfer.build_transfer_model, checkpoint=checkpoint,
                 what="build_transfer_model(checkpoint=FILE)")
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    classes = getattr(getattr(model, "fc", None), "out_features", None)
    if classes != 10 or trainable != ["fc.bias", "fc.weight"]:
        fail(f"build_transfer_model(checkpoint=FILE) gave a head of {classes} classes and "
             f"{len(trainable)} trainable tensors ({trainable[:3]}...); expected 10 classes "
             f"and only fc.weight and fc.bias: freeze_backbone=True and num_classes=10 are "
             f"the defaults its signature promises.")


class _RunsCode:
    """Pickled, it asks the loader to call print: a file that runs code when it is loaded."""

    def __reduce__(self):
        return print, ("CODE FROM THE CHECKPOINT RAN",)


def test_checkpoint_loading_runs_no_code(tmp_path, capsys):
    """build_transfer_model loads a checkpoint as weights only: a file that asks the loader
    to call a function is refused, and the function never runs."""
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2), "extra": _RunsCode()}, path)
    capsys.readouterr()
    try:
        transfer.build_transfer_model(10, checkpoint=path)
    except Exception:  # noqa: BLE001 - refusing the file is the expected outcome
        pass
    if "CODE FROM THE CHECKPOINT RAN" in capsys.readouterr().out:
        fail("Loading a checkpoint that holds a pickled function call ran that call. A .pt "
             "file is a pickle, and unpickling can run any code it names: a downloaded "
             "checkpoint must be loaded with torch.load(..., weights_only=True), which reads "
             "tensors and plain containers only.")


def test_make_optimizer_defaults():
    """make_optimizer(model) with its defaults: SGD with lr 0.01, Nesterov momentum 0.9 and
    weight decay 5e-4."""
    model = nn.Linear(3, 2)
    optimizer = call(transfer.make_optimizer, model, what="make_optimizer(model)")
    wanted = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    got = {k: optimizer.param_groups[0].get(k) for k in wanted}
    if not isinstance(optimizer, torch.optim.SGD) or got != wanted:
        fail(f"make_optimizer(model) built {type(optimizer).__name__} with {got}; expected "
             f"SGD with {wanted}: the defaults of its signature (lr 0.01 suits pretrained "
             f"weights), with Nesterov's look-ahead momentum.")


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
    widest = max(max(abs(k % 81 // 9 - 4), abs(k % 81 % 9 - 4)) for k in seen)
    if widest != 4:
        fail(f"In 40 training draws of one image, the largest shift was {widest} pixels; "
             f"expected shifts of up to 4 (a 32x32 crop of the image padded by 4 pixels on "
             f"each side), the standard CIFAR augmentation.")


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


def test_fake_data_defaults_look_like_cifar10():
    """fake_data() with its defaults: 64 images per split, generated at 32x32 (before any
    crop), labels of CIFAR-10's 10 classes."""
    train_set, test_set = call(cifar.fake_data, what="fake_data()")
    found = {}
    for name, split in (("training", train_set), ("test", test_set)):
        raw = copy.copy(split)
        raw.transform = lambda image: getattr(image, "size", None)  # the generated (W, H)
        items = [raw[i] for i in range(len(raw))]
        found[name] = (len(raw), {size for size, _ in items},
                       sorted({int(label) for _, label in items}))
    wanted = (64, {(32, 32)}, list(range(10)))
    if any(v != wanted for v in found.values()):
        fail(f"fake_data() gave (images, sizes generated, labels seen) {found}; expected "
             f"{wanted} for each split: stand-in data must look like CIFAR-10 (32x32 RGB, 10 "
             f"classes), or the dry run checks a different model than the real run trains.")


def test_cifar10_downloads_only_when_asked(tmp_path):
    """cifar10(root) opens both splits with download=False unless told otherwise."""
    opened = []

    def dataset_cls(root, train, transform, download):
        opened.append((train, download))
        return []

    call(cifar.cifar10, tmp_path, dataset_cls=dataset_cls, what="cifar10(root)")
    if sorted(opened) != [(False, False), (True, False)]:
        fail(f"cifar10(root) opened (train split, download) {opened}; expected both splits "
             f"with download=False: a library function fetches 170 MB from the network only "
             f"when its caller asks for it.")


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


def test_train_step_leaves_parameters_its_loss_does_not_reach(device):
    """A parameter the loss does not reach keeps its value: train_step clears the old
    gradients to None (not to zeros), so the optimizer skips it, weight decay included."""
    model = nn.ModuleDict({"used": nn.Linear(4, 3), "spare": nn.Linear(4, 3)}).to(device)
    forward = lambda x: model["used"](x)  # noqa: E731 - "spare" is a head for another task
    for p in model["spare"].parameters():
        p.grad = torch.ones_like(p)  # left over from a step on the other task
    spare = [p.detach().clone() for p in model["spare"].parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    x, y = torch.randn(6, 4, device=device), torch.arange(6, device=device) % 3
    call(train.train_step, forward, optimizer, no_scaler(device), x, y, None,
         what="train_step(model, SGD(weight_decay=0.1), scaler, x, y, None)")
    moved = [i for i, (p, q) in enumerate(zip(model["spare"].parameters(), spare))
             if not torch.equal(p.detach(), q)]
    if moved:
        fail(f"train_step moved {len(moved)} tensor(s) of a head that its loss does not "
             f"reach (it had gradients from an earlier step). optimizer.zero_grad() must set "
             f"the gradients to None: a zero gradient still lets weight decay and momentum "
             f"move a weight, while SGD skips a parameter without one.")


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
    """Without max_steps an epoch takes every batch once; with max_steps=k, exactly k, for a
    k of 2 as for one of 300. By default the batches keep their memory layout and no
    progress bar is drawn."""
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
    g = torch.Generator().manual_seed(0)  # a tiny model: 300 steps take a blink
    x, y = torch.randn(301, 3, 2, 2, generator=g), torch.arange(301) % 4
    model, steps = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).to(device), []
    model.register_forward_pre_hook(lambda m, i: steps.append(1))
    call(train.train_one_epoch, model, DataLoader(TensorDataset(x, y), batch_size=1),
         torch.optim.SGD(model.parameters(), lr=0.0), device, max_steps=300,
         what="train_one_epoch(..., max_steps=300) on 301 batches")
    if len(steps) != 300:
        fail(f"train_one_epoch(..., max_steps=300) on a loader of 301 batches ran "
             f"{len(steps)} training steps; expected 300, as max_steps=2 gave 2. A cap that "
             f"holds for small numbers only fails `--max-steps 300` from the command line: "
             f"the step count must be compared with max_steps as a number, by its value.")


class _Bar:
    """A stand-in for tqdm: records how it was made and what it showed after which batch."""

    made: list = []

    def __init__(self, iterable, **kwargs) -> None:
        self.iterable, self.kwargs, self.shown, self.at = iterable, kwargs, [], None
        _Bar.made.append(self)

    def __iter__(self):
        for at, item in enumerate(self.iterable):
            self.at = at
            yield item

    def set_postfix(self, **kwargs) -> None:
        self.shown.append((self.at, kwargs))


@pytest.mark.trains
def test_train_one_epoch_shows_the_loss_every_20_batches(device, monkeypatch):
    """The progress bar (tqdm, drawn only with progress=True) is told the current batch's
    loss, to 3 decimals, after batches 0, 20, 40...; it does not stay on screen."""
    monkeypatch.setattr(train.resolve(), "tqdm", _Bar)
    monkeypatch.setattr(_Bar, "made", [])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(21, 3, 2, 2, generator=g), torch.arange(21) % 4
    loader = DataLoader(TensorDataset(x, y), batch_size=1)  # 21 batches: 0..20
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).to(device)
    with torch.no_grad():
        losses = [f"{nn.functional.cross_entropy(model(xb.to(device)), yb.to(device)).item():.3f}"
                  for xb, yb in loader]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing moves: known losses
    for progress in (False, True):
        _Bar.made.clear()
        call(train.train_one_epoch, model, loader, optimizer, device, progress=progress,
             what=f"train_one_epoch(..., progress={progress}) on 21 batches")
        bar = _Bar.made[0] if len(_Bar.made) == 1 else None
        options = {k: bar.kwargs.get(k) for k in ("total", "leave", "disable")} if bar else None
        if options != {"total": 21, "leave": False, "disable": not progress}:
            fail(f"train_one_epoch(..., progress={progress}) made {len(_Bar.made)} tqdm "
                 f"bar(s) with {options}; expected one with total=21, leave=False and "
                 f"disable={not progress}: a bar only when asked, and one that disappears "
                 f"when the epoch ends, so that the epoch lines stay readable.")
        wanted = [(0, {"loss": losses[0]}), (20, {"loss": losses[20]})]
        if bar.shown != wanted:
            fail(f"Over 21 batches, train_one_epoch showed on its progress bar (batch, "
                 f"postfix) {bar.shown}; expected {wanted}: the loss of the batch just "
                 f"trained, every 20 batches from the first (reading a loss waits for the "
                 f"GPU, so it is not done after every batch).")


@pytest.mark.trains
def test_loss_scaling_only_for_float16(device, monkeypatch):
    """train_one_epoch and train_steps scale the loss (GradScaler enabled) for float16
    autocast only: bfloat16 and float32 have float32's range and need no scaling."""
    module, enabled = train.resolve(), []

    def step(model, optimizer, scaler, x, y, amp_dtype):  # records instead of training
        enabled.append(scaler.is_enabled())
        return torch.tensor(1.0)

    monkeypatch.setattr(module, "train_step", step)
    x, y = torch.randn(4, 3, 2, 2), torch.zeros(4, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for amp_dtype in (torch.float16, torch.bfloat16, None):
        enabled.clear()
        call(train.train_one_epoch, model, DataLoader(TensorDataset(x, y), batch_size=4),
             optimizer, device, amp_dtype, what=f"train_one_epoch(..., amp_dtype={amp_dtype})")
        call(train.train_steps, model, x.to(device), y.to(device), 1, amp_dtype=amp_dtype,
             warmup=0, what=f"train_steps(..., amp_dtype={amp_dtype})")
        if enabled != [amp_dtype == torch.float16] * 2:
            fail(f"With amp_dtype={amp_dtype}, train_one_epoch and train_steps handed "
                 f"train_step GradScalers enabled {enabled}; expected "
                 f"{[amp_dtype == torch.float16] * 2}. float16's small gradients underflow "
                 f"to zero unless the loss is scaled up; bfloat16 and float32 have the range "
                 f"of float32, and scaling them only costs time.")


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


class _Says(nn.Module):
    """A stand-in classifier of 4 classes that predicts, for each image, its first pixel."""

    def forward(self, x):
        return nn.functional.one_hot(x.flatten(1)[:, 0].long(), 4).float()


def test_evaluate_counts_exact_matches_over_every_image():
    """evaluate() is the fraction of images whose top class is the label: 4 of 6 right is
    0.667, 1 of 1 is 1.0, and an empty loader gives 0.0 rather than a division by zero."""
    cpu = torch.device("cpu")
    predicted, labels = torch.tensor([0, 1, 2, 3, 3, 2]), torch.tensor([0, 1, 2, 3, 0, 1])
    cases = [(predicted, labels, 4 / 6), (predicted[:1], labels[:1], 1.0),
             (predicted[:0], labels[:0], 0.0)]
    for p, y, wanted in cases:
        x = p.float().view(-1, 1, 1, 1)
        loader = DataLoader(TensorDataset(x, y), batch_size=4)
        got = call(train.evaluate, _Says(), loader, cpu,
                   what=f"evaluate() of a model that predicts {p.tolist()} for labels "
                        f"{y.tolist()}")
        if not abs(got - wanted) < 1e-9:
            fail(f"evaluate() of a model that predicts {p.tolist()} for the labels "
                 f"{y.tolist()} reported {got}; expected {wanted:.3f}: the fraction of images "
                 f"whose prediction equals the label, over all the images the loader gave "
                 f"(0.0 for none).")


def recorded_evaluation(device, **kwargs) -> dict:
    """What the model saw in evaluate(model, loader, device, **kwargs): the dtype of its
    output, the memory format of its input, and whether autograd was recording."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten()).to(device)
    seen: dict = {}
    model.register_forward_pre_hook(lambda m, i: seen.update(
        channels_last=i[0].is_contiguous(memory_format=torch.channels_last)
        and not i[0].is_contiguous(), grad=torch.is_grad_enabled()))
    model.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype))
    x, y = torch.randn(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    shown = "".join(f", {k}={v}" for k, v in kwargs.items())
    call(train.evaluate, model, DataLoader(TensorDataset(x, y), batch_size=2), device,
         **kwargs, what=f"evaluate(model, loader, device{shown})")
    return seen


def test_evaluate_autocasts_and_converts_only_when_asked(device):
    """evaluate() runs in float32 on contiguous batches by default; amp_dtype=torch.bfloat16
    autocasts, channels_last=True converts the batches."""
    for kwargs, wanted in (({}, (torch.float32, False)),
                           ({"amp_dtype": torch.bfloat16}, (torch.bfloat16, False)),
                           ({"channels_last": True}, (torch.float32, True))):
        seen = recorded_evaluation(device, **kwargs)
        got = (seen.get("dtype"), seen.get("channels_last"))
        shown = "".join(f", {k}={v}" for k, v in kwargs.items())
        if got != wanted:
            fail(f"evaluate(model, loader, device{shown})"
                 f" ran the model in {got[0]} on channels_last batches: {got[1]}; expected "
                 f"{wanted[0]} and {wanted[1]}. Autocast and channels_last are GPU speed-ups "
                 f"that the caller asks for (amp_dtype=None, channels_last=False by default), "
                 f"and then evaluation must use them as training did.")


def test_evaluate_records_no_autograd_graph(device):
    """evaluate() runs the model with autograd off: no graph is kept for a backward pass
    that never comes, which would hold every activation in memory."""
    seen = recorded_evaluation(device)
    if seen.get("grad") is not False:
        fail(f"evaluate() ran the model with autograd recording (torch.is_grad_enabled() was "
             f"{seen.get('grad')}); expected it off, as under @torch.no_grad(): evaluation "
             f"never calls backward, and a recorded graph keeps every layer's activations "
             f"in memory until the batch is done.")


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


def recording_steps(monkeypatch) -> list:
    """Replace train.py's train_step by a recorder of the model and batch it is handed; it
    returns a made-up loss instead of training."""
    steps: list = []

    def step(model, optimizer, scaler, x, y, amp_dtype):
        steps.append((model, x))
        return torch.tensor(1.0)

    monkeypatch.setattr(train.resolve(), "train_step", step)
    return steps


def test_train_steps_times_only_its_timed_steps(monkeypatch):
    """train_steps(model, x, y) runs 3 untimed warm-up steps then 20 timed ones by default,
    and reports the seconds between its two clock readings and steps * batch / seconds."""
    steps = recording_steps(monkeypatch)
    readings = iter([10.0, 25.0])  # a stand-in clock: the timed steps took 15 s
    monkeypatch.setattr(train.resolve(), "time",
                        types.SimpleNamespace(perf_counter=lambda: next(readings)))
    x, y = torch.randn(8, 3, 2, 2), torch.zeros(8, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    result = call(train.train_steps, model=model, x=x, y=y,
                  what="train_steps(model=model, x=x, y=y) (a clock reading 10 s, then 25 s)")
    got = (len(steps), result.get("seconds"), result.get("images_per_second"),
           len(result.get("losses", []))) if isinstance(result, dict) else result
    wanted = (23, 15.0, 20 * 8 / 15.0, 20)
    if not isinstance(result, dict) or got[:2] != wanted[:2] or got[3] != 20 \
            or not abs(got[2] - wanted[2]) < 1e-9:
        fail(f"train_steps(model, x, y) on a batch of 8, with a clock that read 10 s before "
             f"the timed steps and 25 s after, gave (steps run, seconds, images_per_second, "
             f"losses) = {got}; expected {wanted}: 3 warm-up steps and steps=20 by default, "
             f"the time between the readings, and the images trained on per second.")


def test_train_steps_converts_and_compiles_only_when_asked(monkeypatch):
    """train_steps trains the model as it is by default; channels_last=True converts the
    model and the batch, compile=True trains what torch.compile made of the model (replaced
    here by a wrapper that records what it wraps)."""
    steps = recording_steps(monkeypatch)
    compiled = []

    def fake_compile(net, *args, **kwargs):
        compiled.append(net)
        return ("compiled", net)

    monkeypatch.setattr(torch, "compile", fake_compile)
    x, y = torch.randn(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    for kwargs in ({}, {"channels_last": True}, {"compile": True}):
        model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 2))
        steps.clear()
        compiled.clear()
        shown = "".join(f", {k}=True" for k in kwargs)
        call(train.train_steps, model, x, y, 1, warmup=0, **kwargs,
             what=f"train_steps(model, x, y, 1{shown})")
        last = kwargs.get("channels_last", False)
        trained = steps[0][0] if steps else None
        got = {"compiled": compiled == [model] and trained == ("compiled", model),
               "as is": trained is model,
               "channels_last model": model[0].weight.is_contiguous(
                   memory_format=torch.channels_last) and not model[0].weight.is_contiguous(),
               "channels_last batch": bool(steps) and steps[0][1].is_contiguous(
                   memory_format=torch.channels_last) and not steps[0][1].is_contiguous()}
        wanted = {"compiled": "compile" in kwargs, "as is": "compile" not in kwargs,
                  "channels_last model": last, "channels_last batch": last}
        if got != wanted:
            wrong = {k: v for k, v in got.items() if v != wanted[k]}
            fail(f"train_steps(model, x, y, 1{shown}) gave {wrong}; expected "
                 f"{ {k: wanted[k] for k in wrong} }. Compiling and channels_last are "
                 f"speed-ups that the benchmark asks for (both off by default), and a "
                 f"benchmark of one must not silently measure the other.")


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


def test_device_and_precision_with_a_gpu(monkeypatch):
    """With a CUDA GPU (pretended here): "auto" picks cuda, a named device is still taken as
    asked, and autocast uses bfloat16 where the GPU supports it, else float16; on MPS and
    the CPU, float32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    got = {name: str(call(train.pick_device, name, what=f'pick_device("{name}")'))
           for name in shell_argv(["auto", "cpu", "mps"])}
    if got != {"auto": "cuda", "cpu": "cpu", "mps": "mps"}:
        fail(f"With a CUDA GPU available, pick_device gave {got}; expected auto -> cuda, "
             f"cpu -> cpu, mps -> mps: only 'auto' chooses, a named device is what the user "
             f"asked for (names compared by value, as they come from the command line).")
    dtypes = {}
    for bf16 in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, bf16=bf16, **k: bf16)
        for kind in shell_argv(["cuda", "mps", "cpu"]):
            dtypes[(kind, bf16)] = call(train.amp_dtype_for, torch.device(kind),
                                        what=f"amp_dtype_for({kind})")
    wanted = {("cuda", True): torch.bfloat16, ("cuda", False): torch.float16,
              ("mps", True): None, ("mps", False): None, ("cpu", True): None,
              ("cpu", False): None}
    if dtypes != wanted:
        wrong = {k: v for k, v in dtypes.items() if v != wanted[k]}
        fail(f"amp_dtype_for gave (device, bfloat16 supported) -> {wrong}; expected "
             f"{ {k: wanted[k] for k in wrong} }. bfloat16 keeps float32's range and needs "
             f"no loss scaling, so it is preferred where the GPU has it; older CUDA GPUs get "
             f"float16; MPS and the CPU run in float32.")


def run_main(argv: list[str], tmp_path: Path, monkeypatch, capsys,
             gpu: bool = False) -> tuple[list[dict], str]:
    """Run train.main(argv) in-process on a machine without a GPU (``gpu``: with a CUDA and
    an MPS device pretended), with train_one_epoch and evaluate replaced by recorders (no
    training): what each epoch was given, and the output."""
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
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.mps, "is_available", lambda: gpu)
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


def recording_models(monkeypatch, gpu: bool = False) -> list[dict]:
    """Replace train.py's ResNet18 by a recorder of its arguments that builds the real one,
    at most 8 channels wide (quick). ``gpu``: the model stays on the CPU whatever device
    it is moved to (for a pretended GPU)."""
    module = train.resolve()
    real, signature = module.ResNet18, inspect.signature(module.ResNet18)
    calls: list[dict] = []

    def build(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        model = real(**{**bound.arguments, "width": min(bound.arguments["width"], 8)})
        if gpu:
            to = model.to
            model.to = lambda *a, **k: to(*[v for v in a if not isinstance(v, (str,
                                                                                torch.device))],
                                          **{n: v for n, v in k.items() if n != "device"})
        return model

    monkeypatch.setattr(module, "ResNet18", build)
    return calls


@pytest.mark.trains
def test_script_help_says_what_it_does():
    """`python train.py --help` starts its description with the docstring's first line."""
    assert_help_opens_with_summary(train.resolve(), "train.py")


@pytest.mark.trains
@pytest.mark.requires("test_script_from_scratch_uses_its_documented_settings")
def test_script_starts_from_the_same_weights_every_run(tmp_path, monkeypatch, capsys):
    """`train.py` seeds torch with 0 before it builds its model (the README says so): a run
    from scratch starts from the weights that torch.manual_seed(0) and then
    ResNet18(10, width, zero_init_residual=True) give, whatever torch's state before."""
    torch.manual_seed(1234)  # not 0: only the script's own seed may decide its weights
    epochs, _ = run_main(shell_argv(["--epochs", "1", "--width", "8"]), tmp_path, monkeypatch,
                         capsys)
    started = epochs[0]["model"].state_dict() if len(epochs) == 1 else {}
    torch.manual_seed(0)
    expected = call(resnet.ResNet18, 10, width=8, zero_init_residual=True,
                    what="ResNet18(10, width=8, zero_init_residual=True)").state_dict()
    differ = [k for k, v in expected.items()
              if k not in started or not torch.equal(started[k].cpu(), v)]
    if differ:
        fail(f"`train.py --width 8` started training from weights that differ in "
             f"{len(differ)} of {len(expected)} tensors (e.g. {differ[:2]}) from those of "
             f"ResNet18(10, width=8, zero_init_residual=True) built right after "
             f"torch.manual_seed(0). The README promises runs seeded with 0: the same command "
             f"must start from the same weights, so that two runs can be compared and a "
             f"change in the results means a change in the code, not luck.")


@pytest.mark.trains
@pytest.mark.requires("test_script_from_scratch_uses_its_documented_settings")
def test_script_builds_a_full_width_model_and_drops_incomplete_batches(tmp_path, monkeypatch,
                                                                      capsys):
    """`train.py --dataset fake` builds ResNet18(10, width=64, zero_init_residual=True) and
    trains on full batches only (the loader drops an incomplete last batch)."""
    models = recording_models(monkeypatch)
    argv = shell_argv(["--dataset", "fake", "--epochs", "1"])
    epochs, out = run_main(argv, tmp_path, monkeypatch, capsys)
    got = ({k: models[0].get(k) for k in ("num_classes", "width", "zero_init_residual")}
           if len(models) == 1 else models)
    loader = epochs[0].get("loader") if len(epochs) == 1 else None
    wanted = {"num_classes": 10, "width": 64, "zero_init_residual": True}
    if got != wanted or "fake data" not in out or getattr(loader, "drop_last", None) is not True:
        fail(f"`train.py {' '.join(argv)}` built ResNet18 with {got}, said "
             f"{'that' if 'fake data' in out else 'nothing about'} its fake data, and gave "
             f"train_one_epoch a loader with drop_last={getattr(loader, 'drop_last', None)}; "
             f"expected {wanted} (--width defaults to 64, as --help says), the fake data "
             f"announced, and drop_last=True: a last batch of a few images gives BatchNorm "
             f"noisy statistics.")


@pytest.mark.trains
@pytest.mark.requires("test_script_from_scratch_uses_its_documented_settings")
def test_script_uses_the_gpu_when_there_is_one_unless_told_otherwise(tmp_path, monkeypatch,
                                                                      capsys):
    """With a CUDA GPU with bfloat16 (pretended here), `train.py` trains on it in bfloat16
    autocast with the model and its batches in channels_last and pinned loader memory;
    `--device cuda` is accepted;
    `--device cpu` and `--device mps` (an MPS device pretended too) mean float32 and
    neither speed-up."""
    recording_models(monkeypatch, gpu=True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    cuda = {"device": "cuda", "amp_dtype": torch.bfloat16, "channels_last": True,
            "channels_last model": True, "pin_memory": True}
    others = {"amp_dtype": None, "channels_last": False, "channels_last model": False,
              "pin_memory": False}
    for argv, wanted in (([], cuda), (["--device", "cuda"], cuda),
                         (["--device", "cpu"], {"device": "cpu", **others}),
                         (["--device", "mps"], {"device": "mps", **others})):
        argv = shell_argv([*argv, "--epochs", "1", "--width", "8"])
        epochs, _ = run_main(argv, tmp_path, monkeypatch, capsys, gpu=True)
        run = epochs[0] if len(epochs) == 1 else {}
        weight = run["model"].conv1.weight if "model" in run else torch.empty(0)
        got = {"device": str(run.get("device")), "amp_dtype": run.get("amp_dtype"),
               "channels_last": run.get("channels_last"),
               "channels_last model": weight.dim() == 4 and not weight.is_contiguous()
               and weight.is_contiguous(memory_format=torch.channels_last),
               "pin_memory": getattr(run.get("loader"), "pin_memory", None)}
        if got != wanted:
            wrong = {k: v for k, v in got.items() if v != wanted[k]}
            fail(f"`train.py {' '.join(argv)}` with a CUDA GPU and an MPS device available "
                 f"(pretended) trained with {wrong}; expected { {k: wanted[k] for k in wrong} }."
                 f" 'auto' picks CUDA when it is there, and on CUDA the GPU speed-ups are on "
                 f"(bfloat16 where supported; channels_last for the model's weights as for "
                 f"its batches, or each convolution converts one of them); on any other "
                 f"device, none of them.")


@pytest.mark.trains
@pytest.mark.requires("test_script_from_scratch_uses_its_documented_settings")
def test_script_rejects_a_bad_lr_or_workers_and_accepts_the_rest(tmp_path, monkeypatch,
                                                                 capsys):
    """--lr 0 or below and --workers below 0 end the script with one line before anything
    trains; --lr 0.5 and --workers 0 or 1 are used as given (workers kept alive between
    epochs when there are any)."""
    recording_models(monkeypatch)
    epochs: list = []

    def no_training(*args, **kwargs):
        epochs.append(args)
        return 1.0

    no_training.__wrapped__ = train.resolve().train_one_epoch  # run_main records the same way
    monkeypatch.setattr(train.resolve(), "train_one_epoch", no_training)
    monkeypatch.setattr(train.resolve(), "evaluate", lambda *args, **kwargs: 0.5)
    for argv in (["--lr", "0"], ["--lr", "-0.5"], ["--workers", "-1"]):
        ended = how_script_ended(train.main, shell_argv([*argv, "--save", str(tmp_path / "x")]))
        if ended or epochs:
            fail(f"`python train.py {' '.join(argv)}` {ended or 'went on to train'}; "
                 f"expected it to stop with one line that says what is wrong: the learning "
                 f"rate must be positive, and the number of loader processes at least 0.")
    for argv, wanted in ((["--lr", "0.5", "--workers", "1"], ([0.5], 1, True)),
                         (["--workers", "0"], ([0.1], 0, False))):
        argv = shell_argv([*argv, "--epochs", "1", "--width", "8"])
        epochs, _ = run_main(argv, tmp_path, monkeypatch, capsys)
        loader = epochs[0].get("loader") if len(epochs) == 1 else None
        got = (epochs[0].get("lr") if epochs else None, getattr(loader, "num_workers", None),
               getattr(loader, "persistent_workers", None))
        if got != wanted:
            fail(f"`train.py {' '.join(argv)}` trained with (lr, loader workers, persistent "
                 f"workers) = {got}; expected {wanted}: a positive lr and 0 or more workers "
                 f"are valid and used as given, and worker processes are kept between "
                 f"epochs whenever there is at least one.")


def recording_transfer(monkeypatch, fails: BaseException | None = None) -> list[dict]:
    """Replace train.py's build_transfer_model by a recorder of its arguments that returns a
    small stand-in model (or raises ``fails``): nothing is downloaded or loaded."""
    module = train.resolve()
    signature = inspect.signature(module.build_transfer_model)
    calls: list[dict] = []

    def build(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        if fails is not None:
            raise fails
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, bound.arguments[
            "num_classes"]))

    monkeypatch.setattr(module, "build_transfer_model", build)
    return calls


@pytest.mark.trains
@pytest.mark.requires("test_script_dry_run_and_pretrained_settings")
def test_script_needs_the_imagenet_weights_cached_or_a_download(tmp_path, monkeypatch, capsys):
    """`--pretrained` stops with one line when ImageNet's weights are neither in torch's
    cache nor allowed to download; it goes on with --download, with a cached copy, or with
    --checkpoint FILE (which needs no ImageNet weights)."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    calls = recording_transfer(monkeypatch)
    argv = ["--pretrained", "--epochs", "1", "--max-steps", "1", "--save", str(tmp_path / "x.pt")]
    ended = how_script_ended(train.main, shell_argv(argv))
    if ended or calls:
        fail(f"`train.py --pretrained` with no ImageNet weights in torch's cache and no "
             f"--download {ended or 'went on to build the model'}; expected one line that "
             f"says to add --download or pass --checkpoint: nothing is fetched unless asked.")
    checkpoint_file = tmp_path / "resnet18.pt"
    checkpoint_file.touch()
    cached = hub / "checkpoints" / Path(IMAGENET.url).name
    for argv, cache, weights in ((["--pretrained", "--download"], False, IMAGENET),
                                 (["--pretrained", "--checkpoint", str(checkpoint_file)], False,
                                  None),
                                 (["--pretrained"], True, IMAGENET)):
        if cache:
            cached.parent.mkdir(parents=True)
            cached.touch()
        calls.clear()
        argv = shell_argv([*argv, "--epochs", "1", "--save", str(tmp_path / "out.pt")])
        run_main(argv, tmp_path, monkeypatch, capsys)
        got = calls[0].get("weights", "no call") if len(calls) == 1 else f"{len(calls)} calls"
        if got != weights:
            where = " (weights in torch's cache)" if cache else ""
            fail(f"`train.py {' '.join(argv)}`{where} called build_transfer_model with "
                 f"weights={got}; expected {weights}: ImageNet's weights come from torch's "
                 f"cache or a download the user allowed, and a checkpoint replaces them.")


@pytest.mark.trains
@pytest.mark.requires("test_script_rejects_bad_input_in_one_line")
def test_script_reports_an_unreadable_checkpoint_in_one_line(tmp_path, monkeypatch):
    """Whichever error torch reports for a checkpoint it cannot read (RuntimeError,
    UnpicklingError, EOFError, KeyError, ValueError), the script ends with one line that
    names the file and the error's first line."""
    checkpoint_file = tmp_path / "broken.pt"
    checkpoint_file.touch()
    argv = ["--checkpoint", str(checkpoint_file), "--epochs", "1"]
    for kind in (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError):
        recording_transfer(monkeypatch, fails=kind("what went wrong\nin detail"))
        try:
            train.main(list(argv))
        except SystemExit as exc:
            said = str(exc.code)
        except Exception as exc:  # noqa: BLE001 - a traceback is the finding
            said = f"a traceback ({type(exc).__name__})"
        else:
            said = "nothing: it carried on"
        if str(checkpoint_file) not in said or "\n" in said.strip() or \
                "what went wrong" not in said or (kind is not KeyError and "in detail" in said):
            fail(f"`train.py --checkpoint FILE`, where loading the file raised {kind.__name__}"
                 f"('what went wrong\\nin detail'), ended with {said!r}; expected one line "
                 f"naming the file and the error's first line: a damaged or foreign "
                 f"checkpoint is a mistake of the user's, not a bug of the script.")


@pytest.mark.trains
@pytest.mark.requires("test_script_from_scratch_uses_its_documented_settings")
def test_script_compiles_only_when_asked(tmp_path, monkeypatch, capsys):
    """`train.py --compile` trains what torch.compile made of the model (replaced here by a
    recorder); without it, or in a dry run, the model itself trains."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, *a, **k: compiled.append(net) or
                        nn.Sequential(net))
    for argv, wanted in ((["--compile"], True), ([], False), (["--dry-run", "--compile"], False)):
        compiled.clear()
        argv = shell_argv([*argv, "--epochs", "1", "--width", "8"])
        epochs, _ = run_main(argv, tmp_path, monkeypatch, capsys)
        trained = epochs[0].get("model") if len(epochs) == 1 else None
        got = (len(compiled), isinstance(trained, nn.Sequential))
        if got != ((1, True) if wanted else (0, False)):
            fail(f"`train.py {' '.join(argv)}` called torch.compile {got[0]} time(s) and "
                 f"trained {'what it made' if got[1] else 'the model itself'}; expected "
                 f"{'one call, and what it made trained' if wanted else 'no call'}: "
                 f"compiling takes minutes, so it happens only when asked, and never in a "
                 f"dry run, which checks the plumbing quickly.")


@pytest.mark.trains
@pytest.mark.requires("test_script_from_scratch_uses_its_documented_settings")
def test_script_reports_each_epochs_duration(tmp_path, monkeypatch, capsys):
    """Each epoch line ends with the seconds the epoch took: the difference of two readings
    of the clock (a stand-in here that reads 10 s, then 25 s)."""
    readings = iter([10.0, 25.0])
    monkeypatch.setattr(train.resolve(), "time",
                        types.SimpleNamespace(perf_counter=lambda: next(readings)))
    _, out = run_main(shell_argv(["--epochs", "1", "--width", "8"]), tmp_path, monkeypatch,
                      capsys)
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    if len(lines) != 1 or not lines[0].endswith("(15 s)"):
        fail(f"With a clock that read 10 s when the epoch started and 25 s when it ended, "
             f"`train.py --epochs 1` printed {lines}; expected one epoch line ending in "
             f"'(15 s)': the time the epoch took, to compare runs and settings.")


@pytest.mark.trains
@pytest.mark.requires("test_script_from_scratch_uses_its_documented_settings")
def test_script_saves_into_folders_it_creates(tmp_path, monkeypatch, capsys):
    """--save runs/a/b/model.pt creates the missing folders runs/a/b and saves there."""
    save = tmp_path / "runs" / "a" / "b" / "model.pt"
    argv = shell_argv(["--epochs", "1", "--width", "8", "--save", str(save)])
    run_main(argv, tmp_path, monkeypatch, capsys)
    if not save.is_file():
        fail(f"`train.py --save {save.relative_to(tmp_path)}` (none of its folders there) "
             f"wrote {sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*'))}; "
             f"expected the weights at that path, its missing folders created: losing a "
             f"long training run to a missing folder is a costly mistake.")


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
