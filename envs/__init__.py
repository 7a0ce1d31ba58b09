"""prefrl's own gymnasium tasks, registered as `prefrl/<Name>-v0` on import."""

import gymnasium

gymnasium.register(id="prefrl/MiniPong-v0", entry_point="envs.minipong:MiniPongEnv", max_episode_steps=1000)
gymnasium.register(id="prefrl/LavaLedge-v0", entry_point="envs.lava_ledge:LavaLedgeEnv", max_episode_steps=150)
