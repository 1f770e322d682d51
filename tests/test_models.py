"""Model registry, parameter counts and checkpoint loading (public akamaster files, our own, broken ones)."""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from _nets import images, randomize_

from pruning.data import get_dataset, normalize
from pruning.models import (
    CIFAR10_NORMALIZATION,
    IMAGENET_NORMALIZATION,
    get_model,
    input_normalization,
    list_models,
    register_model,
)

# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------


def test_list_models_has_every_architecture():
    names = list_models()
    expected = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16_bn", "m_cifarnet"}
    assert expected | {"tiny_cnn", "resnet8"} <= set(names)
    assert names == sorted(names)


def test_register_duplicate_name_raises():
    before = list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(lambda **kw: torch.nn.Identity())
    assert list_models() == before
    # the original builder is untouched
    assert type(get_model("resnet20")).__name__ == "ResNetCifar"


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as e:
        get_model("resnet21")
    assert "Did you mean" in str(e.value) and "resnet20" in str(e.value)
    with pytest.raises(ValueError, match="vgg16_bn"):
        get_model("vgg16")


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8", "vgg16_bn", "m_cifarnet"])
def test_num_classes(name):
    model = get_model(name, num_classes=100).eval()
    with torch.no_grad():
        assert model(images(2)).shape == (2, 100)


# ---------------------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------------------


