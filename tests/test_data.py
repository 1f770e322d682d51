"""Tests of pruning.data: datasets, splits, the batch iterator, augmentation and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pruning.data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR_MEAN,
    CIFAR_STD,
    BatchLoader,
    ImageDataset,
    augment_batch,
    crop_flip,
    default_data_root,
    get_dataset,
    iterate_batches,
    list_datasets,
    normalize,
    register_dataset,
    resolve_data_root,
)

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _write_npz(path: Path, n: int, *, num_classes: int = 10, seed: int = 0, classes: bool = True) -> None:
    """Write a small CIFAR-format split whose pixels encode the sample index (so splits can be traced)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    # Rows 0..1 of channel 0 store the index in base 256: unique per image.
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    labels = np.arange(n, dtype=np.int64) % num_classes
    arrays: dict[str, np.ndarray] = {"images": images, "labels": labels}
    if classes:
        arrays["classes"] = np.array([f"c{i}" for i in range(num_classes)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]


def _ids(ds: ImageDataset) -> set[int]:
    img = ds.images
    return set((img[:, 0, 0, 0].long() + 256 * img[:, 0, 0, 1].long()).tolist())


def _constant_dataset(n: int = 40) -> ImageDataset:
    """Images whose every pixel is 10 + 20·label: any non-padding pixel reveals the label."""
    labels = torch.arange(n) % 10
    images = (10 + 20 * labels).to(torch.uint8)[:, None, None, None].expand(n, 3, 32, 32).contiguous()
    return ImageDataset(images, labels, classes=CIFAR10_CLASSES, name="const")


def _denormalize(x: torch.Tensor, mean=CIFAR_MEAN, std=CIFAR_STD) -> torch.Tensor:
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((x * s + m) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# registry and roots
# ---------------------------------------------------------------------------------------------------------


def test_registry_lists_builtin_datasets_and_rejects_duplicates() -> None:
    assert {"cifar10", "cifar100", "synthetic"} <= set(list_datasets())
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("synthetic")(lambda **kw: get_dataset("synthetic", **kw))
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        get_dataset("nope", split="train")
    with pytest.raises(ValueError, match="unknown split"):
        get_dataset("synthetic", split="training")


def test_class_name_tables() -> None:
    assert len(CIFAR10_CLASSES) == 10
    assert len(set(CIFAR100_CLASSES)) == 100
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)  # torchvision's (alphabetical) order


def test_root_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PRUNEGYM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_root() == tmp_path / "xdg" / "prunegym" / "data"
    assert resolve_data_root()[0] == tmp_path / "xdg" / "prunegym" / "data"
    monkeypatch.setenv("PRUNEGYM_DATA", str(tmp_path / "env"))
    assert resolve_data_root()[0] == tmp_path / "env"
    assert resolve_data_root(tmp_path / "explicit")[0] == tmp_path / "explicit"


# ---------------------------------------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_ignores_global_rng() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    a = get_dataset("synthetic", split="train", seed=3)
    torch.manual_seed(2)
    np.random.seed(2)
    state = torch.get_rng_state()
    b = get_dataset("synthetic", split="train", seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not consumed
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = get_dataset("synthetic", split="train", seed=4)
    assert not torch.equal(a.images, c.images)


def test_synthetic_shapes_sizes_and_balance() -> None:
    sizes = {split: len(get_dataset("synthetic", split=split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 512, "val": 128, "test": 128}
    ds = get_dataset("synthetic", split="val", size=50, num_classes=5)
    assert ds.images.shape == (50, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.num_classes == 5 == len(ds.classes)
    assert torch.bincount(ds.labels).tolist() == [10] * 5
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)


def test_synthetic_splits_are_disjoint() -> None:
    splits = [get_dataset("synthetic", split=s) for s in ("train", "val", "test")]
    keys = [{bytes(img.numpy().tobytes()) for img in ds.images} for ds in splits]
    assert all(len(k) == len(ds) for k, ds in zip(keys, splits, strict=True))  # no duplicates inside a split
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]


def test_synthetic_is_learnable_by_nearest_class_mean() -> None:
    train = get_dataset("synthetic", split="train")
    test = get_dataset("synthetic", split="test")
    feats = train.normalize(train.images).flatten(1)
    centroids = torch.stack([feats[train.labels == k].mean(0) for k in range(train.num_classes)])
    pred = torch.cdist(test.normalize(test.images).flatten(1), centroids).argmin(1)
    assert (pred == test.labels).float().mean() > 0.9


def test_get_dataset_sets_augment_for_train_only() -> None:
    assert get_dataset("synthetic", split="train").augment
    assert not get_dataset("synthetic", split="test").augment
    assert not get_dataset("synthetic", split="train", augment=False).augment


# ---------------------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------------------


def test_normalize_values() -> None:
    batch = torch.stack([torch.zeros(3, 2, 2), torch.full((3, 2, 2), 255.0)]).to(torch.uint8)
    out = normalize(batch, CIFAR_MEAN, CIFAR_STD)
    assert out.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(out[0, c], torch.tensor(-CIFAR_MEAN[c] / CIFAR_STD[c]))
        assert torch.allclose(out[1, c], torch.tensor((1 - CIFAR_MEAN[c]) / CIFAR_STD[c]))
    with pytest.raises(TypeError, match="uint8"):
        normalize(batch.float(), CIFAR_MEAN, CIFAR_STD)


def test_getitem_matches_normalized_images() -> None:
    ds = get_dataset("synthetic", split="val")
    x, y = ds[5]
    assert torch.equal(x, normalize(ds.images[5], ds.mean, ds.std))
    assert y == int(ds.labels[5])


def test_image_dataset_validates_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), classes=("a",))
    with pytest.raises(ValueError, match="labels must lie"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), classes=("a", "b"))


