"""Exercise 05: a Dataset, DataLoaders, and a pipeline that prepares each split correctly.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters. The torchvision tests write a few tiny
images in each data set's own file format and open them with the real classes, offline.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from torchkata import under_test
from torchkata.checks import call, fail
from torchkata.vision_files import write_cifar10, write_mnist

dataset = under_test("dataset")
pipeline = under_test("pipeline")
main = under_test("main")

N_TRAIN, N_TEST = 20, 7
NAMES = ["mnist", "fashionmnist", "cifar10"]


# --- tiny data sets on disk ------------------------------------------------------------


def _images(rng, n, shape, low, high):
    """uint8 images whose channel c (the last axis) takes values in [low[c], high[c])."""
    channels = [rng.integers(lo, hi, size=(n, *shape)) for lo, hi in zip(low, high)]
    return np.stack(channels, axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Writes MNIST, FashionMNIST and CIFAR-10 files; returns (root, raw arrays per name).

    Training and test images are drawn from different brightness ranges, so statistics of
    the wrong split are easy to tell apart from the right ones.
    """
    root = tmp_path_factory.mktemp("vision")
    rng = np.random.default_rng(5)
    raw = {}
    for name, cls_name in (("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")):
        for train, n, low, high in ((True, N_TRAIN, [0], [120]), (False, N_TEST, [90], [256])):
            x = _images(rng, n, (28, 28), low, high)[..., 0]  # (N, 28, 28)
            y = rng.integers(0, 10, size=n)
            write_mnist(root, x, y, train=train, name=cls_name)
            raw[name, train] = (x[:, None], y)  # (N, 1, 28, 28)
    for train, n, low, high in ((True, N_TRAIN, [0, 60, 150], [80, 160, 256]),
                                (False, N_TEST, [150, 0, 50], [256, 100, 120])):
        x = _images(rng, n, (32, 32), low, high)  # (N, 32, 32, 3)
        y = rng.integers(0, 10, size=n)
        write_cifar10(root, x, y, train=train)
        raw["cifar10", train] = (x.transpose(0, 3, 1, 2), y)  # (N, 3, 32, 32)
    return root, raw


def registry():
    """The learner's registry, with CIFAR-10 opened by the md5-relaxed LocalCIFAR10."""
    from torchkata.vision_files import LocalCIFAR10

    return {**pipeline.REGISTRY, "cifar10": LocalCIFAR10}


def expected_class(name):
    from torchvision import datasets

    from torchkata.vision_files import LocalCIFAR10

    return {"mnist": datasets.MNIST, "fashionmnist": datasets.FashionMNIST,
            "cifar10": LocalCIFAR10}[name]


PIPELINE = ("Each image goes through its split's transform: ToImage, then augmentation for "
            "training only, ToDtype, and Normalize with one mean and one std per channel.")


def open_splits(name, root):
    return call(pipeline.make_datasets, name, str(root), download=False, registry=registry(),
                what=f'make_datasets("{name}", root, download=False, registry=...)')


def sample(split, i, what, why=""):
    return call(split.__getitem__, i, what=f"{what}[{i}]", why=why)


def stats64(images):
    """Per-channel mean and std (population) of uint8 images (N, C, H, W), in float64."""
    x = torch.from_numpy(images).double() / 255
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)


def normalised(images, mean, std):
    x = torch.from_numpy(images).double() / 255
    return (x - mean[:, None, None]) / std[:, None, None]


# --- the Dataset -----------------------------------------------------------------------


@given(n=st.integers(1, 40))
def test_len_counts_every_sample(n):
    """len(ImageDataset) is the number of samples it holds."""
    ds = call(dataset.ImageDataset, torch.zeros(n, 1, 2, 2, dtype=torch.uint8),
              list(range(n)), what=f"ImageDataset() with {n} images")
    got = call(len, ds, what="len(ImageDataset)")
    if got != n:
        fail(f"len() of an ImageDataset holding {n} image(s) is {got}. It must be {n}: a "
             f"DataLoader asks len() which indices exist, so every index from 0 to len() - 1 "
             f"is read, and nothing else. A len() that is too small hides samples from "
             f"every epoch; one that is too large reads past the end.")


