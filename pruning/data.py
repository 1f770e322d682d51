"""Image datasets for PruneGym: CIFAR-10, CIFAR-100 and synthetic data, with a fast batch iterator.

The whole split lives in memory as one ``uint8`` tensor of shape ``N×3×32×32`` (150 MB for CIFAR's 50 000
training images), and batches are cut from it with tensor indexing: augmentation and normalisation run on the
whole batch at once, so there is no per-sample Python work and no worker processes. This is what makes
evaluating a pruned network on a validation subset cheap enough to be an RL reward.

Where the data comes from (first match wins) is described in :func:`get_dataset`. In short::

    >>> from pruning.data import get_dataset, iterate_batches
    >>> train = get_dataset("synthetic", split="train")
    >>> x, y = next(iter(iterate_batches(train, 64, shuffle=True, augment=True)))
    >>> tuple(x.shape), x.dtype, tuple(y.shape), y.dtype
    ((64, 3, 32, 32), torch.float32, (64,), torch.int64)

Splits: ``train`` and ``val`` are disjoint parts of the original training set (``val`` has ``val_size``
images, 5 000 by default, drawn with a seed and stratified by class, unless the data directory ships its own
``val.npz``); ``test`` is the original test set. Rewards and model selection use ``val``; reported accuracy
uses ``test``.
"""

from __future__ import annotations

import functools
import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .registry import Registry

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "SPLITS",
    "DATA_ENV_VAR",
    "BatchLoader",
    "DatasetBuilder",
    "ImageDataset",
    "augment_batch",
    "crop_flip",
    "default_data_root",
    "get_dataset",
    "iterate_batches",
    "list_datasets",
    "normalize",
    "register_dataset",
    "resolve_data_root",
]

logger = logging.getLogger(__name__)

#: Per-channel mean of CIFAR-10's training pixels on the [0, 1] scale (RGB).
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
#: Per-channel standard deviation of CIFAR-10's training pixels on the [0, 1] scale (RGB).
CIFAR_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: Per-channel mean of CIFAR-100's training pixels on the [0, 1] scale (RGB).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
#: Per-channel standard deviation of CIFAR-100's training pixels on the [0, 1] scale (RGB).
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

#: The three splits every dataset provides.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Environment variable naming the data root when no explicit root is given.
DATA_ENV_VAR = "PRUNEGYM_DATA"

#: CIFAR-10 class names in label order.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
#: CIFAR-100 fine class names in label order (as in the original ``meta`` file and torchvision).
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)  # fmt: skip

_PAD = 4  # zero padding of the standard CIFAR random crop (He et al. 2016, Sec. 4.2)

_NPZ_FORMAT = (
    "expected an .npz with 'images' (uint8, N×H×W×3, RGB), 'labels' (integer, N) and optionally "
    "'classes' (names in label order)"
)


# ----------------------------------------------------------------------------------------------------
# Normalisation and augmentation (pure tensor functions)
# ----------------------------------------------------------------------------------------------------


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Convert a ``uint8`` image batch to normalised ``float32``.

    Computes ``(images / 255 - mean) / std`` per channel, the same as torchvision's ``ToTensor`` followed by
    ``Normalize(mean, std)``.

    Args:
        images: ``uint8`` tensor ``N×C×H×W`` (or a single image ``C×H×W``), values 0..255.
        mean: Per-channel mean on the [0, 1] scale, length ``C``.
        std: Per-channel standard deviation on the [0, 1] scale, length ``C``.

    Returns:
        A new ``float32`` tensor of the same shape, on the same device as ``images``.

    Raises:
        TypeError: If ``images`` is not ``uint8``.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images (0..255), got {images.dtype}")
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return images.to(torch.float32).div_(255.0).sub_(m).div_(s)


