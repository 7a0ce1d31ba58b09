"""Environments: any gymnasium id with a Box observation and Box/Discrete actions.

`make_vec_env` builds the bottom of the data flow in ../shared/DESIGN.md:
gymnasium env -> [Atari: AtariPreprocessing -> score band blacked out -> frame stack]
-> [hidden reward terms removed] -> fixed horizon -> Monitor (true episode return)
-> [continuous episode] -> VecEnv.
The reward-side wrappers (ClipRecorder, LearnedReward, VecNormalize) go on top in
`prefrl.loop`.
"""

from __future__ import annotations

import os

# MuJoCo picks its OpenGL backend from MUJOCO_GL; unset, it tries GLFW, which aborts the whole process
# without a display. EGL renders headless (Mesa's llvmpipe on CPU); `render_backend` falls back to osmesa.
_GL_FROM_USER = bool(os.environ.get("MUJOCO_GL"))
if not _GL_FROM_USER:
    os.environ["MUJOCO_GL"] = "egl"

import difflib  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from typing import Any, Callable, Literal, Optional  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv  # noqa: E402

from prefrl.config import EnvConfig, reward_transform  # noqa: E402

Family = Literal["atari", "mujoco", "other"]

ATARI_SCREEN_ROWS = 210
SCORE_BANDS: dict[str, tuple[int, int]] = {
    "pong": (0, 24),  # both scores; the wall below (rows 24-33) stays
    "breakout": (0, 17),  # score, lives, player
    "spaceinvaders": (0, 22),
    "seaquest": (0, 20),  # score; the lives row below stays
    "beamrider": (0, 42),  # score, sector and the enemy count (the paper blanks that too)
    "enduro": (161, 192),  # score, day and cars-to-pass panel (the paper blanks the speedometer)
}
"""Screen rows [top, bottom) of the 210x160 ALE frame that show the score, blacked out across the full width
(paper A.2). Measured by eye on frames of each game; games not listed need --no-blank-score."""
MUJOCO_RENDER_SIDE = 256
"""MuJoCo renders clips at this many pixels a side (its default is 480; clip frames are capped at 256 anyway)."""


class EnvError(ValueError):
    """An env that prefrl cannot use; the message says how to fix it."""


def register_envs(env_id: str = "") -> None:
    """Register ids that live outside gymnasium: ours (`prefrl/...`, in envs/) and ALE's.

    Imported lazily so classic-control runs never pay for ale_py or our envs.
    """
    if env_id.startswith("prefrl/") or not env_id:
        import envs  # noqa: F401  (registers prefrl/... ids)
    if env_id.startswith("ALE/") or not env_id:
        import ale_py

        gym.register_envs(ale_py)


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """Look up a registered id, suggesting close ids for a typo."""
    register_envs(env_id)
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        register_envs()  # so a typo can be matched against every id we know
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.pprint_registry() for ids"
        raise EnvError(f"unknown env id '{env_id}'; {hint}") from None


def _entry_class(spec: gym.envs.registration.EnvSpec) -> Any:
    entry = spec.entry_point
    if callable(entry):
        return entry
    mod, _, name = str(entry).partition(":")
    return getattr(importlib.import_module(mod), name)


def env_family(env_id: str) -> Family:
    """`atari` (ALE ids), `mujoco` (gymnasium's MuJoCo tasks) or `other`; presets and wrappers follow it."""
    spec = env_spec(env_id)
    entry = spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__module__", "")
    if env_id.startswith("ALE/") or str(entry).startswith("ale_py"):
        return "atari"
    if str(entry).startswith("gymnasium.envs.mujoco"):
        _route_mujoco_warnings()
        return "mujoco"
    return "other"


@functools.lru_cache(maxsize=1)
def _route_mujoco_warnings() -> None:
    """MuJoCo writes its warnings to MUJOCO_LOG.TXT in the working directory (mujoco 4 warns about every
    gymnasium Hopper/Walker2d model's deprecated `settotalmass`); send them to Python's warnings instead."""
    import warnings

    import mujoco

    def warn(msg: str) -> None:
        if "settotalmass" not in msg:
            warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(warn)


def _accepts(env_id: str, kwarg: str) -> bool:
    return kwarg in inspect.signature(_entry_class(env_spec(env_id)).__init__).parameters


def check_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(obs_space, spaces.Box):
        raise EnvError(f"{env_id} has a {type(obs_space).__name__} observation space; prefrl needs a Box "
                       "(wrap the env with gymnasium.wrappers.FlattenObservation)")
    if not isinstance(act_space, (spaces.Box, spaces.Discrete)):
        raise EnvError(f"{env_id} has a {type(act_space).__name__} action space; prefrl supports Box or Discrete "
                       "actions (pick another env or wrap its action space)")


