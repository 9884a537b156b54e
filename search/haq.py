"""HAQ: a DDPG agent picks (weight, activation) bits layer by layer (METHODS.md §1).

Wang et al., "HAQ: Hardware-Aware Automated Quantization with Mixed Precision", CVPR 2019;
the loop follows mit-han-lab/haq ``rl_quantize.py`` and ``lib/env/linear_quantize_env.py``.

An episode walks the layers in topological order, two steps per layer: the actor proposes a
weight action, then an activation action, each a number in [0, 1]. After the last layer the
proposal is decoded to a configuration, squeezed under the budget by *action-space limiting*
(HAQ's final action wall), evaluated once, and its reward ``R = −reward_scale · error`` is given
to every transition of the episode. The hardware cost never enters the reward: the budget is
met by construction, so the agent only learns where precision buys accuracy.

mpqc adaptations, and why:

* **Actions onto candidate lists.** A layer's candidates are arbitrary ``(w, a)`` pairs, not a
  contiguous 2..8 range. The weight action bins ``[0, 1]`` equally over the layer's distinct
  weight widths (sorted low to high: ``idx = min(⌊a·K⌋, K−1)``), the activation action over its
  distinct activation widths; a pair that is not a candidate snaps to the nearest candidate
  (distance counted in steps along those two sorted lists, ties to the higher precision).
* **Limiting** (§1 step 3): while a constraint is exceeded, sweep layers last→first, lower the
  activation one step along the layer's list and re-check, then the weight one step and
  re-check. "One step" is the highest candidate strictly lower in that operand and not higher
  in the other (if the list has none, one higher in the other operand), and it must lower the
  layer's constrained costs (summed relative to their limits), so limiting cannot stall in a
  dead end like w4a4 in ``{w2a8, w4a4}`` nor cycle when costs are not monotone in bits.
  First and last layers stay at their safest choice (``pin_first_last``) unless
  nothing else is left to lower — only then are they lowered too, so every returned policy
  meets the budget whenever the budget can be met by lowering bits.
* **Tied layers** (``problem.groups``) share one choice: the agent acts once per tie class, at
  its first layer, and the class's cost is the sum of its members'.
* **State** (10 numbers in HAQ): layer index, the layer's descriptor columns, the
  weight/activation flag and the previous action, each min-max normalized over the episode's
  steps. The descriptor columns are all columns of ``problem.features`` — HAQ's are, in order,
  ``c_in, c_out, stride, kernel, #params, input h·w, depthwise`` and a producer that follows
  that convention gives exactly HAQ's state. Without features, the layer's cost of its safest
  choice per cost objective stands in (what the hardware sees of the layer).
* **Error** comes from the evaluator (memoized: a policy seen before costs nothing), not from
  fine-tuning. Default 150 episodes rather than HAQ's 600, since each is an exact evaluation.
* **Three defaults differ from HAQ's code, on measurement** (bench/RESULTS.md §3b). With 150
  episodes on a 10-layer problem the agent makes ~2 600 updates, not HAQ's ~58 000 (600
  episodes × ~100 steps), and HAQ's settings (γ = 1, actor lr 1e-4) did no better than random
  actions under the same limiting. γ = 1 bootstraps every step's value through up to 2L
  target-network steps although the episode's reward is already on every transition; γ = 0
  makes the critic regress that reward directly, and with actor lr 1e-3 the agent beats random
  actions. HAQ's 2×300 networks do not (plausibly too many weights for ~2 600 updates), so the
  default width is 64.
  Set ``discount=1, lr_actor=1e-4, hidden=300`` for HAQ's exact configuration.

The result's front is the Pareto set of every evaluated policy (plus the uniform reference
points); ``chosen`` is the evaluated policy with the lowest error (ties: lower cost).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

try:  # tiny matrices: a multi-threaded BLAS only adds contention (bench/RESULTS.md §3b)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - only a speed-up
    threadpool_limits = None

from mpqc.search._ddpg import DDPGAgent, DDPGSettings, ReplayBuffer, truncated_normal_action
from mpqc.search.evaluate import Evaluator, evaluate_points, evaluate_uniform
from mpqc.search.pareto import Point, SearchResult, make_result
from mpqc.search.problem import Config, Problem, SearchError

__all__ = ["Options", "search", "ActionSpace", "decode_actions", "limit_to_budget"]

NAME = "haq"
_WEIGHT, _ACTIVATION = 0, 1


@dataclass(frozen=True)
class Options:
    """HAQ's knobs; defaults are the released code's unless noted."""

    episodes: int = field(
        default=150,
        metadata={
            "help": "Episodes, one exact evaluation each at most (mpqc default; HAQ ran 600)."
        },
    )
    warmup: int = field(
        default=20,
        metadata={
            "help": "Leading episodes of uniform random actions that only fill the replay buffer."
        },
    )
    hidden: int = field(
        default=64,
        metadata={"help": "Width of both hidden layers of the actor and the critic (HAQ: 300)."},
    )
    lr_actor: float = field(
        default=1e-3,
        metadata={"help": "Adam learning rate of the actor (HAQ: 1e-4; see the module docstring)."},
    )
    lr_critic: float = field(default=1e-3, metadata={"help": "Adam learning rate of the critic."})
    batch_size: int = field(default=64, metadata={"help": "Transitions per DDPG update."})
    replay_per_layer: int = field(
        default=128, metadata={"help": "Replay capacity per layer (HAQ: 128 × #layers)."}
    )
    noise_sigma: float = field(
        default=0.5, metadata={"help": "Initial σ of the truncated-normal exploration noise."}
    )
    noise_decay: float = field(
        default=0.99, metadata={"help": "σ is multiplied by this every episode after warm-up."}
    )
    tau: float = field(default=0.01, metadata={"help": "Soft target-update rate."})
    discount: float = field(
        default=0.0,
        metadata={"help": "γ (HAQ: 1); the episode's reward is given to every transition."},
    )
    baseline_alpha: float = field(
        default=0.5, metadata={"help": "Rate of the moving-average reward baseline."}
    )
    reward_scale: float = field(default=0.1, metadata={"help": "R = −reward_scale · error."})
    pin_first_last: bool = field(
        default=True,
        metadata={
            "help": (
                "Keep the first and last layers at their safest choice (HAQ pins them at 8 bit)."
            )
        },
    )

    def __post_init__(self) -> None:
        if self.episodes < 1 or not 0 <= self.warmup:
            raise SearchError("haq needs episodes >= 1 and warmup >= 0")
        if self.hidden < 1 or self.batch_size < 1 or self.replay_per_layer < 1:
            raise SearchError("haq needs hidden, batch_size and replay_per_layer >= 1")


class ActionSpace:
    """One tie class's candidates seen as two sorted operand lists (weights, activations)."""

    def __init__(self, pairs: tuple[tuple[int, int], ...]) -> None:
        self.pairs = pairs
        self.values = (sorted({p[0] for p in pairs}), sorted({p[1] for p in pairs}))
        # rank[k] = (position of pair k's wbits, position of its abits) in the sorted lists.
        self.rank = np.array(
            [[self.values[0].index(p[0]), self.values[1].index(p[1])] for p in pairs]
        )

    def bin(self, operand: int, action: float) -> int:
        """Position in the operand's sorted list selected by ``action`` ∈ [0, 1] (equal bins)."""
        n = len(self.values[operand])
        return min(int(action * n), n - 1)

    def decode(self, weight_action: float, activation_action: float) -> int:
        """Choice index of the pair the two actions select, or of the nearest candidate."""
        want = np.array(
            [self.bin(_WEIGHT, weight_action), self.bin(_ACTIVATION, activation_action)]
        )
        distance = np.abs(self.rank - want).sum(axis=1)
        return int(np.flatnonzero(distance == distance.min())[0])  # lowest index = safest

    def lower(self, choice: int, operand: int, pressure: np.ndarray) -> int | None:
        """One step down in ``operand`` that strictly lowers ``pressure``, or None.

        HAQ's step: the highest candidate strictly lower in ``operand`` and not higher in the
        other operand. When the candidate list has no such pair (``{w2a8, w4a4}``: from w4a4
        the only lower weight is w2a8), a pair higher in the other operand is taken instead.
        Every step must lower the class's share of the constrained costs (``pressure``), so
        limiting terminates even on cost tables that are not monotone in bits.
        """
        other = 1 - operand
        here = self.rank[choice]
        ok = (self.rank[:, operand] < here[operand]) & (pressure < pressure[choice])
        if not ok.any():
            return None
        candidates = np.flatnonzero(ok)
        return int(
            max(
                candidates,
                key=lambda k: (
                    self.rank[k, other] <= here[other],
                    self.rank[k, operand],
                    self.rank[k, other],
                    -k,
                ),
            )
        )


