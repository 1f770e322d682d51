"""The registered envs with clients nobody in PruneGym wrote: SB3's ``make_vec_env``, Gymnasium's async vector env,
pickle, the checkers with every render mode; and what ``render()`` draws."""

from __future__ import annotations

import copy
import doctest
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import envs
import envs.render as render_module
from envs.render import RENDER_MODES, RGB_SHAPE
from envs.runtime import RuntimePruningVecEnv
from pruning.models import get_model
from pruning.stepper import UnitStepper

ROOT = Path(__file__).resolve().parents[1]
ENV_IDS = sorted(envs.ENV_IDS)


def _zero_action(env: gym.Env) -> np.ndarray:
    return np.zeros(env.action_space.shape, dtype=np.float32)


# ------------------------------------------------------------------------------------------------------------
# stable-baselines3
# ------------------------------------------------------------------------------------------------------------


def _train_ppo(env_id: str, vec_env_cls: type, **vec_env_kwargs: Any) -> None:
    # make_vec_env passes render_mode="rgb_array" (and falls back only on TypeError): the envs must accept it
    venv = make_vec_env(env_id, n_envs=2, seed=0, vec_env_cls=vec_env_cls, vec_env_kwargs=vec_env_kwargs)
    try:
        assert venv.render_mode == "rgb_array"
        model = PPO("MlpPolicy", venv, n_steps=50, batch_size=50, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=200)
        assert model.num_timesteps >= 200
        images = venv.get_images()
        assert len(images) == 2 and all(img is not None and img.shape == RGB_SHAPE for img in images)
    finally:
        venv.close()


@pytest.mark.parametrize(
    ("vec_env_cls", "vec_env_kwargs"),
    # forked workers inherit the registry; torch has run in this process before the fork
    [(DummyVecEnv, {}), (SubprocVecEnv, {"start_method": "fork"})],
    ids=["dummy", "subproc-fork"],
)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_make_vec_env_trains_ppo(env_id: str, vec_env_cls: type, vec_env_kwargs: dict[str, Any]) -> None:
    _train_ppo(env_id, vec_env_cls, **vec_env_kwargs)


def test_sb3_forkserver_workers_with_the_module_prefix() -> None:
    # forkserver workers (SB3's default) start a fresh interpreter that has not imported envs; from a notebook
    # or `python -c` (no script for the workers to re-import), "envs:<id>" makes gym.make import it there
    _train_ppo("envs:prunegym/RuntimePruning-v0", SubprocVecEnv)


