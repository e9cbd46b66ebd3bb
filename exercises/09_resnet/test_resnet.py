"""Exercise 09: a ResNet18 for 32x32 images, transfer learning, CIFAR augmentation, training.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters. Nothing here downloads: torchvision's
ImageNet weights are stood in for by a local checkpoint of the same shapes, and CIFAR-10 by
a few generated images written in its on-disk format.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.resnet import BasicBlock as TorchvisionBlock

from torchkata import data, under_test, vision_files
from torchkata.checks import accuracy_of, assert_grads_flow, call, fail

resnet = under_test("resnet")
transfer = under_test("transfer")
cifar = under_test("cifar")
train = under_test("train")

SHORTCUT_HINT = ("A residual block adds its input to its output, so the shortcut must bring x "
                 "to the output's shape (channels and size) whenever the block changes either.")
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
        expected = oracle.to(device).eval()(x.to(device))
        if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
            gap = (got - expected).abs().max().item()
            fail(f"{what} (eval mode) differs from torchvision's BasicBlock with the same "
                 f"weights by up to {gap:.3g}. Expected relu(bn2(conv2(relu(bn1(conv1(x))))) "
                 f"+ shortcut(x)): the shortcut is added before the block's last ReLU.")


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


def test_resnet18_feature_and_output_shapes(device):
    """32x32 stays 32x32 in layer1 (no ImageNet stem), halves per stage; logits (B, classes)."""
    model = call(resnet.ResNet18, 7, what="ResNet18(num_classes=7)").to(device).eval()
    seen = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
        for name in ("layer1", "layer2", "layer3", "layer4")]
    with torch.no_grad():
        out = call(model, torch.rand(2, 3, 32, 32, device=device),
                   what="ResNet18(7) on (2, 3, 32, 32)", why=SHORTCUT_HINT)
    for h in hooks:
        h.remove()
    expected = {"layer1": (2, 64, 32, 32), "layer2": (2, 128, 16, 16),
                "layer3": (2, 256, 8, 8), "layer4": (2, 512, 4, 4)}
    if seen != expected or tuple(out.shape) != (2, 7):
        fail(f"ResNet18(7) on (2, 3, 32, 32): stages gave {seen} and logits "
             f"{tuple(out.shape)}; expected {expected} and (2, 7). On 32x32 images the stem "
             f"keeps the full resolution, and each later stage halves it and doubles the width.")


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
    padded = np.pad(pixels, ((4, 4), (4, 4), (0, 0)))  # black border, as RandomCrop pads
    crops = [padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
    candidates = torch.stack([normalised(c, mean, std) for c in crops]
                             + [normalised(c[:, ::-1].copy(), mean, std) for c in crops])
    transform = call(cifar.make_transform, True, None, what="make_transform(train=True)")
    seen = set()
    for _ in range(40):
        out = call(transform, Image.fromarray(pixels), what="the training transform")
        gaps = (candidates - out.cpu().float()).abs().flatten(1).amax(dim=1)
        if tuple(out.shape) != (3, 32, 32) or gaps.min() > 1e-4:
            fail(f"The training transform turned a 32x32 image into a tensor of shape "
                 f"{tuple(out.shape)} that is not a 32x32 crop of the image padded with 4 "
                 f"black pixels, mirrored or not, then scaled to [0, 1] and normalised. "
                 f"CIFAR augmentation shifts the image by up to 4 pixels and flips it "
                 f"horizontally; it keeps the scale and the colours.")
        seen.add(int(gaps.argmin()))
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
    transform = call(cifar.make_transform, False, weights, what="make_transform(train=False)")
    outs = [call(transform, Image.fromarray(pixels), what="the test transform") for _ in range(3)]
    expected = normalised(pixels, mean, std)
    for out in outs:
        if tuple(out.shape) != (3, 32, 32) or not torch.allclose(out, expected, atol=1e-5):
            fail(f"make_transform(train=False, weights={weights}) does not give the image "
                 f"scaled to [0, 1] and normalised with mean {tuple(mean)}, std {tuple(std)}, "
                 f"unchanged otherwise. Evaluation must see each image as it is, and with "
                 f"the statistics the model's weights expect.")


@pytest.fixture
def cifar_files(tmp_path):
    """8 training and 8 test images in CIFAR-10's on-disk format, and their labels."""
    x, y = data.coloured_shapes(n=4, classes=4, seed=3)
    pixels = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (16, 32, 32, 3)
    vision_files.write_cifar10(tmp_path, pixels[:8], y[:8].numpy(), train=True)
    vision_files.write_cifar10(tmp_path, pixels[8:], y[8:].numpy(), train=False)
    return tmp_path, pixels, y