def test_getitem_returns_image_and_label():
    """dataset[i] is the pair (image i, label i), the image of shape (C, H, W)."""
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).reshape(5, 3, 2, 2)
    labels = np.array([4, 0, 9, 2, 7], dtype=np.uint8)  # as MNIST's files store them
    ds = call(dataset.ImageDataset, images, labels, what="ImageDataset(images, labels)")
    for i in range(5):
        item = sample(ds, i, "ImageDataset")
        if not (isinstance(item, tuple) and len(item) == 2):
            fail(f"ImageDataset[{i}] returned {type(item).__name__}, expected a pair (x, y): "
                 f"the DataLoader collates the x's into one batch and the y's into another.")
        x, y = item
        if not torch.equal(torch.as_tensor(x), images[i]):
            fail(f"ImageDataset[{i}] returned an image that is not image {i} "
                 f"(shape {tuple(torch.as_tensor(x).shape)}, expected (3, 2, 2)).")
        if torch.as_tensor(y).item() != labels[i]:
            fail(f"ImageDataset[{i}] returned label {torch.as_tensor(y).item()}, expected "
                 f"{labels[i]}: sample i pairs image i with label i.")


def test_transform_changes_images_not_labels():
    """The transform is applied to the image of each sample, and to nothing else."""
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    labels = [3, 1, 4, 1, 5, 9]
    plain = call(dataset.ImageDataset, images, labels, what="ImageDataset(images, labels)")
    scaled = call(dataset.ImageDataset, images, labels, transform=lambda t: t.float() / 255,
                  what="ImageDataset(images, labels, transform=...)")
    for i in range(6):
        x, y = sample(scaled, i, "ImageDataset(..., transform=lambda t: t.float() / 255)")
        _, y_plain = sample(plain, i, "ImageDataset(images, labels)")
        if not torch.allclose(torch.as_tensor(x).float(), images[i].float() / 255):
            fail(f"With transform=lambda t: t.float() / 255, sample {i}'s image is not the "
                 f"transformed image {i}. The transform should run on every image.")
        if not torch.equal(torch.as_tensor(y), torch.as_tensor(y_plain)):
            fail(f"With a transform, sample {i}'s label is {y!r}; without one it is "
                 f"{y_plain!r}. A transform prepares images (scales, crops, normalises "
                 f"pixels); run on a label it turns class {labels[i]} into something else, "
                 f"and the model is trained towards the wrong targets.")


def test_labels_batch_into_cross_entropy_targets(device):
    """Batches of labels are int64 class indices (B,), what nn.CrossEntropyLoss expects."""
    images = torch.rand(10, 1, 4, 4)
    ds = call(dataset.ImageDataset, images, np.arange(10) % 3, what="ImageDataset()")
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    for _, y in loader:
        if y.dtype != torch.int64 or y.shape != (len(y),):
            fail(f"A batch of 4 labels has dtype {y.dtype} and shape {tuple(y.shape)}; "
                 f"nn.CrossEntropyLoss expects class indices: int64 (long), shape (B,). "
                 f"Given float targets, it reads them as class probabilities of shape (B, C) "
                 f"and fails, or silently computes something else.")
        logits = torch.zeros(len(y), 3, device=device, requires_grad=True)
        call(torch.nn.functional.cross_entropy, logits, y.to(device),
             what="cross_entropy(logits (B, 3), labels of a batch)",
             why="Class-index targets must be int64 (long) tensors of shape (B,).")


# --- the DataLoaders -------------------------------------------------------------------