def _pinned_classes(problem: Problem, pin_first_last: bool) -> set[int]:
    if not pin_first_last:
        return set()
    ends = {0, problem.n_layers - 1}
    return {c for c, members in enumerate(problem.tie_classes) if ends & set(members)}


def decode_actions(spaces: list[ActionSpace], actions: np.ndarray, pinned: set[int]) -> np.ndarray:
    """Per tie class choice from ``actions`` of shape ``(G, 2)``; pinned classes take index 0."""
    return np.array(
        [0 if c in pinned else space.decode(*actions[c]) for c, space in enumerate(spaces)],
        dtype=np.int64,
    )


def _class_pressure(problem: Problem) -> np.ndarray:
    """``(G, Kmax)``: each tie class's constrained costs per candidate, each cost over its limit,
    summed — the potential that every limiting step must lower."""
    pressure = sum(
        problem.cost_table(name) / max(abs(limit), 1e-300)
        for name, limit in problem.constraints.items()
    )
    pressure = np.broadcast_to(pressure, (problem.n_layers, int(problem.n_choices.max())))
    return np.stack([pressure[list(members)].sum(axis=0) for members in problem.tie_classes])


def limit_to_budget(
    problem: Problem, spaces: list[ActionSpace], genes: np.ndarray, pinned: set[int]
) -> Config:
    """HAQ's action-space limiting on tie-class genes; returns the configuration.

    Sweeps unpinned classes last→first (by their first layer), each time lowering the
    activation then the weight by one step, until every constraint holds. Pinned classes are
    lowered only if the unpinned ones reach the bottom first.
    """
    genes = genes.copy()
    pressure = _class_pressure(problem)

    def over() -> bool:
        return not problem.feasible(problem.expand(genes))

    order = sorted(range(len(spaces)), key=lambda c: problem.tie_classes[c][0], reverse=True)
    for allowed in ([c for c in order if c not in pinned], order):
        while over():
            moved = False
            for c in allowed:
                for operand in (_ACTIVATION, _WEIGHT):
                    lower = spaces[c].lower(int(genes[c]), operand, pressure[c])
                    if lower is None:
                        continue
                    genes[c], moved = lower, True
                    if not over():
                        return problem.expand(genes)
            if not moved:
                break
    if over():
        raise SearchError(
            "haq: no sequence of lower-bit steps meets the constraints "
            f"{dict(problem.constraints)} (costs that do not fall with bits?); use the ilp or "
            "nsga2 strategy"
        )
    return problem.expand(genes)