def crop_flip(
    images: torch.Tensor,
    offsets_y: torch.Tensor,
    offsets_x: torch.Tensor,
    flips: torch.Tensor,
    *,
    padding: int = _PAD,
) -> torch.Tensor:
    """Crop each image of a zero-padded batch at its own offset and optionally mirror it.

    This is the deterministic core of :func:`augment_batch`: the batch is padded with ``padding`` zero pixels
    on every side, and sample ``i`` becomes the ``H×W`` window whose top-left corner is
    ``(offsets_y[i], offsets_x[i])`` in the padded image, flipped left-right when ``flips[i]`` is true.
    Offsets ``(padding, padding)`` without a flip return the image unchanged. All samples are processed by one
    gather, with no Python loop over the batch.

    Args:
        images: Tensor ``N×C×H×W`` of any dtype (``uint8`` in the pipeline).
        offsets_y: Integer tensor ``N``, values in ``[0, 2·padding]``.
        offsets_x: Integer tensor ``N``, values in ``[0, 2·padding]``.
        flips: Boolean tensor ``N``; true mirrors the sample horizontally (after cropping).
        padding: Zero padding on each side, in pixels. Default 4 (the standard CIFAR recipe).

    Returns:
        A new tensor with the shape, dtype and device of ``images``.

    Raises:
        ValueError: If the shapes do not match or an offset is out of range.
    """
    if images.ndim != 4:
        raise ValueError(f"crop_flip expects N×C×H×W images, got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    for name, t in (("offsets_y", offsets_y), ("offsets_x", offsets_x), ("flips", flips)):
        if t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if n == 0:
        return images.clone()
    if int(offsets_y.min()) < 0 or int(offsets_x.min()) < 0:
        raise ValueError("crop offsets must be >= 0")
    if int(offsets_y.max()) > 2 * padding or int(offsets_x.max()) > 2 * padding:
        raise ValueError(f"crop offsets must be <= 2*padding = {2 * padding}")
    device = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    ar_h = torch.arange(h, device=device)
    ar_w = torch.arange(w, device=device)
    rows = offsets_y.to(device=device, dtype=torch.long)[:, None] + ar_h  # N×H
    # A flipped crop reads the same window from right to left.
    cols_fwd = ar_w.expand(n, w)
    cols_rev = (w - 1 - ar_w).expand(n, w)
    cols = offsets_x.to(device=device, dtype=torch.long)[:, None] + torch.where(
        flips.to(device=device, dtype=torch.bool)[:, None], cols_rev, cols_fwd
    )  # N×W
    batch = torch.arange(n, device=device)[:, None, None]
    # Advanced indices separated by a slice go first: the result is N×H×W×C.
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def augment_batch(
    images: torch.Tensor, *, generator: torch.Generator | None = None, padding: int = _PAD
) -> torch.Tensor:
    """Apply the standard CIFAR augmentation to a whole batch: random crop with zero padding + random flip.

    Every sample draws its own crop offsets (uniform in ``[0, 2·padding]``, i.e. a shift of up to ``padding``
    pixels each way) and its own horizontal flip (probability 1/2), as torchvision's
    ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` do per image. The draws come from ``generator``
    (on the CPU), in this order: y offsets, x offsets, flips; so the same generator state gives the same
    result on any device.

    Args:
        images: ``uint8`` tensor ``N×C×H×W`` (any device).
        generator: CPU random generator for the draws; ``None`` uses torch's global generator.
        padding: Zero padding on each side, in pixels. Default 4.

    Returns:
        A new tensor with the shape, dtype and device of ``images``.
    """
    n = images.shape[0]
    offsets_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    offsets_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return crop_flip(images, offsets_y, offsets_x, flips, padding=padding)


# ----------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """An in-memory image classification split, stored as ``uint8`` and normalised on the fly.

    Use :func:`get_dataset` to build one; construct it directly only for custom data. It is a regular
    ``torch.utils.data.Dataset`` (``dataset[i]`` is ``(normalised float32 3×H×W tensor, int label)``, with no
    augmentation), but training and evaluation code should cut batches with :func:`iterate_batches` or
    :class:`BatchLoader`, which are vectorised and much faster than a ``DataLoader``.

    Attributes:
        images: ``uint8`` tensor ``N×3×H×W`` (RGB, values 0..255). May be shared with the process-wide cache
            of loaded files: treat it as read-only.
        labels: ``int64`` tensor ``N``.
        classes: Class names in label order.
        num_classes: ``len(classes)``.
        mean: Per-channel normalisation mean on the [0, 1] scale.
        std: Per-channel normalisation standard deviation on the [0, 1] scale.
        name: Dataset name (``"cifar10"``, ``"cifar100"``, ``"synthetic"``, ...).
        split: ``"train"``, ``"val"`` or ``"test"`` (free text for custom data).
        augment: Whether :func:`iterate_batches` augments this dataset when its ``augment`` argument is
            ``None``. :func:`get_dataset` sets it true for the ``train`` split only.

    Args:
        images: ``uint8`` tensor ``N×C×H×W``.
        labels: Integer tensor ``N`` with values in ``[0, len(classes))``.
        classes: Class names in label order.
        mean: Per-channel mean, length ``C``. Default: CIFAR-10's.
        std: Per-channel standard deviation, length ``C``. Default: CIFAR-10's.
        name: Dataset name. Default ``"custom"``.
        split: Split name. Default ``"train"``.
        augment: Default augmentation flag for the batch iterator. Default ``False``.

    Raises:
        ValueError: If dtypes, shapes or label values are inconsistent.

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
        ...                   classes=("a", "b"))
        >>> x, y = ds[1]
        >>> tuple(x.shape), x.dtype, y, ds.num_classes
        ((3, 32, 32), torch.float32, 1, 2)
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        classes: Sequence[str],
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        name: str = "custom",
        split: str = "train",
        augment: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 N×C×H×W tensor, got {images.dtype} of shape {tuple(images.shape)}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean and std need one value per channel ({images.shape[1]})")
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(
                f"labels must lie in [0, {len(classes)}), got [{int(labels.min())}, {int(labels.max())}]"
            )
        self.images = images
        self.labels = labels
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        self.num_classes = len(self.classes)
        self.mean: tuple[float, ...] = tuple(float(v) for v in mean)
        self.std: tuple[float, ...] = tuple(float(v) for v in std)
        self.name = name
        self.split = split
        self.augment = augment

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray, **kwargs: object) -> ImageDataset:
        """Build a dataset from numpy arrays in the usual ``N×H×W×C`` (channels-last) layout.

        Args:
            images: ``uint8`` array ``N×H×W×C``.
            labels: Integer array ``N``.
            **kwargs: Keyword arguments of the constructor (``classes`` is required).

        Returns:
            The dataset, with the images copied to a contiguous ``N×C×H×W`` tensor.
        """
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        return cls(tensor, torch.from_numpy(np.asarray(labels, dtype=np.int64)), **kwargs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.normalize(self.images[index]), int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, size={len(self)}, "
            f"num_classes={self.num_classes}, augment={self.augment})"
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a ``uint8`` batch (or single image) with this dataset's mean and std.

        Args:
            images: ``uint8`` tensor ``N×C×H×W`` or ``C×H×W``.

        Returns:
            The ``float32`` tensor, see :func:`normalize`.
        """
        return normalize(images, self.mean, self.std)

    def subset(self, indices: Sequence[int] | torch.Tensor, *, split: str | None = None) -> ImageDataset:
        """Return a new dataset holding only the given samples (e.g. a fixed validation subset for rewards).

        Args:
            indices: Sample indices, in the order wanted.
            split: Split name of the result. Default: this dataset's.

        Returns:
            A dataset with copies of the selected images and labels and the same metadata.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(
            self.images[idx],
            self.labels[idx],
            classes=self.classes,
            mean=self.mean,
            std=self.std,
            name=self.name,
            split=self.split if split is None else split,
            augment=self.augment,
        )

    def strided(self, count: int | None, *, what: str = "count") -> ImageDataset:
        """``count`` samples evenly spaced over the whole dataset (a fixed probe or test subset, no randomness).

        Sample ``i`` of the result is sample ``floor(i · N / count)`` of this dataset, so every part of the split
        is represented (splits stored class by class included).

        Args:
            count: How many samples; ``None`` or at least ``len(self)``: this dataset itself (not a copy).
            what: The setting ``count`` came from, named in the error (e.g. ``"test_images"``).

        Returns:
            This dataset, or a :meth:`subset` of ``count`` samples.

        Raises:
            ValueError: ``count`` is zero or negative.
        """
        if count is None or count >= len(self):
            return self
        if count <= 0:
            raise ValueError(f"{what} must be positive, got {count}")
        return self.subset(torch.from_numpy(np.linspace(0, len(self), num=count, endpoint=False).astype(np.int64)))


# ----------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------


def iterate_batches(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (and optionally augmented) batches of a dataset, with vectorised tensor ops only.

    Each batch is cut from the in-memory ``uint8`` tensor by indexing, moved to ``device`` while still
    ``uint8`` (4× less traffic than ``float32``), augmented there with :func:`augment_batch` and normalised
    with the dataset's mean and std.

    Randomness: the epoch's permutation (when ``shuffle``) is drawn first, then each batch's crop offsets and
    flips (when augmenting), all from ``generator``. A generator seeded the same way therefore gives the same
    batches; passing one generator to successive epochs gives different but reproducible epochs.

    Args:
        dataset: The dataset to iterate.
        batch_size: Samples per batch (the last batch may be smaller unless ``drop_last``).
        shuffle: Visit the samples in a random order. Default ``False`` (dataset order).
        augment: Apply random crop (4-pixel zero padding) + horizontal flip per sample. ``None`` (default)
            uses ``dataset.augment``.
        generator: CPU generator for the permutation and the augmentation draws. ``None`` uses torch's global
            generator (not reproducible unless ``torch.manual_seed`` is set).
        drop_last: Skip a final incomplete batch. Default ``False``.
        device: Where the batches are built and returned. Default: where ``dataset.images`` lives (the CPU).

    Yields:
        ``(x, y)``: ``x`` is ``float32`` ``B×3×H×W``, ``y`` is ``int64`` ``B``, both on ``device``.

    Raises:
        ValueError: If ``batch_size`` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    do_augment = dataset.augment if augment is None else augment
    n = len(dataset)
    if shuffle:
        order: torch.Tensor | None = torch.randperm(n, generator=generator)
    else:
        order = None
    target = torch.device(device) if device is not None else dataset.images.device
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            images = dataset.images[start:end]
            labels = dataset.labels[start:end]
        else:
            idx = order[start:end]
            images = dataset.images[idx]
            labels = dataset.labels[idx]
        images = images.to(target, non_blocking=True)
        if do_augment:
            images = augment_batch(images, generator=generator)
        yield dataset.normalize(images), labels.to(target, non_blocking=True)


class BatchLoader:
    """A re-iterable, ``len``-able wrapper around :func:`iterate_batches` (so ``tqdm(loader)`` shows a total).

    Each ``iter(loader)`` is one epoch. With ``seed`` set, the loader owns a generator seeded once at
    construction: epochs differ from each other, and a new loader with the same seed repeats the same sequence
    of epochs.

    Args:
        dataset: The dataset to iterate.
        batch_size: Samples per batch.
        shuffle: Visit the samples in a random order each epoch. Default ``False``.
        augment: Augmentation flag; ``None`` (default) uses ``dataset.augment``.
        seed: Seed of the loader's own generator; ``None`` uses ``generator`` or the global one.
        generator: An existing CPU generator to draw from (ignored when ``seed`` is given).
        drop_last: Skip a final incomplete batch. Default ``False``.
        device: Where the batches are returned. Default: where the dataset lives.

    Example:
        >>> loader = BatchLoader(get_dataset("synthetic", split="val"), 50, seed=0)
        >>> len(loader), sum(len(y) for _, y in loader)
        (3, 128)
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.device = device
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iterate_batches(
            self.dataset,
            self.batch_size,
            shuffle=self.shuffle,
            augment=self.augment,
            generator=self.generator,
            drop_last=self.drop_last,
            device=self.device,
        )


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------

#: Signature of a dataset builder: keyword arguments ``split``, ``root``, ``download``, ``val_size``, ``seed``
#: plus builder-specific ones; returns the split.
DatasetBuilder = Callable[..., ImageDataset]

_DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register a dataset builder under ``name`` (decorator).

    The builder is called as ``builder(split=..., root=..., download=..., val_size=..., seed=..., **kwargs)``
    by :func:`get_dataset` and returns an :class:`ImageDataset`. ``root`` is passed as given (possibly
    ``None``); builders that read files resolve it with :func:`resolve_data_root`.

    Args:
        name: Registry key, e.g. ``"cifar10"``.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: If ``name`` is already registered.

    Example::

        @register_dataset("tiny")
        def _tiny(*, split, root=None, download=False, val_size=5000, seed=0):
            return get_dataset("synthetic", split=split, seed=seed, size=8)
    """
    return _DATASETS.register(name)


def list_datasets() -> list[str]:
    """Return the names of all registered datasets, sorted."""
    return _DATASETS.names()


def get_dataset(
    name: str,
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int = 5000,
    seed: int = 0,
    augment: bool | None = None,
    **kwargs: object,
) -> ImageDataset:
    """Load one split of a registered dataset.

    For ``cifar10`` and ``cifar100`` the data root is ``root`` if given, else ``$PRUNEGYM_DATA``, else
    ``$XDG_CACHE_HOME/prunegym/data`` (``~/.cache/prunegym/data``). Inside the root the first of these that
    exists is used:

    1. ``<root>/<name>/{train,val,test}.npz`` (e.g. ``<root>/cifar10/test.npz``);
    2. ``<root>/{train,val,test}.npz``, only if the labels fit the dataset (10 classes for CIFAR-10, 100 for
       CIFAR-100);
    3. torchvision's folder ``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``;
    4. with ``download=True``, torchvision downloads that folder into the root.

    Each ``.npz`` holds ``images`` (``uint8`` ``N×32×32×3``, RGB), ``labels`` (integers) and optionally
    ``classes``. When there is no ``val.npz`` (or the data comes from torchvision's folder), ``val`` is a
    class-stratified random subset of ``val_size`` training images chosen with ``seed``, and ``train`` is the
    rest: the same seed always gives the same split. Loaded files are cached for the life of the process.

    ``synthetic`` needs no files: class prototypes (a colour and a stripe pattern per class) plus noise, drawn
    from ``seed`` without touching the global random state; it takes the keywords ``size`` (default 512 images
    for ``train``, 128 for ``val`` and ``test``) and ``num_classes`` (default 10), and ignores ``root``,
    ``download`` and ``val_size``.

    Args:
        name: A registered dataset, see :func:`list_datasets`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: Data root directory (the CLIs' ``--data-dir``). Default: see above.
        download: Allow torchvision to download CIFAR when nothing is found. Default ``False``.
        val_size: Validation images held out of the training set when no ``val.npz`` exists. Default 5000.
        seed: Seed of that split (and of the synthetic data). Default 0.
        augment: Sets the dataset's ``augment`` flag; ``None`` (default) means true for ``train`` only.
        **kwargs: Builder-specific options.

    Returns:
        The split as an :class:`ImageDataset`.

    Raises:
        ValueError: If ``name`` is not registered, ``split`` is unknown, ``val_size`` does not fit, or a
            data file is malformed.
        FileNotFoundError: If no data is found; the message lists every place looked at and the fixes.
    """
    builder = _DATASETS.get(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    dataset = builder(split=split, root=root, download=download, val_size=val_size, seed=seed, **kwargs)
    dataset.augment = (split == "train") if augment is None else augment
    return dataset


# ----------------------------------------------------------------------------------------------------
# Data roots and file loading
# ----------------------------------------------------------------------------------------------------


def default_data_root() -> Path:
    """Return the default data root: ``$XDG_CACHE_HOME/prunegym/data``, or ``~/.cache/prunegym/data``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "prunegym" / "data"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """Pick the data root: explicit ``root``, else ``$PRUNEGYM_DATA``, else :func:`default_data_root`.

    Args:
        root: An explicit directory, or ``None``.

    Returns:
        ``(path, origin)``, where ``origin`` says where the path came from (for error messages).
    """
    if root is not None:
        return Path(root).expanduser(), "given root"
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser(), f"${DATA_ENV_VAR}"
    return default_data_root(), "default cache"


@functools.lru_cache(maxsize=16)
def _load_npz(path: str) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...] | None]:
    """Read and validate one ``.npz`` split; cached per path for the life of the process."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # what np.load raises on non-npz files
        raise ValueError(f"{path}: not a readable .npz ({err}); {_NPZ_FORMAT}") from err
    missing = [key for key in ("images", "labels") if key not in arrays]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}; {_NPZ_FORMAT}")
    images, labels = arrays["images"], arrays["labels"]
    classes = tuple(str(c) for c in arrays["classes"].tolist()) if "classes" in arrays else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{path}: 'images' is {images.dtype} of shape {images.shape}; {_NPZ_FORMAT}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{path}: 'labels' is {labels.dtype} of shape {labels.shape} for {images.shape[0]} images; "
            f"{_NPZ_FORMAT}"
        )
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"{path}: negative labels; {_NPZ_FORMAT}")
    logger.debug("read %s: %d images", path, images.shape[0])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return tensor, torch.from_numpy(labels.astype(np.int64)), classes