class AbsorbAfterTermination(gym.Wrapper):
    """Hide episode ends from the reward: after `terminated` the env stays in an absorbing state.

    Termination leaks information about the reward (an agent learns that ending early
    is good or bad from the episode length alone), so with a fixed horizon every episode
    runs to the time limit: after the real episode ends, the last observation repeats
    with true reward 0 and the episode is truncated at `max_steps`.
    """

    def __init__(self, env: gym.Env, max_steps: int):
        super().__init__(env)
        self.max_steps = max_steps
        self._t = 0
        self._absorbed: Optional[Any] = None
        self._absorbed_info: dict[str, Any] = {}

    def reset(self, **kwargs):
        self._t = 0
        self._absorbed = None
        return self.env.reset(**kwargs)

    def step(self, action):
        self._t += 1
        if self._absorbed is not None:
            return self._absorbed, 0.0, False, self._t >= self.max_steps, self._absorbed_info
        obs, rew, terminated, truncated, info = self.env.step(action)
        if terminated:
            self._absorbed = obs
            # the last real info (episode metrics such as points won) stays visible to Monitor
            self._absorbed_info = {**info, "absorbed": True}
        return obs, rew, False, truncated or self._t >= self.max_steps, info


class ContinuousEpisode(gym.Wrapper):
    """One endless episode: when the game ends, the env resets underneath and the agent never sees an end.

    Goes outside Monitor, so each game's true return and length are still logged (info["episode"] at the
    step where the game ended, whose observation is already the new game's first). The paper's Atari runs
    signal neither life loss nor game end (A.2): an episode end would tell the agent about the reward.
    """

    def step(self, action):
        obs, rew, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            obs, _ = self.env.reset()
            info = {**info, "game_over": True}
        return obs, rew, False, False, info


class BlankScore(gym.Wrapper):
    """Paint the score band black in the preprocessed frame (what the agent and reward model see) and in
    rendered RGB frames (what people see in clips), as the paper does on every Atari game (A.2)."""

    def __init__(self, env: gym.Env, band: tuple[int, int]):
        super().__init__(env)
        self.band = band
        rows = env.observation_space.shape[0]
        scale = rows / ATARI_SCREEN_ROWS  # AtariPreprocessing resizes the whole 210-row screen
        self.obs_rows = slice(math.floor(band[0] * scale), math.ceil(band[1] * scale))

    def _blank(self, obs: np.ndarray) -> np.ndarray:
        obs = np.array(obs)  # AtariPreprocessing reuses its buffer: never write into it
        obs[self.obs_rows] = 0
        return obs

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._blank(obs), info

    def step(self, action):
        obs, rew, terminated, truncated, info = self.env.step(action)
        return self._blank(obs), rew, terminated, truncated, info

    def render(self):
        frame = self.env.render()
        if frame is None:
            return None
        frame = np.array(frame)
        scale = frame.shape[0] / ATARI_SCREEN_ROWS
        frame[math.floor(self.band[0] * scale): math.ceil(self.band[1] * scale)] = 0
        return frame


class HideRewardTerms(gym.Wrapper):
    """The true reward without terms a person cannot see in a clip (e.g. MuJoCo's torque cost `reward_ctrl`):
    reward - sum(info[term]); the env's own reward stays in info["env_reward"]. Paper A.1."""

    def __init__(self, env: gym.Env, terms: tuple[str, ...], env_id: str):
        super().__init__(env)
        self.terms, self.env_id = terms, env_id

    def step(self, action):
        obs, rew, terminated, truncated, info = self.env.step(action)
        missing = [t for t in self.terms if t not in info]
        if missing:
            known = sorted(k for k in info if k.startswith("reward")) or sorted(info)
            raise EnvError(f"{self.env_id} reports no reward term {missing[0]!r} in its step info (it has "
                           f"{', '.join(known) or 'none'}); fix --hidden-reward-terms")
        info["env_reward"] = float(rew)
        return obs, float(rew) - sum(float(info[t]) for t in self.terms), terminated, truncated, info