def _layer_descriptors(problem: Problem) -> np.ndarray:
    """``(L, D)`` per-layer columns of the state (see the module docstring)."""
    if problem.features is not None and problem.features.shape[1] > 0:
        return np.asarray(problem.features, dtype=float)
    return np.stack([problem.cost_table(name)[:, 0] for name in problem.cost_names], axis=1)


def _state_table(problem: Problem) -> np.ndarray:
    """``(2G, D + 3)`` states without the previous action (filled in while acting).

    Rows alternate weight / activation step per tie class; columns are index, descriptors,
    w/a flag, previous action; all min-max normalized over the rows.
    """
    firsts = [members[0] for members in problem.tie_classes]
    descriptors = _layer_descriptors(problem)[firsts]
    rows = []
    for step in range(len(firsts)):
        for flag in (0.0, 1.0):
            rows.append([float(step), *descriptors[step], flag, 0.0])
    table = np.array(rows)
    lo, span = table.min(axis=0), np.ptp(table, axis=0)
    return np.where(span > 0, (table - lo) / np.where(span > 0, span, 1.0), 0.0)


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """Run HAQ for ``options.episodes`` episodes; see the module docstring."""
    problem.check_feasible()
    spaces = [ActionSpace(problem.choices[members[0]]) for members in problem.tie_classes]
    pinned = _pinned_classes(problem, options.pin_first_last)
    states = _state_table(problem)
    n_steps = len(states)
    agent = DDPGAgent(
        states.shape[1],
        DDPGSettings(
            hidden=options.hidden,
            lr_actor=options.lr_actor,
            lr_critic=options.lr_critic,
            batch_size=options.batch_size,
            tau=options.tau,
            discount=options.discount,
            baseline_alpha=options.baseline_alpha,
        ),
        rng,
    )
    replay = ReplayBuffer(options.replay_per_layer * len(spaces), states.shape[1])

    evaluated: dict[tuple[int, ...], Point] = {}
    single_thread = (
        threadpool_limits(1, user_api="blas")
        if threadpool_limits is not None
        else contextlib.nullcontext()
    )
    with single_thread:
        for episode in range(options.episodes):
            sigma = options.noise_sigma * options.noise_decay ** max(episode - options.warmup, 0)
            observed = states.copy()
            actions = np.empty(n_steps)
            previous = 0.0
            for step in range(n_steps):
                observed[step, -1] = previous
                if episode < options.warmup:
                    action = float(rng.uniform())
                else:
                    action = truncated_normal_action(agent.act(observed[step]), sigma, rng)
                actions[step] = previous = action
            genes = decode_actions(spaces, actions.reshape(-1, 2), pinned)
            config = limit_to_budget(problem, spaces, genes, pinned)
            point = evaluate_points(problem, evaluator, [config])[0]
            evaluated.setdefault(point.config, point)
            error = evaluator(config)  # memoized: no second call
            if not np.isfinite(error):
                continue  # a broken model (NaN -> inf error): nothing a critic can regress on
            reward = -options.reward_scale * error
            for step in range(n_steps):
                last = step == n_steps - 1
                replay.add(
                    observed[step],
                    actions[step],
                    reward,
                    observed[step] if last else observed[step + 1],
                    last,
                )
            if episode >= options.warmup:
                for _ in range(n_steps):
                    agent.update(replay)

    uniform = evaluate_uniform(problem, evaluator)
    return make_result(
        NAME,
        problem,
        evaluated.values(),
        uniform,
        evaluator.calls,
        notes=(f"{options.episodes} episodes, {len(evaluated)} distinct policies",),
    )
