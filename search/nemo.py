"""NEMO: species-based neuroevolution for multi-objective bit-width search (METHODS.md §6).

Miret et al., "Neuroevolution-Enhanced Multi-Objective Optimization for Mixed-Precision
Quantization", GECCO 2022. One population, split into structurally different *species*, each
with its own genome and operators:

* ``direct`` — one gene per tie class (a choice index), NSGA-II-style operators: binary
  tournament on constrained rank and crowding, uniform crossover, random-reset mutation. The
  uniform reference configurations (METHODS §8) are seeded into it.
* ``gnn`` — the genome is the flat weight vector of a graph network (`mpqc.search._gnn`) that
  reads the problem's layer graph and scores every candidate of every layer; the argmax is the
  choice. Weights are evolved, never trained: Gaussian mutation (σ = 0.05 on 10% of weights)
  and uniform crossover between two parents of the species.

Every generation all individuals are scored on ``problem.objectives`` (the error through the
memoized evaluator, so a configuration reached by both species costs one evaluation), the
non-dominated front of the union is taken under *constrained domination* (a feasible point
beats an infeasible one; infeasible points compare by total relative violation), and each
species is resized in proportion to its share of that front, with a floor of 10% of the
population so no species dies out; the total stays fixed. Each species then breeds as many
children as its new size and keeps the best of parents and children (NSGA-II survival).

The result's front is that of every configuration evaluated during the run (plus the uniform
points): the run's memory, not only its last generation. `Evolution.best_policy` returns the
best evolved graph policy, which `GraphPolicyGenome.apply` runs on another problem of the same
family — the transfer the direct encoding cannot do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from mpqc.search._gnn import GraphEncoding, GraphPolicy, encode_problem
from mpqc.search.evaluate import Evaluator, evaluate_points, evaluate_uniform
from mpqc.search.pareto import Point, SearchResult, make_result, sort_points
from mpqc.search.problem import ERROR, Config, Problem, SearchError

__all__ = ["DIRECT", "GNN", "Evolution", "GraphPolicyGenome", "Options", "search", "species_sizes"]

NAME = "nemo"
DIRECT, GNN = "direct", "gnn"


@dataclass(frozen=True)
class Options:
    """NEMO's knobs; defaults from METHODS.md §6 (mpqc choices where the paper gives none)."""

    population: int = field(
        default=48, metadata={"help": "Individuals over all species; preserved by resizing."}
    )
    generations: int = field(
        default=25,
        metadata={
            "help": "Generations after the initial one (each breeds ``population`` children)."
        },
    )
    max_evaluations: int | None = field(
        default=None,
        metadata={
            "help": "Stop before a generation once the evaluator has made this many exact calls."
        },
    )
    species_floor: float = field(
        default=0.1,
        metadata={
            "help": "Every species keeps at least this fraction of the population (rounded up)."
        },
    )
    crossover_rate: float = field(
        default=0.9,
        metadata={
            "help": "Probability that a child is a uniform crossover of two parents (else a copy)."
        },
    )
    gene_mutation_rate: float | None = field(
        default=None,
        metadata={
            "help": "Direct species: per-gene reset probability; default 1 / number of genes."
        },
    )
    weight_mutation_sigma: float = field(
        default=0.05, metadata={"help": "GNN species: σ of the Gaussian added to mutated weights."}
    )
    weight_mutation_fraction: float = field(
        default=0.1, metadata={"help": "GNN species: fraction of weights mutated per child."}
    )
    hidden: int = field(default=32, metadata={"help": "GNN hidden width."})
    rounds: int = field(
        default=2, metadata={"help": "GNN message-passing rounds (mean aggregation, tanh)."}
    )

    def __post_init__(self) -> None:
        if self.population < 2 or self.generations < 0:
            raise SearchError("nemo needs population >= 2 and generations >= 0")
        if not 0 < self.species_floor * 2 <= 1:
            raise SearchError("nemo's species_floor must lie in (0, 0.5] for two species")