# ---------------------------------------------------------------------------------------------------------
# crop / flip / augmentation
# ---------------------------------------------------------------------------------------------------------


def test_crop_flip_identity_flip_of_flip_and_shift() -> None:
    imgs = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    center = torch.full((3,), 4)
    no = torch.zeros(3, dtype=torch.bool)
    yes = torch.ones(3, dtype=torch.bool)
    assert torch.equal(crop_flip(imgs, center, center, no), imgs)
    flipped = crop_flip(imgs, center, center, yes)
    assert torch.equal(flipped, imgs.flip(-1))
    assert torch.equal(crop_flip(flipped, center, center, yes), imgs)  # flip of a flip
    # Offset (0, 0): the window starts 4 pixels into the zero padding, so 4 zero rows/cols then the image.
    zero = torch.zeros(3, dtype=torch.long)
    shifted = crop_flip(imgs, zero, zero, no)
    assert (shifted[:, :, :4, :] == 0).all() and (shifted[:, :, :, :4] == 0).all()
    assert torch.equal(shifted[:, :, 4:, 4:], imgs[:, :, :28, :28])
    # Offset (8, 8): the other corner.
    eight = torch.full((3,), 8)
    far = crop_flip(imgs, eight, eight, no)
    assert torch.equal(far[:, :, :28, :28], imgs[:, :, 4:, 4:]) and (far[:, :, 28:, :] == 0).all()


def test_crop_flip_rejects_bad_offsets() -> None:
    imgs = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    no = torch.zeros(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="<= 2\\*padding"):
        crop_flip(imgs, torch.tensor([0, 9]), torch.tensor([0, 0]), no)
    with pytest.raises(ValueError, match="shape"):
        crop_flip(imgs, torch.tensor([0]), torch.tensor([0, 0]), no)


