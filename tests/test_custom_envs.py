"""Our own tasks in envs/: gymnasium's checks, the dynamics that make them useful, and the path into prefrl."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers prefrl/... ids)
from envs.lava_ledge import GOAL, LAVA_X
from envs.minipong import AGENT_X, BALL_RADIUS, OPPONENT_X, PAUSE_STEPS
from prefrl.config import EnvConfig
from prefrl.envs import episode_metrics, make_vec_env

PREFRL_IDS = sorted(i for i in gym.registry if i.startswith("prefrl/"))


def test_both_tasks_are_registered():
    assert {"prefrl/MiniPong-v0", "prefrl/LavaLedge-v0"} <= set(PREFRL_IDS)


@pytest.mark.parametrize("env_id", PREFRL_IDS)
def test_check_env(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    assert env.spec.max_episode_steps  # a fixed horizon comes from registration
    assert episode_metrics(env_id), "declare metadata['episode_metrics'] so Monitor reports them"
    env.close()


@pytest.mark.parametrize("env_id", PREFRL_IDS)
def test_seeding_is_reproducible(env_id):
    def rollout(seed):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        actions = np.random.default_rng(0).integers(env.action_space.n, size=200)
        trace = [obs] + [env.step(int(a))[0] for a in actions]
        return np.array(trace)

    np.testing.assert_array_equal(rollout(3), rollout(3))
    assert not np.array_equal(rollout(3), rollout(4))


@pytest.mark.parametrize("env_id", PREFRL_IDS)
def test_frames_have_the_right_shape_and_change(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    for _ in range(10):
        env.step(env.action_space.n - 1)
    later = env.render()
    size = env.unwrapped.frame_size
    assert first.shape == later.shape == (size, size, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, later)


# --- MiniPong -----------------------------------------------------------------------


def _follow(pong) -> int:
    """A perfect paddle: move towards the ball's height (0 stay, 1 up, 2 down)."""
    gap = pong._ball[1] - pong._agent_y
    if abs(gap) < pong.paddle_speed / 2:
        return 0
    return 2 if gap > 0 else 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_ball_following_paddle_never_loses(seed):
    env = gym.make("prefrl/MiniPong-v0", max_episode_steps=3000)
    env.reset(seed=seed)
    pong = env.unwrapped
    rewards, truncated = [], False
    while not truncated:
        _, rew, terminated, truncated, info = env.step(_follow(pong))
        assert not terminated
        rewards.append(rew)
    assert info["points_lost"] == 0 and min(rewards) >= 0
    # centre hits send the ball back flat and the opponent returns nearly all of them: the endless volley
    assert info["hits"] > 50 and info["points_won"] <= 2 and info["mean_rally"] > 15


def test_points_are_counted():
    env = gym.make("prefrl/MiniPong-v0")
    env.reset(seed=0)
    pong = env.unwrapped
    # the ball is about to pass the agent's paddle far from it: a point for the opponent
    pong._ball, pong._vel, pong._agent_y = np.array([AGENT_X - 0.02, 0.1]), np.array([0.05, 0.0]), 0.9
    _, rew, *_, info = env.step(0)
    rewards = [rew]
    for _ in range(PAUSE_STEPS + 1):
        _, rew, *_, info = env.step(0)
        rewards.append(rew)
    assert rewards[:2] == [0.0, -1.0]
    assert sum(rewards) == -1.0 and info["points_lost"] == 1 and info["points_won"] == 0
    assert pong._vel[0] > 0, "after the pause the ball is served towards the agent"
    # the ball is about to pass the opponent far from its paddle: a point for the agent
    pong._ball, pong._vel, pong._opponent_y = np.array([OPPONENT_X + 0.02, 0.1]), np.array([-0.05, 0.0]), 0.9
    rewards = [env.step(0)[1] for _ in range(3)]
    info = env.step(0)[-1]
    assert sum(rewards) == 1.0 and info["points_won"] == 1 and info["points_lost"] == 1


def test_hit_angle_follows_where_the_ball_meets_the_paddle():
    env = gym.make("prefrl/MiniPong-v0")
    env.reset(seed=0)
    pong = env.unwrapped
    reach = pong.half + BALL_RADIUS
    vys = {}
    for offset in (0.0, 0.9):
        pong._agent_y = 0.5
        pong._ball, pong._vel = np.array([AGENT_X - BALL_RADIUS - 0.01, 0.5 + offset * reach]), np.array([0.03, 0.0])
        _, rew, *_, info = env.step(0)
        assert rew == 0.0 and pong._vel[0] < 0, "the paddle returned the ball"
        vys[offset] = pong._vel[1]
    assert vys[0.0] == pytest.approx(0.0, abs=1e-9)
    assert vys[0.9] > 0.5 * abs(pong._vel[0]), "an edge hit leaves steeply"
    assert info["hits"] == 2 and info["rally_length"] == 2