# ----------------------------------------------------------------------------- resizing
def species_sizes(front_counts: Sequence[int], population: int, floor: int) -> list[int]:
    """Seats per species, proportional to ``front_counts``, at least ``floor`` each, summing
    to ``population``.

    Water-filling: species whose proportional share falls below the floor are fixed at the
    floor and the rest share the remaining seats; fractional seats go by largest remainder
    (ties to the earlier species), so the answer is deterministic.
    """
    n = len(front_counts)
    if floor * n > population:
        raise SearchError(f"{n} species with a floor of {floor} do not fit in {population}")
    counts = np.asarray(front_counts, dtype=float)
    if counts.sum() <= 0:
        counts = np.ones(n)
    fixed = np.zeros(n, dtype=bool)
    while True:
        seats = population - floor * fixed.sum()
        free_total = counts[~fixed].sum()
        ideal = np.where(fixed, floor, seats * counts / free_total if free_total > 0 else 0.0)
        low = ~fixed & (ideal < floor)
        if not low.any():
            break
        fixed |= low  # never all: the free shares sum to seats >= floor * (free species)
    sizes = np.floor(ideal).astype(int)
    remainder = ideal - sizes
    for i in sorted(range(n), key=lambda i: (-remainder[i], i))[: population - sizes.sum()]:
        sizes[i] += 1
    return sizes.tolist()


# ----------------------------------------------------------------------------- ranking
def _violation(problem: Problem, config: Config) -> float:
    """Total relative excess over the constraints (0 = feasible)."""
    return sum(
        over / max(abs(problem.constraints[obj]), 1e-300)
        for obj, over in problem.violations(config).items()
    )