def test_augment_batch_is_a_per_sample_crop_and_flip() -> None:
    imgs = get_dataset("synthetic", split="val", size=12).images
    out = augment_batch(imgs, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == imgs.shape
    seen = set()
    for i in range(len(imgs)):
        # Brute force: the output must be exactly one of the 9·9·2 crops/flips of its own input image.
        matches = [
            (oy, ox, f)
            for oy in range(9)
            for ox in range(9)
            for f in (False, True)
            if torch.equal(
                crop_flip(imgs[i : i + 1], torch.tensor([oy]), torch.tensor([ox]), torch.tensor([f]))[0],
                out[i],
            )
        ]
        assert len(matches) >= 1, f"sample {i} is not a crop/flip of its input"
        seen.add(matches[0])
    assert len(seen) > 1  # samples get their own offsets, not one per batch


def test_augment_batch_same_generator_seed_same_result() -> None:
    imgs = get_dataset("synthetic", split="val").images
    a = augment_batch(imgs, generator=torch.Generator().manual_seed(7))
    b = augment_batch(imgs, generator=torch.Generator().manual_seed(7))
    c = augment_batch(imgs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------------------
# batch iterator
# ---------------------------------------------------------------------------------------------------------


def test_iterate_batches_plain_covers_dataset_in_order() -> None:
    ds = get_dataset("synthetic", split="val", size=50)
    batches = list(iterate_batches(ds, 16, augment=False))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (50, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x, ds.normalize(ds.images)) and torch.equal(y, ds.labels)
    assert [len(y) for _, y in iterate_batches(ds, 16, drop_last=True)] == [16, 16, 16]


def test_iterate_batches_shuffle_is_a_permutation_and_seeded() -> None:
    ds = _constant_dataset(40)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        batches = list(iterate_batches(ds, 16, shuffle=True, augment=True, generator=gen))
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    x1, y1 = run(0)
    x2, y2 = run(0)
    x3, y3 = run(1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    assert sorted(y1.tolist()) == sorted(ds.labels.tolist())
    assert not torch.equal(y1, ds.labels)  # actually shuffled


def test_augmentation_changes_images_but_keeps_labels() -> None:
    ds = _constant_dataset(40)
    gen = torch.Generator().manual_seed(0)
    x, y = next(iter(iterate_batches(ds, 40, shuffle=True, augment=True, generator=gen)))
    pix = _denormalize(x)
    # Pixels that are not padding still carry the label's value; padding pixels are 0 (black before
    # normalising).
    expected = (10 + 20 * y).to(torch.uint8)[:, None, None, None]
    assert ((pix == expected) | (pix == 0)).all()
    # The centre is never padding (the shift is at most 4 pixels).
    assert (pix[:, :, 4:28, 4:28] == expected).all()
    assert (pix == 0).any(dim=(1, 2, 3)).sum() > 20  # most samples were shifted into the padding


def test_dataset_augment_flag_is_the_default() -> None:
    ds = get_dataset("synthetic", split="val", size=32)
    plain = next(iter(iterate_batches(ds, 32)))[0]
    assert torch.equal(plain, ds.normalize(ds.images))
    ds.augment = True
    aug = next(iter(iterate_batches(ds, 32, generator=torch.Generator().manual_seed(0))))[0]
    assert not torch.equal(aug, plain)
    again = next(iter(iterate_batches(ds, 32, augment=False)))[0]
    assert torch.equal(again, plain)


def test_batch_loader_len_epochs_and_seed() -> None:
    ds = get_dataset("synthetic", split="train", size=100)
    loader = BatchLoader(ds, 32, shuffle=True, seed=0)
    assert len(loader) == 4 and len(BatchLoader(ds, 32, drop_last=True)) == 3
    epoch1 = torch.cat([y for _, y in loader])
    epoch2 = torch.cat([y for _, y in loader])
    assert len(epoch1) == 100 and not torch.equal(epoch1, epoch2)  # epochs differ
    again = BatchLoader(ds, 32, shuffle=True, seed=0)
    assert torch.equal(torch.cat([y for _, y in again]), epoch1)  # ...reproducibly


def test_subset_keeps_metadata() -> None:
    ds = get_dataset("synthetic", split="val")
    sub = ds.subset([3, 1, 2])
    assert len(sub) == 3 and sub.classes == ds.classes and sub.mean == ds.mean
    assert torch.equal(sub.images[0], ds.images[3])


def test_strided_takes_evenly_spaced_samples_and_whole_datasets_as_they_are() -> None:
    ds = get_dataset("synthetic", split="val")
    n = len(ds)
    sub = ds.strided(7)
    expected = [(i * n) // 7 for i in range(7)]
    assert len(sub) == 7 and sub.split == ds.split
    assert torch.equal(sub.images, ds.images[expected]) and torch.equal(sub.labels, ds.labels[expected])
    assert ds.strided(None) is ds and ds.strided(n) is ds and ds.strided(n + 5) is ds
    with pytest.raises(ValueError, match="test_images must be positive, got 0"):
        ds.strided(0, what="test_images")


# ---------------------------------------------------------------------------------------------------------
# npz directories
# ---------------------------------------------------------------------------------------------------------


def test_npz_without_val_makes_a_seeded_disjoint_stratified_split(tmp_path: Path) -> None:
    _write_npz(tmp_path / "cifar10" / "train.npz", 300)
    _write_npz(tmp_path / "cifar10" / "test.npz", 50, seed=1)
    kw = {"root": tmp_path, "val_size": 60, "seed": 0}
    train = get_dataset("cifar10", split="train", **kw)
    val = get_dataset("cifar10", split="val", **kw)
    test = get_dataset("cifar10", split="test", **kw)
    assert (len(train), len(val), len(test)) == (240, 60, 50)
    assert _ids(train).isdisjoint(_ids(val)) and _ids(train) | _ids(val) == set(range(300))
    assert torch.bincount(val.labels).tolist() == [6] * 10  # stratified by class
    assert train.classes == tuple(f"c{i}" for i in range(10)) and train.mean == CIFAR_MEAN
    assert (train.name, train.split, val.split) == ("cifar10", "train", "val")
    same = get_dataset("cifar10", split="val", **kw)
    assert torch.equal(same.images, val.images)
    other = get_dataset("cifar10", split="val", root=tmp_path, val_size=60, seed=1)
    assert _ids(other) != _ids(val)


def test_val_split_sizes_with_uneven_classes(tmp_path: Path) -> None:
    _write_npz(tmp_path / "train.npz", 257)  # labels i % 10: classes of 26 and 25
    _write_npz(tmp_path / "test.npz", 20)
    val = get_dataset("cifar10", split="val", root=tmp_path, val_size=37)
    train = get_dataset("cifar10", split="train", root=tmp_path, val_size=37)
    assert (len(val), len(train)) == (37, 220)
    with pytest.raises(ValueError, match="val_size"):
        get_dataset("cifar10", split="val", root=tmp_path, val_size=257)


def test_npz_with_val_file_uses_it(tmp_path: Path) -> None:
    for split, n in (("train", 100), ("val", 30), ("test", 20)):
        _write_npz(tmp_path / "cifar10" / f"{split}.npz", n, seed=len(split))
    sizes = {s: len(get_dataset("cifar10", split=s, root=tmp_path)) for s in ("train", "val", "test")}
    assert sizes == {"train": 100, "val": 30, "test": 20}


def test_root_level_npz_must_match_the_dataset(tmp_path: Path) -> None:
    _write_npz(tmp_path / "train.npz", 200, num_classes=10)
    _write_npz(tmp_path / "test.npz", 40, num_classes=10)
    assert len(get_dataset("cifar10", split="test", root=tmp_path)) == 40
    with pytest.raises(FileNotFoundError, match="holds another dataset"):
        get_dataset("cifar100", split="test", root=tmp_path)
    _write_npz(tmp_path / "c100" / "test.npz", 200, num_classes=100, classes=False)
    ds = get_dataset("cifar100", split="test", root=tmp_path / "c100")
    assert ds.num_classes == 100 and ds.classes == CIFAR100_CLASSES and ds.mean != CIFAR_MEAN


def test_prunegym_data_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_npz(tmp_path / "cifar10" / "test.npz", 30)
    monkeypatch.setenv("PRUNEGYM_DATA", str(tmp_path))
    assert len(get_dataset("cifar10", split="test")) == 30
    # An explicit root wins over the environment.
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "elsewhere")):
        get_dataset("cifar10", split="test", root=tmp_path / "elsewhere")


def test_missing_data_message_names_places_and_fixes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        get_dataset("cifar10", split="train", root=tmp_path)
    msg = str(info.value)
    assert f"no CIFAR-10 under {tmp_path}" in msg
    places = (tmp_path / "cifar10" / "train.npz", tmp_path / "train.npz", tmp_path / "cifar-10-batches-py")
    for place in places:
        assert str(place) in msg
    for fix in ("--data-dir", "PRUNEGYM_DATA", "--download"):
        assert fix in msg
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        get_dataset("cifar100", split="test", root=tmp_path)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"labels": np.zeros(4, dtype=np.int64)}, "missing key.*images"),
        ({"images": np.zeros((4, 32, 32, 3), np.float32), "labels": np.zeros(4, np.int64)}, "float32"),
        ({"images": np.zeros((4, 3, 32, 32), np.uint8), "labels": np.zeros(4, np.int64)}, "shape"),
        ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(5, np.int64)}, "'labels'"),
        ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(4, np.float64)}, "'labels'"),
    ],
)
def test_malformed_npz_names_file_and_format(
    tmp_path: Path, arrays: dict[str, np.ndarray], match: str
) -> None:
    path = tmp_path / "cifar10" / "test.npz"
    path.parent.mkdir()
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match) as info:
        get_dataset("cifar10", split="test", root=tmp_path)
    assert str(path) in str(info.value) and "expected an .npz with 'images'" in str(info.value)