def test_a_random_paddle_almost_never_scores():
    """The structure behind the offline failure: random clips show conceding, not scoring."""
    env = gym.make("prefrl/MiniPong-v0")
    rng = np.random.default_rng(0)
    won = lost = 0
    for ep in range(6):
        env.reset(seed=ep)
        for _ in range(500):
            info = env.step(int(rng.integers(3)))[-1]
        won, lost = won + info["points_won"], lost + info["points_lost"]
    assert lost >= 40 and won <= 2


def test_monitor_episode_infos_carry_the_episode_metrics():
    venv = make_vec_env(EnvConfig(env="prefrl/MiniPong-v0", n_envs=2), seed=0)
    venv.reset()
    episodes = []
    horizon = gym.spec("prefrl/MiniPong-v0").max_episode_steps
    for _ in range(horizon):
        _, _, dones, infos = venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
        episodes += [info["episode"] for info in infos if "episode" in info]
    venv.close()
    assert len(episodes) == 2 and all(ep["l"] == horizon for ep in episodes)
    for ep in episodes:
        assert {"points_won", "points_lost", "hits", "mean_rally", "longest_rally"} <= set(ep)
        assert ep["r"] == ep["points_won"] - ep["points_lost"] and ep["points_lost"] > 0


# --- LavaLedge ----------------------------------------------------------------------


def _episode(env_id, policy, seed=0):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, rew, terminated, truncated, info = env.step(policy(obs))
        total, done = total + rew, terminated or truncated
    return total, info


def _to_goal(obs) -> int:
    x, y = (obs + 1) / 2
    if abs(x - GOAL[0]) > 0.011:
        return 4 if x < GOAL[0] else 3
    return 0 if abs(y - GOAL[1]) <= 0.011 else (2 if y < GOAL[1] else 1)


def test_lava_ledge_rewards_stopping_on_the_goal_and_punishes_overshooting():
    good, info = _episode("prefrl/LavaLedge-v0", _to_goal)
    assert good > 4.5 and info["lava_steps"] == 0 and info["goal_steps"] > 100 and info["distance"] < 0.02
    overshoot, info = _episode("prefrl/LavaLedge-v0", lambda obs: 4)  # "moving right is good", forever
    assert overshoot < -50 and info["lava_steps"] > 100 and info["goal_steps"] < 10
    staying, _ = _episode("prefrl/LavaLedge-v0", lambda obs: 0)
    assert overshoot < staying == 0.0 < good


def test_lava_ledge_random_walk_stays_far_from_goal_and_lava():
    """Random clips only ever show the start region, so they teach nothing about the lava."""
    rng = np.random.default_rng(0)
    for seed in range(10):
        env = gym.make("prefrl/LavaLedge-v0")
        obs, _ = env.reset(seed=seed)
        xs = [(env.step(int(rng.integers(5)))[0][0] + 1) / 2 for _ in range(150)]
        assert max(xs) < GOAL[0] - 0.08 < LAVA_X


def test_own_task_presets_are_cli_defaults_and_flags_override() -> None:
    from prefrl.cli import parse_train_config

    cfg = parse_train_config(["--env", "prefrl/MiniPong-v0"])
    assert (cfg.env.n_envs, cfg.ppo.gamma, cfg.reward.use_actions, cfg.total_timesteps) == (8, 0.99, False, 400_000)
    cfg = parse_train_config(["--env", "prefrl/MiniPong-v0", "--gamma", "0.95", "--use-actions"])
    assert (cfg.ppo.gamma, cfg.reward.use_actions, cfg.env.n_envs) == (0.95, True, 8)
    assert parse_train_config(["--env", "prefrl/LavaLedge-v0"]).ppo.learning_rate == 1e-3
    assert parse_train_config(["--env", "prefrl/LavaLedge-v0", "--clip-length", "10"]).feedback.clip_length == 10
    assert parse_train_config(["--env", "Pendulum-v1"]).ppo.gamma == 0.9  # no preset: prefrl's defaults