class ZeroWhileUnhealthy(gym.Wrapper):
    """Reward 0 on every step a MuJoCo robot is unhealthy (fallen): with termination turned off this makes a fall
    cost what termination would, every later step's reward, instead of only the survive bonus."""

    def __init__(self, env: gym.Env, env_id: str):
        super().__init__(env)
        if not hasattr(env.unwrapped, "is_healthy"):
            raise EnvError(f"{env_id} has no healthy state (is_healthy), so a fall is undefined; "
                           "drop --fallen-reward zero")

    def step(self, action):
        obs, rew, terminated, truncated, info = self.env.step(action)
        healthy = bool(self.env.unwrapped.is_healthy)
        info["healthy"] = healthy
        return obs, float(rew) if healthy else 0.0, terminated, truncated, info


class PhysicsState(gym.Wrapper):
    """info["physics_state"] = (qpos, qvel) of a MuJoCo env after reset and every step, so that a clip can be
    rendered later, from its states, when it is chosen for labelling (MujocoStateRenderer)."""

    def _with_state(self, info: dict) -> dict:
        data = self.env.unwrapped.data
        info["physics_state"] = np.concatenate([data.qpos, data.qvel])
        return info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, self._with_state(info)

    def step(self, action):
        obs, rew, terminated, truncated, info = self.env.step(action)
        return obs, rew, terminated, truncated, self._with_state(info)


class MujocoStateRenderer:
    """Physics states (T, nq + nv) -> RGB frames (T, H, W, 3), rendered by a private copy of the env (never a
    training env), created at the first call."""

    def __init__(self, env_id: str):
        self.env_id = env_id
        self._env: Optional[gym.Env] = None

    def __call__(self, states: np.ndarray) -> np.ndarray:
        if self._env is None:
            render_backend()
            self._env = gym.make(self.env_id, render_mode="rgb_array", width=MUJOCO_RENDER_SIDE,
                                 height=MUJOCO_RENDER_SIDE)
            self._env.reset(seed=0)
        u = self._env.unwrapped
        nq = u.model.nq
        frames = []
        for state in np.asarray(states, dtype=np.float64):
            u.set_state(state[:nq], state[nq:])
            frames.append(np.asarray(self._env.render(), dtype=np.uint8))
        return np.stack(frames)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def state_renderer(cfg: EnvConfig) -> Optional[MujocoStateRenderer]:
    """How clips of this env get frames without rendering every step: MuJoCo renders saved states; None means
    frames are grabbed from the env at every step (cheap for ALE and classic control)."""
    return MujocoStateRenderer(cfg.env) if env_family(cfg.env) == "mujoco" else None


@functools.lru_cache(maxsize=1)
def render_backend() -> str:
    """The MuJoCo OpenGL backend that works here, probed in a subprocess (without a display, a bad backend
    can abort the whole process): MUJOCO_GL as the user set it, else egl, then osmesa. Raises EnvError."""
    candidates = [os.environ["MUJOCO_GL"]] if _GL_FROM_USER else ["egl", "osmesa"]
    errors = []
    for backend in candidates:
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": "" if backend == "glfw" else backend}
        code = ("import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/>"
                "</worldbody></mujoco>'); r = mujoco.Renderer(m, 16, 16); r.update_scene(mujoco.MjData(m)); "
                "r.render(); print('ok')")
        try:
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
            ok = r.returncode == 0 and "ok" in r.stdout
            why = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        except subprocess.TimeoutExpired:
            ok, why = False, "timed out"
        if ok:
            if backend != os.environ["MUJOCO_GL"] and "mujoco" in sys.modules and _gl_imported():
                break  # another backend is loaded in this process already; say so below
            os.environ["MUJOCO_GL"] = backend
            return backend
        errors.append(f"{backend}: {why}")
    fix = ("set MUJOCO_GL=egl (apt-get install libegl1 libgl1-mesa-dri) or MUJOCO_GL=osmesa "
           "(apt-get install libosmesa6), or run `make mujoco-gl` as root")
    raise EnvError(f"MuJoCo cannot render clips here ({'; '.join(errors) or 'backend already loaded'}); {fix}")


def _gl_imported() -> bool:
    return any(m in sys.modules for m in ("mujoco.egl", "mujoco.osmesa", "mujoco.glfw"))


def episode_limit(cfg: EnvConfig) -> Optional[int]:
    return cfg.max_episode_steps or env_spec(cfg.env).max_episode_steps