def test_corrupt_npz_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "cifar10" / "test.npz"
    path.parent.mkdir()
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        get_dataset("cifar10", split="test", root=tmp_path)


class _FakeTorchvisionCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10 (whose real files carry md5 checks)."""

    calls: list[tuple[str, bool, bool]] = []

    def __init__(self, root: str, train: bool, download: bool) -> None:
        type(self).calls.append((root, train, download))
        n = 200 if train else 40
        self.data = np.random.default_rng(int(train)).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]
        self.classes = list(CIFAR10_CLASSES)


def test_torchvision_folder_and_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeTorchvisionCIFAR10)
    _FakeTorchvisionCIFAR10.calls = []
    (tmp_path / "have" / "cifar-10-batches-py").mkdir(parents=True)
    train = get_dataset("cifar10", split="train", root=tmp_path / "have", val_size=50)
    val = get_dataset("cifar10", split="val", root=tmp_path / "have", val_size=50)
    test = get_dataset("cifar10", split="test", root=tmp_path / "have", val_size=50)
    assert (len(train), len(val), len(test)) == (150, 50, 40)
    assert test.classes == CIFAR10_CLASSES
    assert _FakeTorchvisionCIFAR10.calls[0] == (str(tmp_path / "have"), True, False)
    # Nothing there: only download=True reaches torchvision, and with download=True.
    with pytest.raises(FileNotFoundError):
        get_dataset("cifar10", split="test", root=tmp_path / "empty")
    get_dataset("cifar10", split="test", root=tmp_path / "empty", download=True)
    assert _FakeTorchvisionCIFAR10.calls[-1] == (str(tmp_path / "empty"), False, True)


# ---------------------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_cifar10_from_shared(cifar10_dir: Path) -> None:
    root = cifar10_dir.parent
    train, val, test = (get_dataset("cifar10", split=s, root=root) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (45000, 5000, 10000)
    assert train.num_classes == val.num_classes == test.num_classes == 10
    assert test.classes == CIFAR10_CLASSES
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert test.images.shape[1:] == (3, 32, 32) and test.images.dtype == torch.uint8
    # Normalised with CIFAR statistics: per channel, about zero mean and unit spread over the whole split.
    x = torch.cat([xb for xb, _ in iterate_batches(test, 2500)])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