def _resnet_params_by_hand(depth: int, num_classes: int = 10) -> int:
    """He et al., Sec. 4.2 with option-A shortcuts: 3×3 convs without bias, BN (γ, β) after each, one FC."""
    n = (depth - 2) // 6

    def conv_bn(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + 2 * c_out

    total = conv_bn(3, 16)  # stem
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv_bn(c_in, width) + conv_bn(width, width)
            c_in = width  # option-A shortcuts have no parameters
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize(
    ("name", "depth", "count", "published_m"),
    [
        ("resnet20", 20, 269_722, 0.27),
        ("resnet32", 32, 464_154, 0.46),
        ("resnet44", 44, 658_586, 0.66),
        ("resnet56", 56, 853_018, 0.85),
        ("resnet110", 110, 1_727_962, 1.7),
    ],
)
def test_resnet_parameter_counts(name, depth, count, published_m):
    model = get_model(name)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == count == _resnet_params_by_hand(depth)
    # He et al. Table 6 / the akamaster README: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M
    assert round(n_params / 1e6, 1 if published_m >= 1 else 2) == published_m


def test_plain_parameter_counts():
    # VGG-16-BN for CIFAR: 13 convs (no bias) + BN, one 512→10 FC: the usual 14.7M
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    c_in, total = 3, 0
    for w in widths:
        total += 9 * c_in * w + 2 * w
        c_in = w
    total += 512 * 10 + 10
    assert sum(p.numel() for p in get_model("vgg16_bn").parameters()) == total == 14_724_042


# ---------------------------------------------------------------------------------------------------------
# Checkpoint loading
# ---------------------------------------------------------------------------------------------------------


def _akamaster_checkpoint(model: torch.nn.Module) -> dict:
    """The layout of akamaster's public ``.th`` files: DataParallel prefix, no ``num_batches_tracked``."""
    state = OrderedDict(
        ("module." + k, v.clone()) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    )
    return {"state_dict": state, "best_prec1": 91.0}


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_akamaster_format_round_trip(tmp_path):
    src = randomize_(get_model("resnet20"), seed=3)
    path = tmp_path / "resnet20-custom.th"
    torch.save(_akamaster_checkpoint(src), path)
    loaded = get_model("resnet20", weights=path)
    assert not loaded.training
    x = images(4)
    torch.testing.assert_close(_logits(loaded, x), _logits(src, x), rtol=0, atol=0)
    # akamaster trained with ImageNet statistics; loading records that
    assert input_normalization(loaded) == IMAGENET_NORMALIZATION
    assert input_normalization(src) == CIFAR10_NORMALIZATION


@pytest.mark.parametrize("wrap", [True, False], ids=["state_dict_entry", "bare_state_dict"])
def test_own_format_loads(tmp_path, wrap):
    src = randomize_(get_model("resnet8"), seed=4)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": src.state_dict(), "epoch": 3, "arch": "resnet8"} if wrap else src.state_dict(), path)
    loaded = get_model("resnet8", weights=str(path))
    x = images(3)
    torch.testing.assert_close(_logits(loaded, x), _logits(src, x), rtol=0, atol=0)
    assert input_normalization(loaded) == CIFAR10_NORMALIZATION


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    r32 = tmp_path / "r32.pt"
    torch.save({"state_dict": get_model("resnet32").state_dict()}, r32)
    with pytest.raises(ValueError) as e:
        get_model("resnet20", weights=r32)
    msg = str(e.value)
    assert "unexpected keys" in msg and "layer1.3.conv1.weight" in msg
    assert "missing keys" not in msg
    assert "conv1.weight (16, 3, 3, 3)" in msg  # what the model expects

    r20 = tmp_path / "r20.pt"
    torch.save({"state_dict": get_model("resnet20").state_dict()}, r20)
    with pytest.raises(ValueError, match=r"missing keys \[layer1\.3\.conv1\.weight") as e:
        get_model("resnet32", weights=r20)


def test_wrong_num_classes_names_shapes(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(get_model("resnet20", num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"linear\.weight: file \(10, 64\), model \(100, 64\)"):
        get_model("resnet20", num_classes=100, weights=path)


def _valid_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    torch.save({"state_dict": get_model("tiny_cnn").state_dict()}, path)
    return path


@pytest.mark.parametrize("kind", ["truncated", "random_bytes", "empty"])
def test_corrupt_file_raises_value_error(tmp_path, kind):
    good = _valid_file(tmp_path).read_bytes()
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif kind == "random_bytes":
        noise = torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        bad.write_bytes(noise.numpy().tobytes())
    else:
        bad.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        get_model("tiny_cnn", weights=bad)
    msg = str(e.value)
    assert "corrupt" in msg and "weights_only" in msg and str(bad) in msg


_UNPICKLED_CALLS: list[str] = []


def _side_effect(tag: str) -> str:
    _UNPICKLED_CALLS.append(tag)
    return tag


class _Payload:
    """An object whose unpickling would run code: a weights_only loader must refuse it."""

    def __reduce__(self):
        return (_side_effect, ("payload ran",))


def test_pickled_custom_class_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": get_model("tiny_cnn").state_dict(), "extra": _Payload()}, path)
    _UNPICKLED_CALLS.clear()
    with pytest.raises(ValueError, match="weights_only"):
        get_model("tiny_cnn", weights=path)
    assert _UNPICKLED_CALLS == []
    # the same file read without the restriction would have run the payload: the test is meaningful
    torch.load(path, weights_only=False)
    assert _UNPICKLED_CALLS == ["payload ran"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        get_model("resnet20", weights=tmp_path / "nope.th")


def test_non_state_dict_checkpoint(tmp_path):
    path = tmp_path / "list.pt"
    torch.save({"state_dict": {"a": 1}}, path)
    with pytest.raises(ValueError, match="no state dict"):
        get_model("tiny_cnn", weights=path)


@pytest.mark.parametrize("name", ["vgg16_bn", "m_cifarnet", "tiny_cnn", "resnet8"])
def test_default_weights_absent_raise_clearly(name):
    with pytest.raises(ValueError, match="no public weights"):
        get_model(name, weights="DEFAULT")


def test_default_weights_wrong_num_classes():
    with pytest.raises(ValueError, match="10 classes, not 100"):
        get_model("resnet20", num_classes=100, weights="DEFAULT")


# ---------------------------------------------------------------------------------------------------------
# Real data: the public checkpoints
# ---------------------------------------------------------------------------------------------------------


def _top1(model: torch.nn.Module, cifar10_dir: Path) -> float:
    ds = get_dataset("cifar10", split="test", root=cifar10_dir)
    assert len(ds) == 10_000
    mean, std = input_normalization(model)
    correct = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ds), 1000):
            x = normalize(ds.images[i : i + 1000], mean, std)
            correct += int((model(x).argmax(1) == ds.labels[i : i + 1000]).sum())
    return 100.0 * correct / len(ds)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "file", "threshold"),
    [("resnet20", "resnet20-12fca82f.th", 80.5), ("resnet56", "resnet56-4bfd9763.th", 83.0)],
)
def test_public_checkpoint_accuracy(shared_models_dir, cifar10_dir, name, file, threshold):
    path = shared_models_dir / file
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model = get_model(name, weights=path)
    assert input_normalization(model) == IMAGENET_NORMALIZATION
    assert _top1(model, cifar10_dir) >= threshold


@pytest.mark.realdata
def test_default_weights_offline_from_torch_home(shared_models_dir, tmp_path, monkeypatch):
    src = shared_models_dir / "resnet20-12fca82f.th"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(src, home / "hub" / "checkpoints" / src.name)
    monkeypatch.setenv("TORCH_HOME", str(home))
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(home / "hub"))
    try:
        model = get_model("resnet20", weights="DEFAULT")
    finally:
        torch.hub.set_dir(old_dir)
    assert input_normalization(model) == IMAGENET_NORMALIZATION
    reference = get_model("resnet20", weights=src)
    x = images(4)
    torch.testing.assert_close(_logits(model, x), _logits(reference, x), rtol=0, atol=0)
    # nothing was downloaded or written besides the copied file
    assert sorted(p.name for p in (home / "hub" / "checkpoints").iterdir()) == [src.name]
