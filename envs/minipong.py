"""MiniPong: a small vector-observation Pong where offline preference labels fail."""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.drawing import blank_frame, draw_number, fill_rect

# Court geometry, in court units (the court is the unit square; y grows downwards as in the frame).
AGENT_X = 0.94
"""x of the agent's paddle face (the agent plays on the right, as in Atari Pong)."""
OPPONENT_X = 0.06
"""x of the opponent's paddle face."""
BALL_RADIUS = 0.015
SERVE_X = 0.5
STEEPNESS = 0.85
"""|vy| / |vx| of a ball that leaves a paddle at its very edge; a centre hit leaves flat (vy = 0)."""
PAUSE_STEPS = 10
"""Steps the ball rests in the goal after a point (the border flashes in the scorer's colour) before
the next serve: a point is a clear, several-step event in a clip, and conceding fast saves no time."""
LOST_COLOUR = (200, 60, 60)

AGENT_COLOUR = (92, 186, 92)
OPPONENT_COLOUR = (213, 130, 74)
BALL_COLOUR = (236, 236, 236)
NET_COLOUR = (90, 90, 90)
BACKGROUND = (20, 24, 40)


class MiniPongEnv(gym.Env):
    """
    ## Description

    A one-player Pong against a built-in opponent, small enough that PPO with an MLP learns it on a
    CPU in minutes. The agent moves the right paddle; the left paddle is a competent but beatable
    opponent: it follows the ball while it moves away and, once the ball comes back, moves (at a
    limited speed) to where it will arrive. Where the ball meets a paddle sets the angle it leaves
    at: a centre hit sends it back flat, an edge hit steeply. Each of the agent's hits in a rally
    makes the ball faster (serve 0.025, then x1.45 a hit up to 0.06 court widths a step). A slow
    ball gives the opponent time to reach anything; a fast, steep one it often cannot reach. So
    **scoring takes a rally of at least two returns followed by a deliberate edge hit** aimed away
    from the opponent; centre hits are always returned.

    This is the structure of the paper's Pong failure (Christiano et al. 2017, Section 3.3): clips
    of a random policy show many conceded points and almost never a won one (a random paddle
    seldom returns the ball twice in a row). A reward model trained only on such clips learns
    "don't miss the ball" but nothing about scoring, so an agent trained on it keeps the ball
    alive in a long volley: long rallies, few points won, few lost. Labels gathered online, from
    clips of the improving agent, contain its lucky edge hits that score, and it learns to aim.
    (With (observation, action) inputs, a reward model fit on random clips can also pick up a
    spurious liking for one action, and the agent then parks its paddle at a wall and concedes
    every serve; observation-only inputs, `--no-use-actions`, avoid that: the true reward depends
    on states alone.)
    Scripted policies, points won / lost per 1000-step episode (30 episodes): random 0.4 / 25.6; a
    paddle that follows the ball 0 / 0 (one rally, 34 hits, for the whole episode); edge hits once
    the ball is fast, aimed towards the open side, 8.2 / 1.9.

    ## Action Space

    `Discrete(3)`: 0 stay, 1 move up, 2 move down (by `paddle_speed` court units a step).

    ## Observation Space

    `Box(-1, 1, (6,), float32)`, every entry normalised to [-1, 1]:

    | Num | Observation              | -1                   | 1                     |
    |-----|--------------------------|----------------------|-----------------------|
    | 0   | ball x                   | opponent's goal line | agent's goal line     |
    | 1   | ball y                   | top wall             | bottom wall           |
    | 2   | ball x velocity          | fastest to the left  | fastest to the right  |
    | 3   | ball y velocity          | steepest upwards     | steepest downwards    |
    | 4   | agent paddle centre y    | top                  | bottom                |
    | 5   | opponent paddle centre y | top                  | bottom                |

    ## Rewards

    +1 on the step the ball passes the opponent's goal line (the agent scores), -1 on the step it
    passes the agent's, 0 otherwise.

    ## Starting State

    Both paddles start centred. The ball is served from the centre line, at a height and gentle
    angle drawn from `self.np_random`, always towards the agent. After every point the ball rests
    in the goal for 10 steps (the border flashes in the scorer's colour), then is served again the
    same way, so a point is a several-step event in a clip and conceding quickly saves no time.

    ## Episode End

    The episode never terminates: it is one continuous match of fixed length, so the episode's end
    leaks nothing about the reward. Registration truncates it after 1000 steps.

    `info` at every step: `points_won` and `points_lost` (so far this episode), `rally_length`
    (the agent's paddle hits in the current rally, i.e. since the last serve), `longest_rally`,
    `mean_rally` (agent hits per rally, counting the one in play) and `hits` (agent hits this
    episode). All but `rally_length` are cumulative, so their values at the last step describe the
    episode; `metadata["episode_metrics"]` names them for Monitor's episode infos. The offline
    failure shows as high `mean_rally` / `longest_rally` with `points_won` near 0.

    ## Arguments

    ```python
    import gymnasium as gym
    import envs  # registers prefrl/... ids
    env = gym.make("prefrl/MiniPong-v0", render_mode="rgb_array", opponent_speed=0.025)
    ```

    - `render_mode`: None or "rgb_array" (128x128x3 uint8 frames drawn with numpy: agent green on
      the right, opponent orange on the left, both scores on top, the border flashes after a point).
    - `paddle_half_height` (0.08), `paddle_speed` (0.03): the paddles' size and the agent's speed.
    - `opponent_speed` (0.02): faster makes scoring harder.
    - `serve_speed` (0.025), `max_ball_speed` (0.06), `speedup` (1.45): the ball's horizontal speed
      at the serve, its cap, and its growth with each of the agent's hits in a rally.

    ## Version History

    - v0: initial version.
    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": 15,
        "episode_metrics": ("points_won", "points_lost", "hits", "mean_rally", "longest_rally"),
    }

    def __init__(self, render_mode: Optional[str] = None, paddle_half_height: float = 0.08,
                 paddle_speed: float = 0.03, opponent_speed: float = 0.02, serve_speed: float = 0.025,
                 max_ball_speed: float = 0.06, speedup: float = 1.45):
        for name, value in dict(paddle_half_height=paddle_half_height, paddle_speed=paddle_speed,
                                opponent_speed=opponent_speed, serve_speed=serve_speed,
                                max_ball_speed=max_ball_speed).items():
            if not 0 < value < 0.5:
                raise ValueError(f"MiniPong {name}={value} is outside (0, 0.5); court units are fractions of "
                                 "the court, e.g. 0.03")
        if serve_speed > max_ball_speed or speedup < 1:
            raise ValueError(f"MiniPong needs serve_speed <= max_ball_speed and speedup >= 1 (got {serve_speed}, "
                             f"{max_ball_speed}, {speedup})")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"MiniPong render_mode={render_mode!r} is not supported; use None or 'rgb_array'")
        self.render_mode = render_mode
        self.half = paddle_half_height
        self.paddle_speed = paddle_speed
        self.opponent_speed = opponent_speed
        self.serve_speed = serve_speed
        self.max_ball_speed = max_ball_speed
        self.speedup = speedup
        self.action_space = spaces.Discrete(3)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)
        self.frame_size = 128
        # State (set in reset): ball position/velocity, paddle centres, opponent aim, counters.
        self._ball = np.zeros(2)
        self._vel = np.zeros(2)
        self._agent_y = 0.5
        self._opponent_y = 0.5
        self._aim = 0.0
        self._counts: dict[str, int] = {}
        self._pause = 0
        self._pause_colour = BACKGROUND

    # --- gymnasium API ------------------------------------------------------------

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._agent_y = 0.5
        self._opponent_y = 0.5
        self._counts = dict(points_won=0, points_lost=0, hits=0, rally_length=0, longest_rally=0)
        self._pause = 0
        self._serve()
        return self._obs(), self._info()

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} ({type(action)}) invalid"
        move = (0.0, -1.0, 1.0)[int(action)] * self.paddle_speed
        self._agent_y = float(np.clip(self._agent_y + move, 0.0, 1.0))  # half a paddle may leave the court
        self._move_opponent()
        if self._pause:
            self._pause -= 1
            if not self._pause:
                self._serve()
            reward = 0.0
        else:
            reward = self._move_ball()
        return self._obs(), reward, False, False, self._info()

    def render(self) -> Optional[np.ndarray]:
        if self.render_mode is None:
            gym.logger.warn("MiniPong.render() called without a render_mode; make the env with "
                            "render_mode='rgb_array'")
            return None
        return self._frame()

    # --- dynamics -----------------------------------------------------------------

    def _serve(self) -> None:
        """Ball from the centre line towards the agent, at a random height and a gentle angle."""
        rng = self.np_random
        self._ball = np.array([SERVE_X, rng.uniform(0.3, 0.7)])
        self._vel = np.array([self.serve_speed, rng.uniform(-0.4, 0.4) * self.serve_speed])
        self._counts["rally_length"] = 0
        self._new_aim()

    def _new_aim(self) -> None:
        """The opponent hits with a random part of its paddle, so its returns vary in angle."""
        self._aim = float(self.np_random.uniform(-0.35, 0.35))

    def _move_opponent(self) -> None:
        """Follow the ball while it moves away; move to where it will arrive once it comes back."""
        y = 0.5 if self._pause else self._ball[1]
        if self._vel[0] < 0:
            y = _fold(y + self._vel[1] * (self._ball[0] - OPPONENT_X - BALL_RADIUS) / -self._vel[0])
        target = y - self._aim * (self.half + BALL_RADIUS)
        step = float(np.clip(target - self._opponent_y, -self.opponent_speed, self.opponent_speed))
        self._opponent_y = float(np.clip(self._opponent_y + step, 0.0, 1.0))

    def _move_ball(self) -> float:
        """Advance the ball one step: walls, paddles, goals. Returns the agent's reward."""
        prev_x = self._ball[0]
        self._ball = self._ball + self._vel
        x, y = self._ball
        if y < BALL_RADIUS or y > 1 - BALL_RADIUS:  # bounce off the top or bottom wall
            wall = BALL_RADIUS if y < BALL_RADIUS else 1 - BALL_RADIUS
            self._ball[1] = 2 * wall - y
            self._vel[1] = -self._vel[1]
        face_agent, face_opp = AGENT_X - BALL_RADIUS, OPPONENT_X + BALL_RADIUS
        c = self._counts
        if self._vel[0] > 0 and prev_x <= face_agent < x:
            speed = min(self.max_ball_speed, self.serve_speed * self.speedup ** (c["rally_length"] + 1))
            if not self._bounce(self._agent_y, face_agent, -speed):
                return self._goal()
            c["hits"] += 1
            c["rally_length"] += 1
            c["longest_rally"] = max(c["longest_rally"], c["rally_length"])
            self._new_aim()
        elif self._vel[0] < 0 and x < face_opp <= prev_x:
            self._bounce(self._opponent_y, face_opp, -self._vel[0])
        return self._goal()

    def _goal(self) -> float:
        """A ball past a goal line scores (+1 for the agent, -1 against it) and rests there for PAUSE_STEPS."""
        if 0.0 < self._ball[0] < 1.0:
            return 0.0
        won = self._ball[0] <= 0.0
        self._counts["points_won" if won else "points_lost"] += 1
        self._ball[0] = 0.0 if won else 1.0
        self._vel = np.zeros(2)
        self._pause, self._pause_colour = PAUSE_STEPS, AGENT_COLOUR if won else LOST_COLOUR
        return 1.0 if won else -1.0

    def _bounce(self, paddle_y: float, face: float, vx: float) -> bool:
        """Return the ball at horizontal velocity vx if the paddle covers it; where it met the paddle
        sets the angle (centre: flat, edge: STEEPNESS)."""
        offset = (self._ball[1] - paddle_y) / (self.half + BALL_RADIUS)
        if abs(offset) > 1.0:
            return False
        self._ball[0] = 2 * face - self._ball[0]
        self._vel = np.array([vx, offset * STEEPNESS * abs(vx)])
        return True

    # --- observation, info, frame -------------------------------------------------

    def _obs(self) -> np.ndarray:
        x, y = self._ball
        vx, vy = self._vel
        obs = [2 * x - 1, 2 * y - 1, vx / self.max_ball_speed, vy / (STEEPNESS * self.max_ball_speed),
               2 * self._agent_y - 1, 2 * self._opponent_y - 1]
        return np.clip(np.array(obs, dtype=np.float32), -1.0, 1.0)

    def _info(self) -> dict[str, Any]:
        c = self._counts
        rallies = c["points_won"] + c["points_lost"] + 1  # finished rallies and the one in play
        return {**c, "mean_rally": c["hits"] / rallies}

    def _frame(self) -> np.ndarray:
        n = self.frame_size
        frame = blank_frame(n, n, BACKGROUND)
        if self._pause:
            c = self._pause_colour
            frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = c, c, c, c
        for y0 in range(4, n - 4, 8):  # the net
            fill_rect(frame, n // 2 - 1, y0, n // 2 + 1, y0 + 4, NET_COLOUR)
        px = lambda v: int(round(v * n))  # noqa: E731  (court units -> pixels)
        h = self.half
        fill_rect(frame, px(AGENT_X), px(self._agent_y - h), px(AGENT_X) + 3, px(self._agent_y + h), AGENT_COLOUR)
        fill_rect(frame, px(OPPONENT_X) - 3, px(self._opponent_y - h), px(OPPONENT_X),
                  px(self._opponent_y + h), OPPONENT_COLOUR)
        bx, by = self._ball
        r = max(2, px(BALL_RADIUS))
        fill_rect(frame, px(bx) - r, px(by) - r, px(bx) + r, px(by) + r, BALL_COLOUR)
        draw_number(frame, self._counts["points_lost"], n // 2 - 20, 5, OPPONENT_COLOUR)
        draw_number(frame, self._counts["points_won"], n // 2 + 12, 5, AGENT_COLOUR)
        return frame


def _fold(y: float) -> float:
    """Where a ball at unbounded height y really is after bouncing between the walls."""
    lo, span = BALL_RADIUS, 1 - 2 * BALL_RADIUS
    t = (y - lo) % (2 * span)
    return lo + (t if t <= span else 2 * span - t)
