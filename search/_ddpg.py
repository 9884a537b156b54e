"""DDPG in numpy: the agent of HAQ (METHODS.md §1), as in mit-han-lab/haq ``lib/rl/ddpg.py``.

Two small ReLU MLPs with hand-written backprop and Adam. The actor maps a
state to one action in [0, 1] (sigmoid output); the critic reads the state and
the action through one linear map of their concatenation (the same as HAQ's sum
of a state map and an action map) and returns Q. Updates follow HAQ: a moving
average of batch rewards is subtracted as baseline, the critic regresses
``r + γ·(1 − done)·Q'(s', μ'(s'))`` on the target networks, the actor ascends
the critic, and the targets track the live networks with rate τ.

Everything random draws from the ``np.random.Generator`` given at construction,
so a run is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = ["Adam", "DDPGAgent", "DDPGSettings", "MLP", "ReplayBuffer", "truncated_normal_action"]

_FINAL_LAYER_INIT = 3e-3  # HAQ's init_w: the last layer starts near zero so Q and μ start flat


class MLP:
    """Fully connected ReLU network; the output activation is linear or sigmoid."""

    def __init__(self, sizes: list[int], rng: np.random.Generator, sigmoid_output: bool) -> None:
        self.sigmoid_output = sigmoid_output
        self.params: list[np.ndarray] = []
        for i, (fan_in, fan_out) in enumerate(pairwise(sizes)):
            last = i == len(sizes) - 2
            bound = _FINAL_LAYER_INIT if last else 1.0 / np.sqrt(fan_in)
            self.params.append(rng.uniform(-bound, bound, size=(fan_in, fan_out)))
            self.params.append(rng.uniform(-bound, bound, size=(fan_out,)))

    def copy_from(self, other: MLP) -> None:
        self.params = [p.copy() for p in other.params]

    def soft_update(self, source: MLP, tau: float) -> None:
        self.params = [
            (1.0 - tau) * p + tau * s for p, s in zip(self.params, source.params, strict=True)
        ]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Output and the activations that :meth:`backward` needs."""
        activations = [x]
        n_layers = len(self.params) // 2
        for i in range(n_layers):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            x = x @ w + b
            if i < n_layers - 1:
                x = np.maximum(x, 0.0)
            elif self.sigmoid_output:
                x = 1.0 / (1.0 + np.exp(-x))
            activations.append(x)
        return x, activations

    def backward(
        self, activations: list[np.ndarray], grad_out: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Gradients of the parameters and of the input, given dLoss/dOutput."""
        n_layers = len(self.params) // 2
        grads: list[np.ndarray] = [np.empty(0)] * len(self.params)
        out = activations[-1]
        grad = grad_out * out * (1.0 - out) if self.sigmoid_output else grad_out
        for i in reversed(range(n_layers)):
            x_in = activations[i]
            grads[2 * i] = x_in.T @ grad
            grads[2 * i + 1] = grad.sum(axis=0)
            grad = grad @ self.params[2 * i].T
            if i > 0:
                grad = grad * (activations[i] > 0.0)
        return grads, grad


class Adam:
    """Adam (β = 0.9, 0.999, ε = 1e-8) over a list of parameter arrays, updated in place."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.lr = lr
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        correction = np.sqrt(1.0 - b2**self.t) / (1.0 - b1**self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            p -= self.lr * correction * m / (np.sqrt(v) + eps)


class ReplayBuffer:
    """Fixed-capacity ring buffer of transitions (s, a, r, s', done)."""

    def __init__(self, capacity: int, state_dim: int) -> None:
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim))
        self.actions = np.zeros((capacity, 1))
        self.rewards = np.zeros((capacity, 1))
        self.next_states = np.zeros((capacity, state_dim))
        self.done = np.zeros((capacity, 1))
        self.size = 0
        self._next = 0

    def add(
        self, state: np.ndarray, action: float, reward: float, next_state: np.ndarray, done: bool
    ) -> None:
        i = self._next
        self.states[i], self.actions[i, 0], self.rewards[i, 0] = state, action, reward
        self.next_states[i], self.done[i, 0] = next_state, float(done)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        idx = rng.choice(self.size, size=batch_size, replace=self.size < batch_size)
        return (
            self.states[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_states[idx],
            self.done[idx],
        )


@dataclass(frozen=True)
class DDPGSettings:
    """Hyper-parameters of :class:`DDPGAgent` (defaults live in ``mpqc.search.haq.Options``)."""

    hidden: int
    lr_actor: float
    lr_critic: float
    batch_size: int
    tau: float
    discount: float
    baseline_alpha: float


def truncated_normal_action(mean: float, sigma: float, rng: np.random.Generator) -> float:
    """One sample of N(mean, sigma) truncated to [0, 1] (HAQ's exploration noise).

    Inverse-CDF sampling: one uniform draw, two ``ndtr`` and one ``ndtri`` (scipy's
    ``truncnorm.rvs`` does the same with far more overhead per scalar draw; bench/RESULTS.md
    §3b).
    """
    if sigma <= 0.0:
        return float(np.clip(mean, 0.0, 1.0))
    lo, hi = ndtr((0.0 - mean) / sigma), ndtr((1.0 - mean) / sigma)
    u = lo + rng.uniform() * (hi - lo)
    return float(np.clip(mean + sigma * ndtri(u), 0.0, 1.0))


class DDPGAgent:
    """Actor-critic with target networks and a moving-average reward baseline."""

    def __init__(self, state_dim: int, settings: DDPGSettings, rng: np.random.Generator) -> None:
        h = settings.hidden
        self.settings = settings
        self.rng = rng
        self.actor = MLP([state_dim, h, h, 1], rng, sigmoid_output=True)
        self.critic = MLP([state_dim + 1, h, h, 1], rng, sigmoid_output=False)
        self.actor_target = MLP([state_dim, h, h, 1], rng, sigmoid_output=True)
        self.critic_target = MLP([state_dim + 1, h, h, 1], rng, sigmoid_output=False)
        self.actor_target.copy_from(self.actor)
        self.critic_target.copy_from(self.critic)
        self.actor_opt = Adam(self.actor.params, settings.lr_actor)
        self.critic_opt = Adam(self.critic.params, settings.lr_critic)
        self.baseline: float | None = None

    def act(self, state: np.ndarray) -> float:
        """The actor's action for one state, without noise."""
        out, _ = self.actor.forward(state[None, :])
        return float(out[0, 0])

    def update(self, replay: ReplayBuffer) -> None:
        """One DDPG step on a batch sampled from ``replay``."""
        s = self.settings
        states, actions, rewards, next_states, done = replay.sample(s.batch_size, self.rng)
        batch_mean = float(rewards.mean())
        self.baseline = (
            batch_mean
            if self.baseline is None
            else (self.baseline + s.baseline_alpha * (batch_mean - self.baseline))
        )
        rewards = rewards - self.baseline

        next_actions, _ = self.actor_target.forward(next_states)
        next_q, _ = self.critic_target.forward(np.hstack([next_states, next_actions]))
        target = rewards + s.discount * (1.0 - done) * next_q

        q, acts = self.critic.forward(np.hstack([states, actions]))
        grads, _ = self.critic.backward(acts, 2.0 * (q - target) / len(q))
        self.critic_opt.step(self.critic.params, grads)

        policy_actions, actor_acts = self.actor.forward(states)
        _, critic_acts = self.critic.forward(np.hstack([states, policy_actions]))
        ascend = np.full((len(states), 1), -1.0 / len(states))  # d(-mean Q)/dQ
        _, grad_in = self.critic.backward(critic_acts, ascend)
        actor_grads, _ = self.actor.backward(actor_acts, grad_in[:, -1:])
        self.actor_opt.step(self.actor.params, actor_grads)

        self.actor_target.soft_update(self.actor, s.tau)
        self.critic_target.soft_update(self.critic, s.tau)