@pytest.mark.slow
def test_sb3_make_vec_env_in_a_script(tmp_path: Path) -> None:
    # the usual user script: `import envs`, then the plain ids with SB3's default SubprocVecEnv (forkserver
    # workers re-import the script's module, which registers the ids there)
    script = tmp_path / "train_sb3.py"
    script.write_text(
        textwrap.dedent(
            """
            from stable_baselines3 import PPO
            from stable_baselines3.common.env_util import make_vec_env
            from stable_baselines3.common.vec_env import SubprocVecEnv

            import envs

            if __name__ == "__main__":
                for env_id in sorted(envs.ENV_IDS):
                    venv = make_vec_env(env_id, n_envs=2, seed=0, vec_env_cls=SubprocVecEnv)
                    model = PPO("MlpPolicy", venv, n_steps=50, batch_size=50, n_epochs=1, device="cpu").learn(200)
                    print(env_id, model.num_timesteps, venv.render().shape)
                    venv.close()
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split("\n")
    for env_id in ENV_IDS:
        assert any(line.startswith(f"{env_id} 200 ") for line in lines), proc.stdout


# ------------------------------------------------------------------------------------------------------------
# Gymnasium's async vector env, fork-started workers after torch ran in the parent
# ------------------------------------------------------------------------------------------------------------

_ASYNC_SCRIPT = textwrap.dedent(
    """
    import os, sys
    if sys.argv[2] == "no-hook":  # what the envs were before: no at-fork hook
        os.register_at_fork = lambda **kwargs: None
    import gymnasium as gym
    import numpy as np
    import torch
    import envs

    torch.set_num_threads(2)  # an OpenMP pool of more than one thread, whatever OMP_NUM_THREADS says
    torch.nn.functional.conv2d(torch.randn(8, 16, 32, 32), torch.randn(16, 16, 3, 3))  # the parent runs it
    venv = gym.make_vec(sys.argv[1], num_envs=2, vectorization_mode="async")
    venv.reset(seed=0)
    done = np.zeros(2, dtype=bool)
    while not done.all():
        _, _, terminated, truncated, _ = venv.step(np.zeros((2, 1), dtype=np.float32))
        done |= terminated | truncated
    venv.close()
    print("finished")
    """
)


def _run_async(env_id: str, mode: str, timeout: float) -> tuple[int | None, str, str]:
    """Run the script; ``(exit code, stdout, stderr)``, exit code ``None`` when it ran past ``timeout``.

    The script runs in its own process group, killed whole on a timeout: hung workers are not left behind.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _ASYNC_SCRIPT, env_id, mode], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_async_vector_env_after_torch_in_parent(env_id: str) -> None:
    code, out, err = _run_async(env_id, "hook", timeout=180)
    assert code == 0 and "finished" in out, f"exit code {code} (None: hung)\n{err[-3000:]}"


@pytest.mark.slow
def test_async_vector_env_hangs_without_the_fork_hook() -> None:
    # the test above catches a regression: without the hook the forked workers block in their first conv
    code, out, _ = _run_async(ENV_IDS[0], "no-hook", timeout=15)
    assert code is None and "finished" not in out


# ------------------------------------------------------------------------------------------------------------
# pickling
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_round_trip_continues_the_episode(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.step(_zero_action(env))
    twin = pickle.loads(pickle.dumps(env))
    rng = np.random.default_rng(0)
    terminated = False
    while not terminated:
        action = rng.uniform(-1, 1, size=env.action_space.shape).astype(np.float32)
        obs, reward, terminated, _, _ = env.step(action)
        obs2, reward2, terminated2, _, _ = twin.step(action)
        np.testing.assert_array_equal(obs, obs2)
        assert reward == reward2 and terminated == terminated2
    # and a fresh episode after the round trip
    assert np.array_equal(env.reset(seed=3)[0], twin.reset(seed=3)[0])


def test_vec_env_pickles_and_steps() -> None:
    venv = RuntimePruningVecEnv(num_envs=3, budget=0.5)
    venv.seed(0)
    venv.reset()
    twin = pickle.loads(pickle.dumps(venv))
    actions = np.full((3, 1), -0.2, dtype=np.float32)
    for _ in range(venv.num_units):
        obs, rewards, dones, _ = venv.step(actions)
        obs2, rewards2, dones2, _ = twin.step(actions)
        np.testing.assert_array_equal(obs, obs2)
        np.testing.assert_array_equal(rewards, rewards2)
    assert dones.all() and dones2.all()


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
def test_stepper_copies_run_their_own_model(name: str) -> None:
    model = get_model(name).eval()
    stepper = UnitStepper(model)
    x = torch.randn(2, 3, 32, 32)
    for twin in (copy.deepcopy(stepper), pickle.loads(pickle.dumps(stepper))):
        assert twin.model is not model
        with torch.no_grad():
            torch.testing.assert_close(twin.run(x), model(x), rtol=0, atol=0)
            for p in twin.model.parameters():
                p.mul_(0.5)
            torch.testing.assert_close(twin.run(x), twin.model(x), rtol=0, atol=0)
            assert not torch.equal(twin.run(x), stepper.run(x))  # the segments run the copy, not the original


# ------------------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_rgb_array_is_a_picture_of_the_episode(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    assert env.metadata["render_modes"] == list(RENDER_MODES) and env.metadata["render_fps"] > 0
    env.reset(seed=0)
    start = env.render()
    assert isinstance(start, np.ndarray) and start.dtype == np.uint8 and start.shape == RGB_SHAPE
    assert start.std() > 0  # not a blank canvas
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(_zero_action(env))
    end = env.render()
    assert end.shape == RGB_SHAPE and end.dtype == np.uint8
    assert not np.array_equal(start, end)  # the decisions show


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_ansi_is_the_same_as_a_table(env_id: str) -> None:
    env = gym.make(env_id, render_mode="ansi")
    env.reset(seed=0)
    n = env.unwrapped.num_units
    text = env.render()
    assert isinstance(text, str) and f"0 of {n} units decided" in text
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(_zero_action(env))
    text = env.render()
    lines = text.splitlines()
    assert f"{n} of {n} units decided" in lines[0]
    rows = [line.split() for line in lines[2 : 2 + n]]
    assert [r[0] for r in rows] == [str(i) for i in range(n)] and "-" not in rows[-1][4:]
    assert f"MAC fraction {info['macs_fraction']:.4f}" in lines[-1]
    frame = env.unwrapped.episode_frame()
    assert [u.computed for u in frame.units] == [int(r[5]) for r in rows]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_none_and_unknown_modes(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=0)
    assert env.render_mode is None and env.unwrapped.render() is None
    cls = type(env.unwrapped)
    with pytest.raises(ValueError, match="rgb_array"):
        cls(render_mode="human")  # gym.make(render_mode="human") would wrap an rgb_array env in HumanRendering


@pytest.mark.parametrize("render_mode", [None, *RENDER_MODES])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_checkers_pass_with_each_render_mode(env_id: str, render_mode: str | None) -> None:
    env = gym.make(env_id, render_mode=render_mode).unwrapped  # the checkers want the raw env (it keeps its spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env)  # also makes the env in every declared render mode and renders it
        sb3_check_env(env, warn=True, skip_render_check=False)


def test_vec_env_renders_like_an_sb3_vec_env() -> None:
    venv = RuntimePruningVecEnv(num_envs=2, render_mode="rgb_array")
    venv.seed(0)
    venv.reset()
    venv.step(np.zeros((2, 1), dtype=np.float32))
    images = venv.get_images()
    assert len(images) == 2 and all(img is not None and img.shape == RGB_SHAPE for img in images)
    tiled = venv.render()
    assert isinstance(tiled, np.ndarray) and tiled.dtype == np.uint8 and tiled.ndim == 3
    assert tiled.shape[0] * tiled.shape[1] >= 2 * RGB_SHAPE[0] * RGB_SHAPE[1]
    text_env = RuntimePruningVecEnv(num_envs=2, render_mode="ansi")
    text_env.reset()
    text = text_env.render()
    assert isinstance(text, str) and text.count("units decided") == 2
    plain = RuntimePruningVecEnv(num_envs=2)
    assert plain.render_mode is None
    with pytest.warns(UserWarning, match="render_mode"):
        assert plain.get_images() == [None, None]
    with pytest.raises(ValueError, match="render_mode"):
        RuntimePruningVecEnv(num_envs=2, render_mode="human")


def test_render_module_doctest() -> None:
    result = doctest.testmod(render_module)
    assert result.attempted > 0 and result.failed == 0
