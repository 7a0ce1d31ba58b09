"""prefrl: deep reinforcement learning from human preferences, as a testbed."""

__version__ = "0.1.0"