def numbered(n):
    """An ImageDataset whose image i is filled with the number i."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2)
    return call(dataset.ImageDataset, images.clone(), np.arange(n) % 10,
                what=f"ImageDataset() with {n} images")


def epoch_ids(loader):
    return torch.cat([x[:, 0, 0, 0] for x, _ in loader]).long().tolist()


def test_loader_visits_each_sample_once_per_epoch():
    """One epoch of either loader yields every sample exactly once, however batches fall."""
    ds = numbered(23)
    loaders = call(pipeline.make_loaders, ds, ds, batch_size=5,
                   what="make_loaders(train, test, batch_size=5)")
    for split, loader in zip(("training", "test"), loaders):
        seen = sorted(call(epoch_ids, loader, what=f"one epoch of the {split} loader"))
        if seen != list(range(23)):
            missing = sorted(set(range(23)) - set(seen))
            twice = sorted({i for i in seen if seen.count(i) > 1})
            fail(f"One epoch of the {split} loader over 23 samples in batches of 5 yielded "
                 f"{len(seen)} samples; never seen: {missing}; seen more than once: {twice}. "
                 f"An epoch is one pass over the whole data set: each sample exactly once, "
                 f"including those of the last, smaller batch.")


def test_training_loader_reshuffles_every_epoch():
    """The training loader visits the samples in a new random order each epoch."""
    ds = numbered(23)
    train_loader, _ = call(pipeline.make_loaders, ds, ds, batch_size=5,
                           what="make_loaders(train, test, batch_size=5)")
    first, second = epoch_ids(train_loader), epoch_ids(train_loader)
    if first == sorted(first) or first == second:
        fail("The training loader visits the samples in the same order every epoch (or in "
             "their stored order). Data sets are often stored sorted by class; batches in a "
             "fixed order bias each step towards a few classes and let the model learn the "
             "order. Training batches should be drawn in a fresh random order every epoch.")


# --- normalisation statistics ----------------------------------------------------------


@given(n=st.integers(1, 6), c=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(2, 6),
       batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_channel_stats_match_float64_oracle(n, c, h, w, batch, seed):
    """channel_stats gives each channel's mean and std over all pixels of all images."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(c, dtype=torch.float32)[:, None, None] * 2  # channels differ
    images = torch.rand(n, c, h, w, generator=g) * (1 + offsets) + offsets  # (N, C, H, W)
    ds = TensorDataset(images, torch.zeros(n, dtype=torch.long))
    mean, std = call(pipeline.channel_stats, ds, batch_size=batch,
                     what=f"channel_stats() of {n} image(s) of shape ({c}, {h}, {w})")
    x = images.double()
    what = f"channel_stats() of {n} image(s) (C, H, W) = ({c}, {h}, {w}), batch_size={batch}"
    for name, got in (("mean", mean), ("std", std)):
        got = torch.as_tensor(got)
        if got.shape != (c,):
            fail(f"{what}: the {name} has shape {tuple(got.shape)}, expected ({c},): one value "
                 f"per channel, each over every pixel of every image (all axes but C).")
    if not torch.allclose(mean.double().cpu(), x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5):
        fail(f"{what}: mean {mean.tolist()}, expected {x.mean(dim=(0, 2, 3)).tolist()}: "
             f"each channel's mean over every pixel of every image.")
    std = std.double().cpu()
    if not any(torch.allclose(std, x.std(dim=(0, 2, 3), correction=k), rtol=1e-3, atol=1e-5)
               for k in (0, 1)):
        fail(f"{what}: std {std.tolist()}, expected "
             f"{x.std(dim=(0, 2, 3), correction=0).tolist()}: each channel's standard "
             f"deviation over every pixel of every image (not an average of per-batch "
             f"or per-image values).")


# --- make_datasets: the switch, the transforms of each split ----------------------------


@pytest.mark.parametrize("name", NAMES)
def test_make_datasets_opens_each_split_with_its_class(files, name):
    """make_datasets(name) opens that data set's training and test files with its class."""
    root, raw = files
    train, test = open_splits(name, root)
    cls = expected_class(name)
    for split, ds, is_train in (("training", train, True), ("test", test, False)):
        images, labels = raw[name, is_train]
        if not isinstance(ds, cls):
            fail(f'make_datasets("{name}") returned a {type(ds).__name__} as the {split} '
                 f"split, expected torchvision's {cls.__name__} (the tests open CIFAR-10 with "
                 f"LocalCIFAR10, passed in through the registry).")
        if len(ds) != len(labels):
            fail(f'make_datasets("{name}"): the {split} split has {len(ds)} images; its files '
                 f"hold {len(labels)}. Are the training and test files mixed up (train=True "
                 f"or False)? Testing on training images measures memory, not learning.")
        x, y = sample(ds, 0, f"{split} split", PIPELINE)
        if tuple(x.shape) != images.shape[1:] or x.dtype != torch.float32:
            fail(f'make_datasets("{name}"): a {split} image is {x.dtype} of shape '
                 f"{tuple(x.shape)}, expected float32 of shape {images.shape[1:]} (C, H, W). "
                 f"{PIPELINE}")
        if int(y) != labels[0]:
            fail(f'make_datasets("{name}"): the first {split} label is {y}, its file says '
                 f"{labels[0]}.")


