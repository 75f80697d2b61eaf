"""Coverage after the seeds (tuner.study._coverage): unseen values, and carrying a winner,
decided from the stored trials alone."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, create_trial

from tuner.config import load_space
from tuner.config.space import ParamValue, SearchSpace
from tuner.study._coverage import Coverage
from tuner.study.propose import Snapshot

SPACE = """\
name: tiny
dimensions:
  gpu_memory_utilization: {values: [0.9, 0.95], flag: --gpu-memory-utilization}
  enable_prefix_caching: {values: [false, true], flag: --enable-prefix-caching,
                          negative_flag: --no-enable-prefix-caching}
  enable_chunked_prefill: {values: [false, true], flag: --enable-chunked-prefill,
                           negative_flag: --no-enable-chunked-prefill}
  max_num_batched_tokens: {values: [null, 8192], flag: --max-num-batched-tokens}
"""


class Measured:
    """A study of constructed trials (HIT, VRAM), the points evaluated, the valid points: a
    token budget needs chunked prefill (max_model_len above it)."""

    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "space.yaml").write_text(SPACE)
        self.space: SearchSpace = load_space(tmp_path / "space.yaml")
        self.valid = {
            self.space.key(p): p
            for p in self.space.points()
            if p["enable_chunked_prefill"] or p["max_num_batched_tokens"] is None
        }
        self.dists = {
            d.name: CategoricalDistribution(list(d.values)) for d in self.space.dimensions
        }
        self.study = optuna.create_study(directions=["minimize", "minimize"])
        self.evaluated: dict[str, FrozenTrial] = {}

    def add(
        self, memory: float, prefix: bool, chunked: bool, budget: int | None,
        values: tuple[float, float], **attrs: object,
    ) -> dict[str, ParamValue]:  # fmt: skip
        params: dict[str, ParamValue] = {
            "gpu_memory_utilization": memory,
            "enable_prefix_caching": prefix,
            "enable_chunked_prefill": chunked,
            "max_num_batched_tokens": budget,
        }
        t = create_trial(params=params, distributions=self.dists, values=list(values),
                         user_attrs={"deployed": True, **attrs})  # fmt: skip
        self.study.add_trial(t)
        self.evaluated[self.space.key(params)] = self.study.trials[-1]
        return params

    def next_point(self, cov: Coverage) -> tuple[dict[str, ParamValue], dict[str, object]] | None:
        return cov.next_point(self.study, Snapshot.read(self.study, self.space), self.valid)

    def turn(self, cov: Coverage) -> tuple[dict[str, ParamValue], dict[str, object]] | None:
        return cov.turn(self.study, Snapshot.read(self.study, self.space), self.valid)


def test_a_value_with_no_valid_base_yet_is_tried_once_one_appears(tmp_path: Path) -> None:
    """A token budget is valid only with chunked prefill on. While the front holds only
    chunked-off points there is nowhere to try it; it must not be given up then, but tried
    once a chunked-on point reaches the front."""
    m = Measured(tmp_path)
    cov = Coverage(m.space)
    # Every value seen but the budget's; the chunked-on point is dominated: the front is off.
    m.add(0.9, False, False, None, (1.0, 1.0))
    m.add(0.95, False, True, None, (2.0, 2.0))
    m.add(0.9, True, False, None, (3.0, 3.0))
    assert m.next_point(cov) is None  # nowhere valid to try 8192 yet
    base = m.add(0.95, True, True, None, (0.5, 0.5))  # a chunked-on point takes the front
    nxt = m.next_point(cov)
    assert nxt is not None
    assert nxt[0] == {**base, "max_num_batched_tokens": 8192}
    assert nxt[1] == {"coverage": ["max_num_batched_tokens", "8192"]}


def test_a_winning_value_goes_first_where_the_front_gains_most(tmp_path: Path) -> None:
    """The 8192-token budget halved HIT at memory 0.95. Carried to the front point farthest
    away (prefix caching off: the slowest, and the least memory) it would gain little; carried
    to the point at memory 0.90, whose chunked prefill is off, it needs chunked prefill on too,
    and would gain most: that point, two flags away, goes first (farthest-first never took it:
    its one-flag change is invalid)."""
    m = Measured(tmp_path)
    cov = Coverage(m.space)
    m.add(0.95, True, True, None, (100.0, 47.0))  # where the winning try came from
    m.add(0.95, True, True, 8192, (50.0, 47.0), coverage=["max_num_batched_tokens", "8192"])
    low = m.add(0.9, True, False, None, (200.0, 44.0))
    m.add(0.95, False, True, None, (400.0, 43.9))  # the farthest front point from the winner
    nxt = m.next_point(cov)
    assert nxt is not None
    assert nxt[1] == {"carries": ["max_num_batched_tokens", "8192"]}
    assert nxt[0] == {**low, "enable_chunked_prefill": True, "max_num_batched_tokens": 8192}
    # Another worker asks while that carry is queued or running: the next best, never the same
    # point twice (what coverage proposed is read from storage, not this process's memory).
    m.study.enqueue_trial(nxt[0], user_attrs=nxt[1])
    again = m.next_point(Coverage(m.space))
    assert again is not None
    assert again[1] == {"carries": ["max_num_batched_tokens", "8192"]}
    assert again[0] != nxt[0]


@pytest.mark.parametrize("hit", [0.0, -5.0])
def test_an_objective_at_or_below_zero_is_shifted_not_scaled(tmp_path: Path, hit: float) -> None:
    """No ratio through zero: the prediction shifts such an objective, and still carries."""
    m = Measured(tmp_path)
    cov = Coverage(m.space)
    m.add(0.95, True, True, None, (hit + 10.0, 47.0))
    m.add(0.95, True, True, 8192, (hit, 47.0), coverage=["max_num_batched_tokens", "8192"])
    m.add(0.9, True, True, None, (hit + 20.0, 44.0))
    nxt = m.next_point(cov)
    assert nxt is not None
    assert nxt[0]["max_num_batched_tokens"] == 8192


def test_clear_news_keeps_the_turn_and_anything_else_hands_it_back(tmp_path: Path) -> None:
    """Coverage alternates with the sampler, except after clear news: an unseen value that
    became the best on the first objective (carried at once), a carry that landed on the
    front (the next carry follows)."""
    m = Measured(tmp_path)
    cov = Coverage(m.space)
    budget = ["max_num_batched_tokens", "8192"]
    m.add(0.95, True, True, None, (100.0, 47.0))
    m.add(0.9, True, False, None, (200.0, 44.0))
    m.add(0.95, True, True, 8192, (50.0, 47.0), coverage=budget)  # the new best HIT
    assert cov.keeps_turn(m.study, m.study.trials[-1])
    m.add(0.9, True, True, 8192, (120.0, 43.0), carries=budget)  # on the front: least memory
    assert cov.keeps_turn(m.study, m.study.trials[-1])
    m.add(0.9, False, True, 8192, (300.0, 45.0), carries=budget)  # dominated: missed
    assert not cov.keeps_turn(m.study, m.study.trials[-1])
    # On the front (the least memory) but not the best HIT: maybe noise, the sampler's turn.
    m.add(0.9, False, False, None, (500.0, 40.0), coverage=["enable_prefix_caching", "false"])
    assert m.study.trials[-1].number in {t.number for t in m.study.best_trials}
    assert not cov.keeps_turn(m.study, m.study.trials[-1])


def test_after_clear_news_the_turn_is_a_carry_and_after_other_news_the_samplers(
    tmp_path: Path,
) -> None:
    """``turn``: after a sampler trial, coverage proposes; after a try that became the best, the
    winner is carried at once; after a try that did not, the sampler's turn (None)."""
    m = Measured(tmp_path)
    cov = Coverage(m.space)
    m.add(0.95, True, True, None, (100.0, 47.0))
    m.add(0.9, True, False, None, (200.0, 44.0))
    first = m.turn(cov)  # after a seed
    assert first is not None
    assert "coverage" in first[1]
    m.add(0.95, True, True, 8192, (50.0, 47.0), coverage=["max_num_batched_tokens", "8192"])
    carry = m.turn(cov)
    assert carry is not None
    assert carry[1] == {"carries": ["max_num_batched_tokens", "8192"]}
    # A try on the front (the least memory) but not the best on HIT: maybe noise.
    m.add(0.9, False, True, None, (400.0, 43.0), coverage=["enable_prefix_caching", "false"])
    assert m.turn(cov) is None


def test_a_value_tried_by_another_worker_is_not_tried_again(tmp_path: Path) -> None:
    """An unseen value's first try, queued or running on another worker, counts as tried: a
    second worker gets the next unseen value, not the same try (the race that once failed
    two of three workers' trials as 'taken')."""
    m = Measured(tmp_path)
    m.add(0.95, True, True, None, (100.0, 47.0))
    first = m.next_point(Coverage(m.space))
    assert first is not None
    m.study.enqueue_trial(first[0], user_attrs=first[1])  # the other worker's trial
    second = m.next_point(Coverage(m.space))
    assert second is not None
    assert second[1]["coverage"] != first[1]["coverage"]
    assert second[0] != first[0]