def _rank_order(objectives: np.ndarray, violation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best-first order under constrained domination, and each individual's front rank.

    Feasible individuals by non-dominated front, then by crowding distance (larger first);
    infeasible ones after all feasible ones, by violation. Ties keep the input order.
    """
    n = len(violation)
    rank = np.empty(n, dtype=np.int64)
    order: list[int] = []
    feasible = np.flatnonzero(violation == 0)
    if len(feasible):
        fronts = NonDominatedSorting().do(objectives[feasible])
        for depth, front in enumerate(fronts):
            members = feasible[np.sort(front)]
            crowd = (
                calc_crowding_distance(objectives[members])
                if len(members) > 2
                else np.full(len(members), np.inf)
            )
            members = members[np.lexsort((members, -crowd))]
            rank[members] = depth
            order.extend(members.tolist())
    infeasible = np.flatnonzero(violation > 0)
    infeasible = infeasible[np.lexsort((infeasible, violation[infeasible]))]
    base = rank[feasible].max() + 1 if len(feasible) else 0
    # Infeasible individuals: each distinct violation level is its own front.
    levels = np.unique(violation[infeasible], return_inverse=True)[1] if len(infeasible) else []
    rank[infeasible] = base + np.asarray(levels, dtype=np.int64)
    order.extend(infeasible.tolist())
    return np.asarray(order, dtype=np.int64), rank


# ----------------------------------------------------------------------------- species
@dataclass
class Individual:
    """One member of a species: its genome, what it decodes to, and how that scored."""

    genome: np.ndarray
    config: Config
    point: Point
    violation: float


class _DirectSpecies:
    """One choice gene per tie class; GA operators."""

    name = DIRECT

    def __init__(self, problem: Problem, options: Options) -> None:
        self.problem = problem
        self.n_choices = problem.class_choices
        self.mutation_rate = options.gene_mutation_rate or 1.0 / len(self.n_choices)
        self.crossover_rate = options.crossover_rate

    def initial(self, size: int, rng: np.random.Generator) -> list[np.ndarray]:
        seeds = [self.problem.compress(c) for c in self.problem.uniform_configs().values()]
        randoms = [rng.integers(0, self.n_choices) for _ in range(max(size - len(seeds), 0))]
        return [np.asarray(g, dtype=np.int64) for g in (seeds + randoms)[:size]]

    def decode(self, genome: np.ndarray) -> Config:
        return self.problem.expand(genome)

    def child(self, mother: np.ndarray, father: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        genes = mother.copy()
        if rng.uniform() < self.crossover_rate:
            take = rng.uniform(size=len(genes)) < 0.5
            genes[take] = father[take]
        mutate = rng.uniform(size=len(genes)) < self.mutation_rate
        if mutate.any():
            # Reset to a different choice: draw among the K-1 others.
            shift = rng.integers(1, np.maximum(self.n_choices[mutate], 2))
            genes[mutate] = (genes[mutate] + shift) % self.n_choices[mutate]
        return genes


@dataclass(frozen=True)
class GraphPolicyGenome:
    """An evolved graph policy: the architecture and its weights. Applies to any problem
    whose encoding has the same widths (same feature columns and cost objectives)."""

    policy: GraphPolicy
    genome: np.ndarray = field(repr=False)

    def apply(self, problem: Problem) -> Config:
        """The configuration this policy picks for ``problem``, with no further evolution."""
        return self.policy.decide(self.genome, encode_problem(problem))


class _GraphSpecies:
    """Genome = GNN weights; neuroevolution operators."""

    name = GNN

    def __init__(self, problem: Problem, options: Options) -> None:
        self.encoding: GraphEncoding = encode_problem(problem)
        self.policy = GraphPolicy.for_encoding(self.encoding, options.hidden, options.rounds)
        self.crossover_rate = options.crossover_rate
        self.sigma = options.weight_mutation_sigma
        self.fraction = options.weight_mutation_fraction

    def initial(self, size: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [self.policy.initial_genome(rng) for _ in range(size)]

    def decode(self, genome: np.ndarray) -> Config:
        return self.policy.decide(genome, self.encoding)

    def child(self, mother: np.ndarray, father: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        weights = mother.copy()
        if rng.uniform() < self.crossover_rate:
            take = rng.uniform(size=len(weights)) < 0.5
            weights[take] = father[take]
        mutate = rng.uniform(size=len(weights)) < self.fraction
        weights[mutate] += rng.normal(0.0, self.sigma, size=int(mutate.sum()))
        return weights


# ----------------------------------------------------------------------------- the loop
class Evolution:
    """The NEMO population and its generation step (exposed for tests and transfer)."""

    def __init__(
        self, problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
    ) -> None:
        self.problem = problem
        self.evaluator = evaluator
        self.options = options
        self.rng = rng
        self.species = (_DirectSpecies(problem, options), _GraphSpecies(problem, options))
        self.floor = max(1, math.ceil(options.species_floor * options.population))
        self.archive: dict[tuple[int, ...], Point] = {}
        self.members: dict[str, list[Individual]] = {}
        self.generation = 0

    # -- scoring
    def _score(self, species, genomes: list[np.ndarray]) -> list[Individual]:
        configs = [species.decode(g) for g in genomes]
        points = evaluate_points(self.problem, self.evaluator, configs)
        for point in points:
            self.archive.setdefault(point.config, point)
        return [
            Individual(g, c, p, _violation(self.problem, c))
            for g, c, p in zip(genomes, configs, points, strict=True)
        ]

    def _matrix(self, individuals: Sequence[Individual]) -> tuple[np.ndarray, np.ndarray]:
        objectives = np.array(
            [i.point.vector(self.problem.objectives) for i in individuals], dtype=float
        ).reshape(len(individuals), len(self.problem.objectives))
        return objectives, np.array([i.violation for i in individuals], dtype=float)

    def start(self, genomes: dict[str, list[np.ndarray]] | None = None) -> None:
        """Score the initial population: equal species sizes, or the given genomes."""
        if genomes is None:
            sizes = species_sizes([1] * len(self.species), self.options.population, self.floor)
            genomes = {
                s.name: s.initial(n, self.rng) for s, n in zip(self.species, sizes, strict=True)
            }
        self.members = {s.name: self._score(s, list(genomes[s.name])) for s in self.species}

    # -- resizing
    def front_counts(self) -> dict[str, int]:
        """Per species, how many distinct configurations it has on the union's front."""
        union = [(s.name, ind) for s in self.species for ind in self.members[s.name]]
        objectives, violation = self._matrix([ind for _, ind in union])
        _, rank = _rank_order(objectives, violation)
        on_front = {
            (name, ind.point.config) for (name, ind), r in zip(union, rank, strict=True) if r == 0
        }
        return {s.name: sum(1 for name, _ in on_front if name == s.name) for s in self.species}

    def sizes(self) -> dict[str, int]:
        return {name: len(members) for name, members in self.members.items()}

    # -- one generation
    def _select_order(self, individuals: list[Individual]) -> np.ndarray:
        """Best-first, and a configuration's repeats after every first occurrence."""
        order, _ = _rank_order(*self._matrix(individuals))
        seen: set[tuple[int, ...]] = set()
        firsts, repeats = [], []
        for i in order:
            config = individuals[i].point.config
            (repeats if config in seen else firsts).append(i)
            seen.add(config)
        return np.asarray(firsts + repeats, dtype=np.int64)

    def _tournament(self, position: np.ndarray) -> int:
        a, b = self.rng.integers(0, len(position), size=2)
        return int(a if position[a] <= position[b] else b)

    def step(self) -> None:
        """Resize the species by their front shares, breed, and keep the best of each."""
        counts = self.front_counts()
        new_sizes = species_sizes(
            [counts[s.name] for s in self.species], self.options.population, self.floor
        )
        for species, size in zip(self.species, new_sizes, strict=True):
            parents = self.members[species.name]
            position = np.empty(len(parents), dtype=np.int64)
            position[self._select_order(parents)] = np.arange(len(parents))
            children = [
                species.child(
                    parents[self._tournament(position)].genome,
                    parents[self._tournament(position)].genome,
                    self.rng,
                )
                for _ in range(size)
            ]
            pool = parents + self._score(species, children)
            keep = self._select_order(pool)[:size]
            self.members[species.name] = [pool[i] for i in sorted(keep)]
        self.generation += 1

    def run(self) -> None:
        self.start()
        budget = self.options.max_evaluations
        for _ in range(self.options.generations):
            if budget is not None and self.evaluator.calls >= budget:
                break
            self.step()

    # -- results
    def best_policy(self) -> tuple[Point, GraphPolicyGenome]:
        """The GNN member whose configuration `choose` would pick among the GNN members:
        feasible (or least infeasible), lowest error, ties to lower cost, then configuration."""
        members = self.members[GNN]
        primary = ERROR if ERROR in self.problem.objectives else self.problem.objectives[0]
        order = (primary, *(o for o in self.problem.objectives if o != primary))
        best = min(members, key=lambda m: (m.violation, m.point.vector(order), m.point.config))
        return best.point, GraphPolicyGenome(self.species[1].policy, best.genome.copy())

    def points(self) -> tuple[Point, ...]:
        """Every configuration evaluated so far, sorted."""
        return sort_points(self.archive.values(), self.problem.objectives)


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """Run NEMO and return the front of everything it evaluated and the chosen point."""
    problem.check_feasible()
    evolution = Evolution(problem, evaluator, options, rng)
    evolution.run()
    uniform = evaluate_uniform(problem, evaluator)
    sizes = ", ".join(f"{name} {n}" for name, n in evolution.sizes().items())
    return make_result(
        NAME,
        problem,
        evolution.points(),
        uniform,
        evaluator.calls,
        notes=(f"{evolution.generation} generations; final species sizes: {sizes}",),
    )
