"""The shared Registry: duplicates refused, close matches suggested, copies independent; module doctests."""

from __future__ import annotations

import doctest

import pytest

import pruning.data
import pruning.registry
from pruning.registry import Registry


def test_registry_behaviour() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1)

    @reg.register("beta")
    def _beta() -> int:
        return 2

    assert reg.get("alpha") == 1 and reg.get("beta")() == 2
    assert reg.names() == ["alpha", "beta"] and "alpha" in reg and len(reg) == 2
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", 3)
    reg.add("alpha", 3, replace=True)
    assert reg.get("alpha") == 3
    with pytest.raises(ValueError, match=r"unknown thing 'alpah'\. Did you mean alpha\? Registered: alpha, beta"):
        reg.get("alpah")
    other = reg.copy()
    other.add("gamma", 4)
    assert "gamma" in other and "gamma" not in reg


@pytest.mark.parametrize("module", [pruning.registry, pruning.data], ids=lambda m: m.__name__)
def test_module_doctests(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