def load_cifar(root):
    return call(cifar.cifar10, root, weights=None, download=False,
                dataset_cls=vision_files.LocalCIFAR10,
                what="cifar10(root, download=False) on 16 local images")


def test_cifar10_test_split_is_not_augmented(cifar_files):
    """Test images come out the same every time: normalised, never cropped or flipped."""
    root, pixels, labels = cifar_files
    _, test_set = load_cifar(root)
    mean, std = cifar.normalization(None)
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


def test_cifar10_training_split_is_augmented(cifar_files):
    """Training images differ between reads (random crops and flips) and keep their labels."""
    root, _, labels = cifar_files
    train_set, _ = load_cifar(root)
    reads = [[train_set[i] for i in range(8)] for _ in range(3)]
    if any(label != labels[i] for read in reads for i, (_, label) in enumerate(read)):
        fail("A training image came back with the wrong label.")
    changed = sum(not torch.equal(reads[0][i][0], reads[k][i][0])
                  for i in range(8) for k in (1, 2))
    if changed == 0:
        fail("Each of 8 training images came out the same in three reads: the training split "
             "is not augmented. Random shifts and flips show the network new variants of "
             "each image every epoch, which curbs overfitting on 50,000 images.")


# --- the training script ---------------------------------------------------------------


def test_evaluate_reports_accuracy_in_eval_mode(device):
    """evaluate() gives the eval-mode accuracy and leaves the model's statistics alone."""
    model = call(resnet.ResNet18, 4, width=8, what="ResNet18(4, width=8)").to(device)
    randomise_batchnorm(model)
    x, y = data.coloured_shapes(n=8, classes=4, seed=1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = call(train.evaluate, model, DataLoader(TensorDataset(x, y), batch_size=8), device,
               what="evaluate() on 32 shapes")
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    expected = accuracy_of(model, x, y, device)
    if moved or abs(got - expected) > 1e-6:
        fail(f"evaluate() reported {got:.1%} (the model in eval mode gets {expected:.1%}) "
             f"and changed {len(moved)} tensors of the model (e.g. {moved[:2]}). Evaluation "
             f"runs in eval mode, where BatchNorm uses its stored statistics and updates "
             f"nothing, and without building a graph.")


def test_train_steps_for_benchmarks(device):
    """train_steps runs N timed steps on a device-resident batch, in channels_last too."""
    model = call(resnet.ResNet18, 4, width=8, what="ResNet18(4, width=8)").to(device)
    x, y = data.coloured_shapes(n=2, classes=4, size=16)  # small and quick: (8, 3, 16, 16)
    result = call(train.train_steps, model, x.to(device), y.to(device), 4, channels_last=True,
                  warmup=1, what="train_steps(model, x, y, 4, channels_last=True)")
    losses = result.get("losses", []) if isinstance(result, dict) else []
    if len(losses) != 4 or not all(np.isfinite(losses)) or not result.get("seconds", 0) > 0:
        fail(f"train_steps(..., steps=4) returned {result!r}; expected a dict with 4 finite "
             f"losses and the seconds they took.")
    if not losses[-1] < losses[0]:
        fail(f"Four steps on one batch did not lower its loss ({losses[0]:.3f} -> "
             f"{losses[-1]:.3f}): each step must update the model it is given.")


def test_dry_run_trains_offline_on_cpu(tmp_path):
    """`python train.py --dry-run` runs a couple of steps on fake data: no GPU, no network."""
    script = Path(train.resolve().__file__)
    proc = subprocess.run([sys.executable, str(script), "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or "test accuracy" not in proc.stdout:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        fail(f"python train.py --dry-run exited with {proc.returncode}; expected it to train "
             f"two steps on fake images and print a test accuracy. Its last lines:\n{tail}")
    if any(tmp_path.iterdir()):
        fail(f"The dry run wrote {sorted(p.name for p in tmp_path.iterdir())} into its "
             f"working directory; a smoke test must not download or save anything.")
