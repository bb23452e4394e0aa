"""The biometric metrics against distributions with known answers."""

from __future__ import annotations

from math import erf, sqrt
from statistics import NormalDist

import numpy as np
import pytest

from evaluation.metrics import (
    ByPerson,
    best_accuracy,
    bootstrap_interval,
    equal_error_rate,
    error_rates,
    protection_success_rate,
    rank_one_rate,
    roc_auc,
    threshold_at_fmr,
    unlinkability,
)

N = 200_000
SHIFT = 2.0  # genuine ~ N(2, 1), impostor ~ N(0, 1)


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(SHIFT, 1.0, N), rng.normal(0.0, 1.0, N)


def phi(x: float) -> float:
    return 0.5 * (1 + erf(x / sqrt(2)))


def test_auc_and_eer_of_two_gaussians(scores: tuple[np.ndarray, np.ndarray]) -> None:
    genuine, impostor = scores
    assert abs(roc_auc(genuine, impostor) - phi(SHIFT / sqrt(2))) < 0.002
    eer, threshold = equal_error_rate(genuine, impostor)
    assert abs(eer - phi(-SHIFT / 2)) < 0.002 and abs(threshold - SHIFT / 2) < 0.02
    accuracy, best = best_accuracy(genuine, impostor)
    assert abs(accuracy - phi(SHIFT / 2)) < 0.002 and abs(best - SHIFT / 2) < 0.05


def test_error_rates_and_thresholds_at_a_false_match_rate(scores: tuple[np.ndarray, np.ndarray]) -> None:
    genuine, impostor = scores
    for fmr in (1e-2, 1e-3, 1e-4):
        t = threshold_at_fmr(impostor, fmr)
        assert t is not None and abs(t - NormalDist().inv_cdf(1 - fmr)) < 0.1
        measured_fmr, fnmr = error_rates(genuine, impostor, np.array([t]))
        assert abs(measured_fmr[0] - fmr) < 0.2 * fmr + 1 / N
        assert abs(fnmr[0] - phi(t - SHIFT)) < 0.01
    assert threshold_at_fmr(impostor, 1e-6) is None  # 200 000 impostor scores cannot show 1e-6


def test_exact_small_cases() -> None:
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert roc_auc([1.0], [1.0]) == 0.5  # ties count one half
    assert equal_error_rate([2.0, 3.0], [0.0, 1.0])[0] == 0.0
    fmr, fnmr = error_rates([0.5, 0.9], [0.1, 0.6], np.array([0.6]))
    assert fmr[0] == 0.5 and fnmr[0] == 0.5
    assert protection_success_rate(np.array([0.1, 0.2, 0.7, 0.9]), 0.5) == 0.5
    with pytest.raises(ValueError, match="at least one genuine"):
        roc_auc([], [1.0])


def test_unlinkability_spans_zero_to_one() -> None:
    rng = np.random.default_rng(1)
    same = unlinkability(rng.normal(0, 1, N), rng.normal(0, 1, N))
    assert same.system < 0.05
    apart = unlinkability(rng.normal(10, 1, N), rng.normal(0, 1, N))
    assert apart.system > 0.95
    partly = unlinkability(rng.normal(1, 1, N), rng.normal(0, 1, N))
    assert 0.2 < partly.system < 0.6 and partly.local.min() >= 0 and partly.local.max() <= 1
    assert abs(np.trapz(partly.mated_density, partly.bin_centres) - 1) < 0.05
    prior = unlinkability(rng.normal(1, 1, N), rng.normal(0, 1, N), omega=0.1)
    assert prior.system < partly.system  # a rarer mated prior means less linkability


def test_rank_one_counts_a_tie_as_a_miss() -> None:
    scores = np.array([[0.9, 0.1, 0.2], [0.5, 0.4, 0.1], [0.3, 0.3, 0.0]])
    assert rank_one_rate(scores, np.array([0, 1, 1])) == 1 / 3  # right, beaten, tied


def test_scores_grouped_by_person_resample_people() -> None:
    people = ["a", "a", "b", "c"]
    scores = np.arange(16, dtype=float).reshape(4, 4)
    grouped = ByPerson.pairs(scores, people, people, one_set=True)
    assert grouped.own["a"].tolist() == [1.0]  # photos 0 and 1, once
    assert sorted(grouped.between) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert grouped.between[("a", "b")].tolist() == [2.0, 6.0] and grouped.between[("b", "c")].tolist() == [11.0]
    assert sum(map(len, grouped.all())) == 6  # every pair of four photos, once
    own, between = grouped.draw(["a", "a", "c"])  # a drawn twice: twice its own pairs, never paired with itself
    assert own.tolist() == [1.0, 1.0] and sorted(between.tolist()) == [3.0, 3.0, 7.0, 7.0]
    across = ByPerson.pairs(scores, people, people, one_set=False)  # two sets: (i, j) and (j, i) both count
    assert sorted(across.own["a"].tolist()) == [0.0, 1.0, 4.0, 5.0] and len(across.between[("a", "b")]) == 4


def test_bootstrap_interval_of_a_mean_has_the_textbook_width() -> None:
    rng = np.random.default_rng(2)
    people = [f"p{i:03d}" for i in range(400)]
    values = ByPerson.per_item(rng.normal(0.0, 1.0, len(people)), people)

    def mean(sample: list[str]) -> float:
        return float(values.draw(sample)[0].mean())

    low, high = bootstrap_interval(mean, people, replicates=2000)
    assert low < 0 < high  # the true mean
    assert abs((high - low) - 2 * 1.96 / np.sqrt(len(people))) < 0.03
    # a statistic that cannot be measured in most samples has no interval
    assert bootstrap_interval(lambda sample: None if sample[0] != "p000" else 0.0, people, replicates=100) is None