def test_statistics_are_measured_on_the_training_split(files, monkeypatch):
    """make_datasets measures the normalisation statistics on training images only."""
    root, _ = files
    seen = []

    def spy(ds, *args, **kwargs):  # stands in for channel_stats: records what it is given
        seen.append(ds)
        x = torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))]).double()
        return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3)).float()

    monkeypatch.setattr(pipeline.resolve(), "channel_stats", spy)
    open_splits("cifar10", root)
    for ds in seen:
        if getattr(ds, "train", True) is not True:
            fail('make_datasets("cifar10") passed the test split (train=False) to '
                 "channel_stats. Normalisation statistics are part of training: measured on "
                 "the training split only, then applied unchanged to every split. Measured on "
                 "the test set, they leak test data into the model's inputs.")


@pytest.mark.parametrize("name", NAMES)
def test_normalisation_uses_training_statistics(files, name):
    """Test images are normalised per channel with the mean and std of the training split."""
    root, raw = files
    _, test = open_splits(name, root)
    images, _ = raw[name, False]
    mean, std = stats64(raw[name, True][0])
    expected = normalised(images, mean, std)  # (N, C, H, W)
    got = torch.stack([torch.as_tensor(sample(test, i, "test split", PIPELINE)[0]).double()
                       for i in range(min(len(test), N_TEST))])  # (N, C, H, W)
    if got.shape != expected.shape:
        fail(f'make_datasets("{name}"): the test images come out of shape '
             f"{tuple(got.shape[1:])}, expected {tuple(expected.shape[1:])} (C, H, W). "
             f"Normalize subtracts one mean and divides by one std per channel: statistics "
             f"with another shape than (C,) broadcast over the wrong axes.")
    if torch.allclose(got, expected, atol=1e-3):
        return
    own_mean, own_std = stats64(images)
    if torch.allclose(got, normalised(images, own_mean, own_std), atol=1e-3):
        fail(f'make_datasets("{name}"): the test images are normalised with the mean and std '
             f"of the test split itself. Statistics are part of training: computed on the "
             f"training split only, then applied unchanged to every split. Taken from the "
             f"test set, they leak test data into the model's inputs, and a test image's "
             f"values depend on which other test images came with it.")
    if torch.allclose(got, normalised(images, mean * 255, std * 255), atol=1e-3):
        fail(f'make_datasets("{name}"): the test images are normalised with statistics of '
             f"pixel values in 0..255, but Normalize sees images already scaled to [0, 1]. "
             f"The statistics must be measured on images exactly as Normalize receives them.")
    rounded = lambda t: [round(v, 3) for v in t.tolist()]  # noqa: E731
    fail(f'make_datasets("{name}"): test image values differ from (pixel / 255 - mean) / std, '
         f"with the per-channel mean {rounded(mean)} and std {rounded(std)} of the training "
         f"split, by up to {(got - expected).abs().max():.3g}. Check which images the "
         f"statistics come from, over which axes, and that nothing random touches test images.")


