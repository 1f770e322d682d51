"""pruning.deploy and prunegym export: TorchScript / ONNX files that compute what the PyTorch models compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _nets import images, randomize_, randomize_gates_

from agents.export_cli import export_run, main
from agents.fused import FusedRuntimeSource
from envs.runtime import PolicyRuntimeSource, RuntimePruningVecEnv
from pruning.deploy import (
    dynamic_deployable,
    dynamic_onnx_deployable,
    save_dynamic_onnx,
    save_onnx,
    save_torchscript,
    static_deployable,
    to_torchscript,
)
from pruning.export import DynamicModel, export_static
from pruning.gating import gate_model, set_plan
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.units import get_units

#: torch.jit is deprecated (FutureWarning) but is what TorchScript files are read with
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

PLANS = [(None, 1.0), (0.5, 0.5), (0.6, 0.3)]  # (static keep of every unit, R_r): every keep-set branch


def _gated(name: str, seed: int = 1) -> torch.nn.Module:
    return randomize_gates_(gate_model(randomize_(get_model(name), seed=seed)), seed=seed).eval()


def _exported(gated: torch.nn.Module, static: float | None, tradeoff: float, order: str = "u_r") -> torch.nn.Module:
    n = len(get_units(gated))
    static_keep = None if static is None else [static] * n
    set_plan(gated, PruningPlan(static_keep=static_keep, tradeoff=tradeoff, runtime_order=order))
    return export_static(gated)


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["u_r", "prefix"])
@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize(("static", "tradeoff"), PLANS)
def test_dynamic_torchscript_keeps_the_eager_channels(
    name: str, static: float | None, tradeoff: float, order: str
) -> None:
    exported = _exported(_gated(name), static, tradeoff, order)
    n = len(get_units(exported))
    dyn = DynamicModel(exported, [0.2 + 0.6 * t / n for t in range(n)])
    x = images(4, seed=3)
    expected = torch.cat([_logits(dyn, x[i : i + 1]) for i in range(len(x))])
    for exact in (True, False):
        module = dynamic_deployable(dyn, exact=exact)
        for compiled in (module, to_torchscript(module, optimize_numerics=False)):
            if exact:  # the same operations on the same channels: equal logits, not just close ones
                assert torch.equal(_logits(compiled, x), expected)
                assert torch.equal(_logits(compiled, x[1:2]), expected[1:2])
            else:  # the consumers' BatchNorms folded: float rounding apart (another channel would be far off)
                _assert_close(_logits(compiled, x), expected)


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_static_deployable_equals_export(name: str, gated: bool) -> None:
    model = _gated(name) if gated else randomize_(get_model(name), seed=2)
    n = len(get_units(model))
    plan = PruningPlan(static_keep=[0.6] * n, tradeoff=0.5 if gated else None)
    exported = export_static(model, plan)
    x = images(3, seed=4)
    expected = _logits(exported, x)
    module = static_deployable(exported)
    torch.testing.assert_close(_logits(module, x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_logits(to_torchscript(module), x), expected, rtol=1e-4, atol=1e-5)


#: (model, (static keep, R_r)) of the prefix-order agent tests. On resnet8 the kept counts vary per image; tiny_cnn
#: (a plain net: units read units) keeps the same counts for these images but covers the unit-to-unit slices
AGENT_CASES = [("tiny_cnn", (None, 1.0)), ("resnet8", (0.75, 0.5)), ("resnet8", (None, 0.5))]


def _agent_dynamic(
    algo: str, policy: str, order: str = "u_r", name: str = "tiny_cnn", plan: tuple[float | None, float] = (0.75, 0.5)
):
    from test_fused import _agent, _inputs

    gated = _gated(name, seed=3)
    venv = RuntimePruningVecEnv(2, model=gated, budget=0.5, num_images=8)
    agent = _agent(algo, policy, venv)
    dyn = DynamicModel(_exported(gated, *plan, order), None)
    dyn.set_runtime(FusedRuntimeSource(agent, gated, budget=0.5, action_offset=0.05).bind(dyn))
    return dyn, agent, gated, _inputs(5)


@pytest.mark.parametrize("order", ["u_r", "prefix"])
@pytest.mark.parametrize(("algo", "policy"), [("ppo", "BudgetResidualPolicy"), ("recurrent_ppo", "MlpLstmPolicy")])
def test_dynamic_torchscript_with_the_agent_inside(algo: str, policy: str, order: str, tmp_path: Path) -> None:
    dyn, agent, gated, x = _agent_dynamic(algo, policy, order)
    expected = torch.cat([_logits(dyn, x[i : i + 1]) for i in range(len(x))])
    path = save_torchscript(dynamic_deployable(dyn), tmp_path / "dyn.pt", x[:2], optimize_numerics=False)
    loaded = torch.jit.load(str(path))
    _assert_close(_logits(loaded, x), expected)
    # and the agent decides as SB3's predict does
    dyn.set_runtime(PolicyRuntimeSource(agent, gated, budget=0.5, action_offset=0.05).bind(dyn))
    assert torch.equal(torch.cat([_logits(dyn, x[i : i + 1]) for i in range(len(x))]), expected)


@pytest.mark.parametrize("order", ["u_r", "prefix"])
@pytest.mark.parametrize(("name", "plan"), AGENT_CASES)
def test_dynamic_torchscript_exact_and_folded_agents_keep_the_eager_counts(
    name: str, plan: tuple[float | None, float], order: str
) -> None:
    """Both scripted agents (exact, and folded: the lean per-unit path) keep per image the eager agent's channels."""
    dyn, _, _, x = _agent_dynamic("ppo", "BudgetResidualPolicy", order, name, plan)
    expected, counts = [], []
    for i in range(len(x)):
        expected.append(_logits(dyn, x[i : i + 1]))
        counts.append([u.last_count for u in dyn.units])
    assert len({tuple(c) for c in counts}) > 1 or name == "tiny_cnn"  # the agent prunes per image
    for exact in (True, False):
        deployable = dynamic_deployable(dyn, exact=exact)
        sources = [m for m in deployable.modules() if type(m).__name__ == "_ScriptedSource"]
        assert sources and all(m.fold is not exact for m in sources)
        lean = [m.lean for m in deployable.modules() if type(m).__name__ == "_DynamicUnit"]
        # folded: every unit takes the lean path but those reading a u_r-order producer's gathered channels
        assert lean == [False] * len(lean) if exact else (all(lean) if name != "tiny_cnn" or order == "prefix"
                                                          else lean == [True, False, False])  # fmt: skip
        module = to_torchscript(deployable, optimize_numerics=False)
        # the fast form is frozen (parameters inlined as constants): every unit holds its own source module, sharing
        # the state tensors; the exact form keeps one source module (unfrozen)
        assert (not list(module.named_buffers()) and not list(module.parameters())) is not exact
        if exact:
            assert torch.equal(_logits(module, x), torch.cat(expected))
        else:
            _assert_close(_logits(module, x), torch.cat(expected))


