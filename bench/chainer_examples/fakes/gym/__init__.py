"""Tiny stand-in for OpenAI gym (not installed, nothing downloadable): just enough for
Chainer's reinforcement_learning examples. CartPole-v0 and Pendulum-v0 with random dynamics."""
import types
import numpy as np


class Box(object):
    def __init__(self, low, high):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        self.shape = self.low.shape

    def sample(self):
        return np.random.uniform(self.low, self.high).astype(np.float32)


class Discrete(object):
    def __init__(self, n):
        self.n = n

    def sample(self):
        return np.random.randint(self.n)


spaces = types.SimpleNamespace(Box=Box, Discrete=Discrete)


class _Env(object):
    def __init__(self, obs_size, action_space, limit):
        self.observation_space = Box(-np.ones(obs_size), np.ones(obs_size))
        self.action_space = action_space
        self.spec = types.SimpleNamespace(reward_threshold=195.0, timestep_limit=limit,
                                          max_episode_steps=limit)
        self.t = 0

    def reset(self):
        self.t = 0
        return np.random.uniform(-1, 1, self.observation_space.shape).astype(np.float32)

    def step(self, action):
        self.t += 1
        obs = np.random.uniform(-1, 1, self.observation_space.shape).astype(np.float32)
        return obs, 1.0, self.t >= 20 or np.random.rand() < 0.05, {}

    def render(self):
        pass

    def close(self):
        pass


def make(name):
    if name.startswith('CartPole'):
        return _Env(4, Discrete(2), 200)
    return _Env(3, Box([-2.0], [2.0]), 200)


class _Monitor(object):
    def __init__(self, env, *a, **k):
        self.__dict__['env'] = env

    def __getattr__(self, name):
        return getattr(self.env, name)


wrappers = types.SimpleNamespace(Monitor=_Monitor)