def reads(split, i, seeds, what):
    """split[i] read once after each torch seed in ``seeds``: a list of tensors."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(torch.as_tensor(sample(split, i, what, PIPELINE)[0]))
    return out


def test_test_split_is_not_augmented(files):
    """Reading a test image twice gives the same tensor: nothing random runs on test data."""
    root, _ = files
    _, test = open_splits("mnist", root)
    for i in range(len(test)):
        first, second = reads(test, i, (1, 2), 'make_datasets("mnist") test split')
        if not torch.equal(first, second):
            fail(f'make_datasets("mnist"): test image {i} came out different on two reads. '
                 f"Random crops and flips (augmentation) are for the training split only: "
                 f"evaluation must see each test image as it is, or the test accuracy changes "
                 f"from run to run and measures the model on distorted images.")


def test_training_split_is_augmented(files):
    """Reading a training image again gives a new random variant of it (shifted, mirrored)."""
    root, _ = files
    train, _ = open_splits("cifar10", root)
    variants = reads(train, 0, range(8), 'make_datasets("cifar10") training split')
    if all(torch.equal(variants[0], v) for v in variants[1:]):
        fail('make_datasets("cifar10"): training image 0 came out identical on 8 reads. '
             "The training split should be augmented (random shifts; mirrors where the "
             "classes allow them): every epoch then shows the model new variants of each "
             "image, which fights overfitting on a small data set.")


def test_digits_are_shifted_but_never_mirrored(files):
    """Augmented MNIST digits are shifted copies of the original, never mirror images."""
    root, raw = files
    train, _ = open_splits("mnist", root)
    image = torch.from_numpy(raw["mnist", True][0][0, 0]).double()  # (28, 28)
    pad = torch.nn.functional.pad(image, (3, 3, 3, 3))  # (34, 34)
    shifts = pad.unfold(0, 28, 1).unfold(1, 28, 1).reshape(49, 28 * 28)  # every 28x28 crop
    mirrored = shifts.reshape(49, 28, 28).flip(-1).reshape(49, 28 * 28)

    def matches(x, candidates):  # equal up to a scale and an offset (the normalisation)
        a = x.flatten() - x.mean()
        b = candidates - candidates.mean(dim=1, keepdim=True)
        return ((b @ a) / (b.norm(dim=1) * a.norm()).clamp(min=1e-12)).max() > 0.999

    for x in reads(train, 0, range(8), 'make_datasets("mnist") training split'):
        if tuple(x.shape) != (1, 28, 28):
            fail(f'make_datasets("mnist"): a training image has shape {tuple(x.shape)}, '
                 f"expected (1, 28, 28). {PIPELINE}")
        x = x[0].double().cpu()
        if matches(x, shifts):
            continue
        if matches(x, mirrored):
            fail('make_datasets("mnist"): a training digit came out mirrored left to right. '
                 "Augmentation must keep the label true: a mirrored 2, 3 or 7 is not that "
                 "digit any more, so the model would be trained on wrong labels. Mirroring "
                 "suits photos of objects (CIFAR-10) and clothes, not handwriting.")
        fail('make_datasets("mnist"): a training digit is neither the original nor a shifted '
             "copy of it. Expected only small random shifts (a crop of the zero-padded image).")


# --- the script ------------------------------------------------------------------------


def test_main_trains_through_the_pipeline(files, tmp_path, capsys):
    """main.py builds the pipeline, saves a picture of a batch and trains a small model."""
    root, _ = files
    grid = tmp_path / "batch.png"
    accuracy = call(main.main, ["--dataset", "mnist", "--root", str(root), "--epochs", "1",
                                "--batch-size", "8", "--grid", str(grid)],
                    what="python main.py --dataset mnist --epochs 1 --grid batch.png")
    if not 0 <= accuracy <= 1 or not grid.is_file():
        fail(f"main() returned accuracy {accuracy!r} (expected a fraction in [0, 1]) and "
             f"{'saved' if grid.is_file() else 'did not save'} the picture of a batch.")
    if "test accuracy" not in capsys.readouterr().out:
        fail("main() should print the test accuracy it reached.")


@pytest.mark.slow
def test_offline_digits_split_holds_every_class():
    """offline_digits gives 4,000 training and 1,000 test digits, all ten classes in both."""
    train = call(dataset.offline_digits, train=True, what="offline_digits(train=True)")
    test = call(dataset.offline_digits, train=False, what="offline_digits(train=False)")
    if (len(train), len(test)) != (4000, 1000):
        fail(f"offline_digits: {len(train)} training and {len(test)} test digits, expected "
             f"4,000 and 1,000.")
    for split, ds in (("training", train), ("test", test)):
        classes = set(ds.labels.tolist())
        if classes != set(range(10)):
            fail(f"offline_digits: the {split} split holds the classes {sorted(classes)}. The "
                 f"digits ship sorted by class: shuffle them before splitting.")