@functools.lru_cache(maxsize=4)
def _load_torchvision(
    name: str, root: str, train: bool, download: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read one half of torchvision's CIFAR folder (downloading if allowed); cached."""
    from torchvision import datasets  # imported lazily: it is slow to import and rarely needed

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    tv = cls(root, train=train, download=download)
    images = torch.from_numpy(np.asarray(tv.data, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(tv.targets, dtype=torch.int64), tuple(tv.classes)


def _stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, val) with ``val_size`` val samples, class-stratified, seeded.

    Each class contributes in proportion to its size (largest-remainder rounding, so the total is exact);
    which samples of a class go to val is a seeded random choice. Both index sets are returned sorted, so
    the training order of the source is kept.
    """
    n = labels.shape[0]
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in [1, {n - 1}] for a training set of {n} images, got {val_size}")
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels)
    exact = counts.to(torch.float64) * val_size / n
    quota = exact.floor().long()
    short = val_size - int(quota.sum())
    if short:
        # Largest remainders first; ties broken by class index (stable sort) so the split is deterministic.
        extra = torch.argsort(exact - quota, descending=True, stable=True)[:short]
        quota[extra] += 1
    perm = torch.randperm(n, generator=gen)
    # Order the random permutation by class (stable), then take each class's first `quota` entries.
    by_class = perm[torch.argsort(labels[perm], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[labels[by_class]]
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[by_class[rank < quota[labels[by_class]]]] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def _looks_like(name: str, labels: torch.Tensor, classes: tuple[str, ...] | None) -> bool:
    """Whether a root-level npz holds ``name`` (checked by its class count / label range)."""
    num_classes = 10 if name == "cifar10" else 100
    if classes is not None:
        return len(classes) == num_classes
    top = int(labels.max()) if labels.numel() else -1
    return top < num_classes and (name == "cifar10" or top >= 10)


def _build_cifar(
    name: str,
    *,
    split: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    val_size: int,
    seed: int,
) -> ImageDataset:
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    default_classes = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    mean, std = (CIFAR_MEAN, CIFAR_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    base, origin = resolve_data_root(root)
    looked: list[str] = []
    notes: list[str] = []
    for directory, check in ((base / name, False), (base, True)):
        own_val = (directory / "val.npz").is_file()
        # The file a split needs: val comes from val.npz when it exists, else (like train) from train.npz.
        need = "test" if split == "test" else "val" if split == "val" and own_val else "train"
        path = directory / f"{need}.npz"
        looked.append(str(path))
        if not path.is_file():
            continue
        images, labels, classes = _load_npz(str(path))
        if check and not _looks_like(name, labels, classes):
            notes.append(f"{path} holds another dataset")
            continue
        classes = classes or default_classes
        if len(classes) != len(default_classes):
            raise ValueError(f"{path}: {len(classes)} classes, {title} has {len(default_classes)}")
        if need == "train" and not own_val:
            train_idx, val_idx = _stratified_split(labels, val_size, seed)
            idx = train_idx if split == "train" else val_idx
            images, labels = images[idx], labels[idx]
        logger.info("%s %s: %d images from %s", title, split, labels.shape[0], directory)
        return ImageDataset(images, labels, classes=classes, mean=mean, std=std, name=name, split=split)

    tv_dir = base / folder
    looked.append(str(tv_dir))
    note = f"; {'; '.join(notes)}" if notes else ""
    where = f"{title} under {base} ({origin}; looked for {', '.join(looked)}{note})"
    if tv_dir.is_dir() or download:
        if not tv_dir.is_dir():
            logger.info("downloading %s into %s", title, base)
        try:
            images, labels, classes = _load_torchvision(name, str(base), split != "test", download)
        except (OSError, RuntimeError) as err:  # urllib's URLError (no network), a full disk, a broken folder
            action = "downloading it" if download else f"reading {tv_dir}"
            raise FileNotFoundError(
                f"no usable {where}: {action} failed ({err}). Fixes: pass --data-dir DIR with train.npz and "
                f"test.npz in it (or DIR/{name}/; {_NPZ_FORMAT}), set {DATA_ENV_VAR}=DIR, or run with --download "
                "on a machine with network access"
            ) from err
        if split != "test":
            train_idx, val_idx = _stratified_split(labels, val_size, seed)
            idx = train_idx if split == "train" else val_idx
            images, labels = images[idx], labels[idx]
        logger.info("%s %s: %d images from %s", title, split, labels.shape[0], tv_dir)
        return ImageDataset(images, labels, classes=classes, mean=mean, std=std, name=name, split=split)

    raise FileNotFoundError(f"no {where}; pass --data-dir or set {DATA_ENV_VAR}, or allow --download")


@register_dataset("cifar10")
def _build_cifar10(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int = 5000,
    seed: int = 0,
) -> ImageDataset:
    """CIFAR-10 (Krizhevsky 2009): 10 classes, 50 000 training and 10 000 test images of 32×32 RGB."""
    return _build_cifar("cifar10", split=split, root=root, download=download, val_size=val_size, seed=seed)


@register_dataset("cifar100")
def _build_cifar100(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int = 5000,
    seed: int = 0,
) -> ImageDataset:
    """CIFAR-100 (Krizhevsky 2009): 100 fine classes, 50 000 training and 10 000 test images of 32×32 RGB."""
    return _build_cifar("cifar100", split=split, root=root, download=download, val_size=val_size, seed=seed)


# ----------------------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------------------

_SYNTHETIC_SIZES = {"train": 512, "val": 128, "test": 128}


@register_dataset("synthetic")
def _build_synthetic(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int = 5000,
    seed: int = 0,
    size: int | None = None,
    num_classes: int = 10,
) -> ImageDataset:
    """Small, learnable, file-free data for tests: class prototypes (a colour + a stripe pattern) plus noise.

    Each class has a fixed mean colour and a sinusoidal stripe pattern of its own frequency and orientation,
    both drawn from ``seed`` alone, so all splits share the same classes. Each image is its class prototype
    with a random brightness jitter and per-pixel Gaussian noise drawn from ``(seed, split)``, so the splits
    are different images. Labels are balanced (``i % num_classes``, shuffled). Everything comes from local
    numpy generators: the global random state is neither used nor changed. ``root``, ``download`` and
    ``val_size`` are ignored.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: Ignored.
        download: Ignored.
        val_size: Ignored.
        seed: Seed of the prototypes and the samples. Default 0.
        size: Number of images. Default 512 for ``train``, 128 for ``val`` and ``test``.
        num_classes: Number of classes. Default 10.

    Returns:
        The split, with CIFAR-10's mean and std (so models see the same input scale as on CIFAR).
    """
    del root, download, val_size
    n = _SYNTHETIC_SIZES[split] if size is None else int(size)
    if n <= 0 or num_classes <= 1:
        raise ValueError(f"synthetic data needs size > 0 and num_classes > 1, got {n} and {num_classes}")
    proto_rng = np.random.default_rng([seed, 0])
    colours = proto_rng.uniform(-1.0, 1.0, size=(num_classes, 3, 1, 1))
    freq = proto_rng.uniform(0.5, 3.0, size=num_classes)
    angle = proto_rng.uniform(0.0, np.pi, size=num_classes)
    yy, xx = np.meshgrid(np.arange(32) / 32.0, np.arange(32) / 32.0, indexing="ij")
    proj = np.cos(angle)[:, None, None] * yy + np.sin(angle)[:, None, None] * xx
    patterns = np.sin(2 * np.pi * freq[:, None, None] * proj)[:, None]  # K×1×32×32
    prototypes = 128.0 + 55.0 * colours + 35.0 * patterns  # K×3×32×32

    rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
    labels = rng.permutation(np.arange(n) % num_classes)
    jitter = rng.uniform(-15.0, 15.0, size=(n, 1, 1, 1))
    noise = rng.normal(0.0, 25.0, size=(n, 3, 32, 32))
    images = np.clip(np.rint(prototypes[labels] + jitter + noise), 0, 255).astype(np.uint8)
    classes = tuple(f"class{i}" for i in range(num_classes))
    return ImageDataset(
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        classes=classes,
        name="synthetic",
        split=split,
    )