def test_dynamic_torchscript_with_the_agent_on_another_input_size() -> None:
    """The lean path folds the GAP's 1 / (H·W) for 32×32 inputs; other sizes rescale and keep the eager channels."""
    dyn, _, _, _ = _agent_dynamic("ppo", "BudgetResidualPolicy", "prefix", "resnet8")
    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    expected = torch.cat([_logits(dyn, x[i : i + 1]) for i in range(len(x))])
    _assert_close(_logits(to_torchscript(dynamic_deployable(dyn)), x), expected)


@pytest.mark.parametrize("exact", [True, False])
def test_dynamic_torchscript_with_the_agent_raises_on_non_finite_logits(exact: bool) -> None:
    dyn, _, _, x = _agent_dynamic("ppo", "BudgetResidualPolicy", "prefix", "resnet8")
    module = to_torchscript(dynamic_deployable(dyn, exact=exact), optimize_numerics=False)
    assert torch.isfinite(_logits(module, x[:1])).all()
    with pytest.raises(torch.jit.Error, match="non-finite activations"):  # the RuntimeError raised in the file
        module(torch.full_like(x[:1], float("nan")))


def _ort_outputs(path: Path, x: torch.Tensor) -> list[tuple[torch.Tensor, list[int]]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = []
    for i in range(len(x)):
        logits, kept = session.run(None, {"images": x[i : i + 1].numpy()})
        out.append((torch.from_numpy(logits), kept.tolist()))
    return out


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize(("static", "tradeoff"), PLANS)
def test_dynamic_onnx_constant_ratios_keep_the_eager_channels(
    name: str, static: float | None, tradeoff: float, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    exported = _exported(_gated(name), static, tradeoff, "prefix")
    n = len(get_units(exported))
    dyn = DynamicModel(exported, [0.2 + 0.6 * t / n for t in range(n)])
    x = images(3, seed=3)
    module = dynamic_onnx_deployable(dyn)
    path = save_dynamic_onnx(module, tmp_path / "c.onnx", x)
    for i, (logits, kept) in enumerate(_ort_outputs(path, x)):
        torch.testing.assert_close(logits, _logits(dyn, x[i : i + 1]), rtol=0, atol=1e-4)
        assert kept == [u.last_count for u in dyn.units]
        traced_logits, traced_kept = _logits(module, x[i : i + 1])
        assert torch.equal(traced_logits, _logits(dyn, x[i : i + 1])) and traced_kept.tolist() == kept


@pytest.mark.parametrize(("name", "plan"), AGENT_CASES)
@pytest.mark.parametrize(("algo", "policy"), [("ppo", "BudgetResidualPolicy"), ("recurrent_ppo", "MlpLstmPolicy")])
def test_dynamic_onnx_with_the_agent_inside(
    algo: str, policy: str, name: str, plan: tuple[float | None, float], tmp_path: Path
) -> None:
    """ONNX Runtime keeps per image the channels the eager agent keeps (counts computed inside the graph)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    dyn, _, _, x = _agent_dynamic(algo, policy, "prefix", name, plan)
    module = dynamic_onnx_deployable(dyn)
    # the lean path (one product on the GAP gives u_r and the agent's first layer) where the actor folds and no
    # unit reads a unit (resnet8 with PPO); the observation at the original widths otherwise
    lean = [m.lean for m in module.modules() if type(m).__name__ == "_TracedUnit"]
    assert lean == [name != "tiny_cnn" and algo == "ppo"] * len(lean)
    path = save_dynamic_onnx(module, tmp_path / "a.onnx", x[:2])
    seen = set()
    for i, (logits, kept) in enumerate(_ort_outputs(path, x)):  # also images the export never saw
        expected = _logits(dyn, x[i : i + 1])
        assert kept == [u.last_count for u in dyn.units], f"image {i}"
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
        seen.add(tuple(kept))
    assert len(seen) > 1 or name == "tiny_cnn"  # different keep counts per image: the slices really are dynamic


def test_dynamic_onnx_refuses_what_has_no_onnx_form() -> None:
    dyn, _, _, _ = _agent_dynamic("ppo", "BudgetResidualPolicy", "u_r")
    with pytest.raises(ValueError, match="prefix"):
        dynamic_onnx_deployable(dyn)
    exported = _exported(_gated("tiny_cnn"), None, 1.0, "prefix")
    with pytest.raises(TypeError, match="cannot be traced"):
        dynamic_onnx_deployable(DynamicModel(exported, lambda unit, gap, u_r: torch.full((gap.shape[0],), 0.5)))
    with pytest.raises(ValueError, match="one image"):
        dynamic_onnx_deployable(DynamicModel(exported, 0.5))(images(2, seed=0))


def test_dynamic_deployable_refuses_what_cannot_be_compiled() -> None:
    exported = _exported(_gated("tiny_cnn"), None, 1.0)
    with pytest.raises(TypeError, match="cannot be compiled"):
        dynamic_deployable(DynamicModel(exported, lambda unit, gap, u_r: torch.full((gap.shape[0],), 0.5)))
    with pytest.raises(ValueError, match="per-sample"):
        dynamic_deployable(DynamicModel(exported, torch.rand(2, 3)))


def test_onnx_runs_in_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    module = static_deployable(_exported(_gated("resnet8"), 0.5, 0.5))
    x = images(3, seed=5)
    path = save_onnx(module, tmp_path / "m.onnx", x[:2])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])  # another batch size than the example
    torch.testing.assert_close(got, _logits(module, x), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# prunegym export
# ---------------------------------------------------------------------------------------------------------


def _run_dir(tmp_path: Path, *, agent: bool = True, order: str = "u_r") -> Path:
    """A finished run's files (as train_agent.py writes them) for a tiny model."""
    from pruning.checkpoint import save_model
    from pruning.export import save_exported

    dyn, policy, gated, _ = _agent_dynamic("ppo", "BudgetResidualPolicy", order)
    run = tmp_path / "run"
    run.mkdir(parents=True)
    if agent:
        policy.save(str(run / "runtime_agent.zip"))
    save_model(run / "model.pt", gated, arch="tiny_cnn", num_classes=10, gated=True, predictor=True)
    save_exported(run / "exported.pt", export_static(gated), arch="tiny_cnn", num_classes=10)
    (run / "config.json").write_text(json.dumps({"agents": {"runtime": {"algo": "ppo"} if agent else None}}))
    results = {"budget": 0.5, "static_keep": [0.75] * 3, "tradeoff": 0.5, "action_offset": 0.05}
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_export_command_writes_the_dynamic_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agents.cli import load_run

    run = _run_dir(tmp_path)
    assert main([str(run)]) == 0
    assert "model_dynamic.torchscript.pt" in capsys.readouterr().out
    loaded = torch.jit.load(str(run / "model_dynamic.torchscript.pt"))
    dyn, _ = load_run(run)
    x = images(3, seed=8)
    _assert_close(_logits(loaded, x), torch.cat([_logits(dyn, x[i : i + 1]) for i in range(3)]))


def test_export_command_static_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run = _run_dir(tmp_path)
    path, kind = export_run(run, fmt="onnx")
    assert kind == "static" and path == run / "model_static.onnx" and path.is_file()
    path, kind = export_run(run, fmt="torchscript", kind="static", out=tmp_path / "s.pt")
    assert kind == "static" and path.is_file()


def _conv_weights(module: torch.jit.ScriptModule) -> list[torch.Tensor]:
    """The 4-d tensor constants of a frozen TorchScript module (its conv weights)."""
    frozen = [
        t for t in module.graph.nodes() if t.kind() == "prim::Constant" and t.output().type().kind() == "TensorType"
    ]
    return [n.output().toIValue() for n in frozen if n.output().toIValue().dim() == 4]


def _nhwc(weights: list[torch.Tensor]) -> bool:
    # NHWC, not NCHW (a 1x1 conv with 1 input is both)
    return (
        bool(weights)
        and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
        and not all(w.is_contiguous() for w in weights)
    )


def test_export_command_static_channels_last(tmp_path: Path) -> None:
    """--channels-last writes NHWC conv weights; the file computes the NCHW file's logits from NCHW inputs."""
    run = _run_dir(tmp_path)
    nchw, _ = export_run(run, kind="static", out=tmp_path / "nchw.pt")
    nhwc, kind = export_run(run, kind="static", out=tmp_path / "nhwc.pt", channels_last=True)
    assert kind == "static"
    a, b = torch.jit.load(str(nchw)), torch.jit.load(str(nhwc))
    x = images(3, seed=9)
    _assert_close(_logits(b, x), _logits(a, x))
    assert _nhwc(_conv_weights(b)) and not _nhwc(_conv_weights(a))


@pytest.mark.parametrize("order", ["u_r", "prefix"])
def test_export_command_dynamic_channels_last(tmp_path: Path, order: str) -> None:
    """A dynamic file with NHWC weights keeps the eager model's channels per image; ONNX refuses the option."""
    from agents.cli import load_run

    run = _run_dir(tmp_path, order=order)
    path, kind = export_run(run, out=tmp_path / "cl.pt", channels_last=True)
    assert kind == "dynamic"
    loaded = torch.jit.load(str(path))
    dyn, _ = load_run(run)
    x = images(3, seed=8)
    _assert_close(_logits(loaded, x), torch.cat([_logits(dyn, x[i : i + 1]) for i in range(3)]))
    assert _nhwc(_conv_weights(loaded))
    with pytest.raises(ValueError, match="TorchScript files only"):
        export_run(run, fmt="onnx", kind="static", channels_last=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_dynamic_consumers_copy_each_input_width_once(channels_last: bool) -> None:
    """The fast form's consumers of prefix-order units copy ``W[:, :n]`` once for each width ``n`` their unit kept
    (dense, in the weight's memory format) and compute what the uncached slices compute; the exact form copies
    nothing."""
    dyn, _, _, x = _agent_dynamic("ppo", "BudgetResidualPolicy", "prefix", "resnet8", (None, 0.5))
    kept: list[set[int]] = [set() for _ in dyn.units]
    for i in range(len(x)):
        _logits(dyn, x[i : i + 1])
        for g in dyn.units:
            kept[g.unit_index].add(int(g.last_count))
    assert any(len(k) > 1 for k in kept)  # the agent keeps several widths
    module = dynamic_deployable(dyn)
    uncached = dynamic_deployable(dyn)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (module, uncached):
        m.to(memory_format=fmt)
    units = {id(m.record.count): m.unit_index for m in module.modules() if type(m).__name__ == "_DynamicUnit"}
    consumers = [m for m in module.modules() if type(m).__name__ == "_DynamicConsumer"]
    for c in (c for c in uncached.modules() if type(c).__name__ == "_DynamicConsumer"):
        c.cache = False
    for i in range(len(x)):  # image by image: every width the eager model kept
        assert torch.equal(_logits(module, x[i : i + 1]), _logits(uncached, x[i : i + 1]))
    assert len(consumers) == len(dyn.units)
    for c in consumers:
        widths = {n for n, w in enumerate(c.slices) if w.numel()}
        assert widths == kept[units[id(c.record.count)]]
        for n in widths:
            assert torch.equal(c.slices[n], c.conv.weight[:, :n]) and c.slices[n].is_contiguous(memory_format=fmt)
    other = torch.contiguous_format if channels_last else torch.channels_last
    module.to(memory_format=other)  # converted: the slices are copied anew from the converted weights
    assert not any(w.numel() for c in consumers for w in c.slices)
    _logits(module, x[:1])
    assert all(w.is_contiguous(memory_format=other) for c in consumers for w in c.slices if w.numel())
    exact = dynamic_deployable(dyn, exact=True)
    _logits(exact, x[:1])
    assert all(not any(w.numel() for w in c.slices) for c in exact.modules() if type(c).__name__ == "_DynamicConsumer")


@pytest.mark.parametrize("order", ["u_r", "prefix"])
@pytest.mark.parametrize(("name", "plan"), AGENT_CASES)
def test_dynamic_torchscript_runs_a_batch_at_once(name: str, plan: tuple[float | None, float], order: str) -> None:
    """The fast form with the agent inside computes a batch at once (every unit on the channels some image keeps:
    the longest kept prefix, or the union of the top-k sets; each image's others zeroed): the eager model's logits
    image by image, also with NHWC weights and for one image after a batch (the per-image state is one row
    again)."""
    dyn, _, _, x = _agent_dynamic("ppo", "BudgetResidualPolicy", order, name, plan)
    expected = torch.cat([_logits(dyn, x[i : i + 1]) for i in range(len(x))])
    deployable = dynamic_deployable(dyn)
    # a plain net's units read units: the agent's MAC bookkeeping follows each image's producer count, so tiny_cnn
    # runs image by image; so does a u_r-order unit whose trade-off pruner also weighs a static set (R_r < 1)
    batched = name != "tiny_cnn" and (order == "prefix" or plan[0] is None or plan[1] == 1.0)
    assert deployable.batched is batched and not dynamic_deployable(dyn, exact=True).batched
    for channels_last in (False, True):
        module = to_torchscript(deployable, channels_last=channels_last)
        _assert_close(_logits(module, x), expected)
        _assert_close(_logits(module, x[2:3]), expected[2:3])
        _assert_close(_logits(module, x[1:]), expected[1:])


def test_export_command_dynamic_onnx_of_a_prefix_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from agents.cli import load_run

    run = _run_dir(tmp_path, order="prefix")
    assert main([str(run), "--format", "onnx"]) == 0  # auto: the agent inside
    assert "model_dynamic.onnx" in capsys.readouterr().out
    dyn, _ = load_run(run)
    x = images(3, seed=8)
    for i, (logits, kept) in enumerate(_ort_outputs(run / "model_dynamic.onnx", x)):
        torch.testing.assert_close(logits, _logits(dyn, x[i : i + 1]), rtol=0, atol=1e-4)
        assert kept == [u.last_count for u in dyn.units]


def test_export_errors_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run_dir(tmp_path)
    before = sorted(p.name for p in run.iterdir())

    def error(args: list[str]) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("prunegym export: error:")
        return err

    assert "ONNX" in error([str(run), "--format", "onnx", "--kind", "dynamic"])
    (run / "results.json").rename(run / "results.bak")
    assert "did not finish" in error([str(run)])
    (run / "results.bak").rename(run / "results.json")

    import pruning.deploy

    def missing() -> None:
        raise ImportError('ONNX export needs onnxruntime: install the export extra (pip install "prunegym[export]")')

    monkeypatch.setattr(pruning.deploy, "_onnxruntime", missing)
    assert "prunegym[export]" in error([str(run), "--format", "onnx"])
    assert sorted(p.name for p in run.iterdir()) == before  # nothing half-written

    no_agent = _run_dir(tmp_path / "b", agent=False)
    assert "no runtime agent" in error([str(no_agent), "--kind", "dynamic"])