def _make_atari(cfg: EnvConfig, render: bool) -> gym.Env:
    """ALE env -> AtariPreprocessing (84x84 grey, frame skip 4, no-op starts, no life-loss signal)
    -> score band blacked out -> frame stack (channels first: (frame_stack, 84, 84) uint8)."""
    game = str(env_spec(cfg.env).kwargs.get("game", "")).replace("_", "")
    band = SCORE_BANDS.get(game)
    if cfg.blank_score and band is None:
        raise EnvError(f"no score area is known for {cfg.env} (known: {', '.join(sorted(SCORE_BANDS))}); "
                       "add --no-blank-score, or its rows to prefrl.envs.SCORE_BANDS")
    kwargs: dict[str, Any] = dict(frameskip=1, repeat_action_probability=cfg.sticky_actions)
    if render:
        kwargs["render_mode"] = "rgb_array"
    env = gym.make(cfg.env, **kwargs)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    if cfg.blank_score:
        env = BlankScore(env, band)
    env = gym.wrappers.FrameStackObservation(env, cfg.frame_stack)
    if cfg.max_episode_steps:  # in agent steps (after frame skip), like every other env's limit
        env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
    return env


def make_env(cfg: EnvConfig, render: bool = False) -> gym.Env:
    """One env, wrapped for a fixed horizon when asked. Raises EnvError on unusable envs."""
    family = env_family(cfg.env)
    kwargs: dict[str, Any] = {}
    if family == "atari":
        env = _make_atari(cfg, render)
    else:
        if cfg.max_episode_steps:
            kwargs["max_episode_steps"] = cfg.max_episode_steps
        if render:
            kwargs["render_mode"] = "rgb_array"
        if family == "mujoco":
            if render:
                render_backend()
                kwargs.update(width=MUJOCO_RENDER_SIDE, height=MUJOCO_RENDER_SIDE)
            if not cfg.terminate_when_unhealthy and _accepts(cfg.env, "terminate_when_unhealthy"):
                kwargs["terminate_when_unhealthy"] = False
        env = gym.make(cfg.env, **kwargs)
        if family == "mujoco" and render:
            env = PhysicsState(env)
    check_spaces(cfg.env, env.observation_space, env.action_space)
    if cfg.hidden_reward_terms:
        env = HideRewardTerms(env, tuple(cfg.hidden_reward_terms), cfg.env)
    if cfg.fallen_reward == "zero":
        env = ZeroWhileUnhealthy(env, cfg.env)
    if cfg.fixed_horizon:
        limit = episode_limit(cfg)
        if limit is None:
            env.close()
            raise EnvError(f"{cfg.env} has no time limit, so a fixed horizon is undefined; "
                           "set --max-episode-steps N or --no-fixed-horizon")
        env = AbsorbAfterTermination(env, limit)
    return env


def make_vec_env(cfg: EnvConfig, seed: int, render: bool = False) -> VecEnv:
    """n_envs copies under Monitor, seeded seed, seed+1, ..."""
    vec_cls = SubprocVecEnv if cfg.vec_env == "subproc" and cfg.n_envs > 1 else DummyVecEnv
    if vec_cls is SubprocVecEnv:
        make_env(cfg, render).close()  # fail here with a clear error, not inside a worker process
    env_fn: Callable[[], gym.Env] = lambda: make_env(cfg, render)  # noqa: E731
    return sb3_make_vec_env(env_fn, n_envs=cfg.n_envs, seed=seed, vec_env_cls=vec_cls,
                            monitor_kwargs={"info_keywords": episode_metrics(cfg.env)},
                            wrapper_class=_outer_wrappers(cfg))


def _outer_wrappers(cfg: EnvConfig) -> Optional[Callable[[gym.Env], gym.Env]]:
    """What goes outside Monitor (so episode returns stay the env's own): ContinuousEpisode, and
    --reward-transform's f(r), which PPO sees and evaluation (make_env) never does."""
    f = reward_transform(cfg.reward_transform)
    if not cfg.continuous_episode and f is None:
        return None

    def wrap(env: gym.Env) -> gym.Env:
        if cfg.continuous_episode:
            env = ContinuousEpisode(env)
        return env if f is None else gym.wrappers.TransformReward(env, f)
    return wrap


def episode_metrics(env_id: str) -> tuple[str, ...]:
    """Per-episode numbers an env reports in its final `info` (declared in its metadata as
    "episode_metrics", e.g. points won or rally length); Monitor copies them into episode infos."""
    cls = _entry_class(env_spec(env_id))
    return tuple(getattr(cls, "metadata", {}).get("episode_metrics", ()))


def action_array(act_space: gym.Space, actions: np.ndarray) -> np.ndarray:
    """Actions as stored in clips: int64 indices for Discrete, float32 for Box."""
    if isinstance(act_space, spaces.Discrete):
        return np.asarray(actions, dtype=np.int64).reshape(-1)
    return np.asarray(actions, dtype=np.float32).reshape((-1, *act_space.shape))
