"""Biometric metrics over similarity scores (higher = more alike), as ISO/IEC 19795 and 24745
use them: verification error rates, thresholds at a false-match rate, protection success,
rank-1 identification, the unlinkability measures of Gomez-Barrero et al. (IEEE TIFS 2018), and
bootstrap intervals over people (scores grouped by the people they involve, :class:`ByPerson`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


def _scores(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, np.float64).ravel()
    if not len(array):
        raise ValueError(f"need at least one {what} score")
    return array


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random genuine score beats a random
    impostor score, ties counting one half (the Mann–Whitney U statistic)."""
    genuine, impostor = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    scores = np.concatenate([genuine, impostor])
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.bincount(inverse, weights=ranks) / counts  # tied scores share their mean rank
    u = mean_rank[inverse[: len(genuine)]].sum() - len(genuine) * (len(genuine) + 1) / 2
    return float(u / (len(genuine) * len(impostor)))


def error_rates(genuine: np.ndarray, impostor: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) at each threshold, a pair matching when its score is ≥ the threshold."""
    genuine, impostor = np.sort(_scores(genuine, "genuine")), np.sort(_scores(impostor, "impostor"))
    thresholds = np.asarray(thresholds, np.float64)
    fmr = 1 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
    fnmr = np.searchsorted(genuine, thresholds, side="left") / len(genuine)
    return fmr, fnmr


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): where FMR and FNMR cross, linearly interpolated between the observed
    thresholds."""
    candidates = np.unique(np.concatenate([_scores(genuine, "genuine"), _scores(impostor, "impostor")]))
    candidates = np.concatenate([candidates, [np.nextafter(candidates[-1], np.inf)]])
    fmr, fnmr = error_rates(genuine, impostor, candidates)
    gap = fmr - fnmr  # falls from ≥ 0 to ≤ 0 as the threshold rises
    i = int(np.flatnonzero(gap <= 0)[0])
    if i == 0 or gap[i] == 0:
        return float((fmr[i] + fnmr[i]) / 2), float(candidates[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    eer = fmr[i - 1] + t * (fmr[i] - fmr[i - 1])
    return float(eer), float(candidates[i - 1] + t * (candidates[i] - candidates[i - 1]))


def best_accuracy(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(accuracy, threshold) at the threshold that classifies the most pairs right."""
    genuine, impostor = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    candidates = np.unique(np.concatenate([genuine, impostor, [np.inf]]))
    fmr, fnmr = error_rates(genuine, impostor, candidates)
    correct = (1 - fnmr) * len(genuine) + (1 - fmr) * len(impostor)
    best = int(np.argmax(correct))
    return float(correct[best] / (len(genuine) + len(impostor))), float(candidates[best])


def threshold_at_fmr(impostor: np.ndarray, fmr: float) -> float | None:
    """The threshold whose false-match rate is ``fmr`` (the 1 − fmr quantile of the impostor
    scores, interpolated), or None when there are too few impostor scores to measure it
    (fewer than 1 / fmr)."""
    impostor = _scores(impostor, "impostor")
    if fmr * len(impostor) < 1:
        return None
    return float(np.quantile(impostor, 1 - fmr))


def rate_at_or_above(scores: np.ndarray, threshold: float) -> float:
    """Share of ``scores`` that match at ``threshold`` (≥)."""
    return float(np.mean(_scores(scores, "") >= threshold))


def protection_success_rate(protected_vs_original: np.ndarray, threshold: float) -> float:
    """PSR: share of protected faces that no longer match their own original at ``threshold``."""
    return 1 - rate_at_or_above(protected_vs_original, threshold)


@dataclass
class Unlinkability:
    bin_centres: np.ndarray  # [bins]
    mated_density: np.ndarray  # p(s | H_m), integrates to 1
    non_mated_density: np.ndarray  # p(s | H_nm)
    local: np.ndarray  # D↔(s) per bin, in [0, 1]
    system: float  # D↔sys in [0, 1]: 0 fully unlinkable, 1 fully linkable


def unlinkability(
    mated: np.ndarray, non_mated: np.ndarray, bins: int | None = None, omega: float = 1.0
) -> Unlinkability:
    """Gomez-Barrero et al. (TIFS 2018). Mated: same person, different keys; non-mated: different
    people. With LR(s) = p(s|H_m) / p(s|H_nm) from histograms over the joint score range,
    D↔(s) = 2·ω·LR(s) / (1 + ω·LR(s)) − 1 where ω·LR(s) > 1, else 0; D↔sys = ∫ p(s|H_m)·D↔(s) ds,
    the exact integral of the histograms (Σ p(s|H_m)·D↔(s)·bin width: a trapezoid rule over the
    bin centres would count half the mass of the two outer bins — 0.83 for fully separated scores
    whose mated third sits at the maximum). ω is the prior ratio P(H_m) / P(H_nm).

    ``bins`` defaults to √(mated scores), clipped to [10, 100]: the reference's 100 bins need
    thousands of scores — with ~50, most bins hold none or one, and D↔sys of two identical
    distributions comes out ≈ 0.35 instead of 0 (≈ 0.08 with 10 bins)."""
    mated, non_mated = _scores(mated, "mated"), _scores(non_mated, "non-mated")
    if bins is None:
        bins = int(np.clip(round(np.sqrt(len(mated))), 10, 100))
    low, high = min(mated.min(), non_mated.min()), max(mated.max(), non_mated.max())
    if high <= low:
        high = low + 1e-9
    edges = np.linspace(low, high, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    p_m = np.histogram(mated, edges, density=True)[0]
    p_nm = np.histogram(non_mated, edges, density=True)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.where(p_nm > 0, p_m / p_nm, np.where(p_m > 0, np.inf, 0.0))
        odds = omega * lr
        local = np.where(odds > 1, np.where(np.isinf(odds), 1.0, 2 * odds / (1 + odds) - 1), 0.0)
    system = float(np.sum(p_m * local * np.diff(edges)))
    return Unlinkability(centres, p_m, p_nm, local, min(max(system, 0.0), 1.0))


def rank_one_rate(scores: np.ndarray, truth: np.ndarray) -> float:
    """Share of probes (rows of ``scores`` [P, C], one column per candidate) whose highest score
    is their true candidate ``truth`` [P]; a tie with the true candidate counts as a miss."""
    scores = np.asarray(scores, np.float64)
    true = scores[np.arange(len(scores)), truth]
    others = scores.copy()
    others[np.arange(len(scores)), truth] = -np.inf
    return float(np.mean(true > others.max(axis=1)))


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass
class ByPerson:
    """Scores grouped by the people they involve, so that people can be resampled: ``own[p]``
    holds the scores of person p alone (genuine pairs, or per-photo values), ``between[(p, q)]``
    (p < q) those of pairs of two different people (impostor pairs)."""

    own: dict[str, np.ndarray] = field(default_factory=dict)
    between: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    @classmethod
    def per_item(cls, values: np.ndarray, people: Sequence[str]) -> ByPerson:
        """One value per item (a photo, a probe), each belonging to ``people[i]``."""
        values, person = np.asarray(values, np.float64), np.asarray(people)
        return cls({p: values[person == p] for p in sorted(set(people))})

    @classmethod
    def pairs(
        cls,
        scores: np.ndarray,
        rows: Sequence[str],
        columns: Sequence[str],
        *,
        one_set: bool,
        keep: np.ndarray | None = None,
    ) -> ByPerson:
        """Every pair (i, j) of ``scores`` [R, C] grouped by (rows[i], columns[j]); with
        ``one_set`` (rows and columns are the same items) only i < j: different items, once;
        with ``keep`` (bool [R, C]) only the pairs it marks."""
        scores = np.asarray(scores, np.float64)
        keep = np.ones(scores.shape, bool) if keep is None else np.asarray(keep, bool)
        if one_set:
            keep = keep & np.triu(np.ones(scores.shape, bool), k=1)
        row, column = np.asarray(rows), np.asarray(columns)
        grouped = cls()
        for p in sorted(set(rows) | set(columns)):
            for q in sorted(set(rows) | set(columns)):
                if q < p:
                    continue
                mask = keep & (
                    ((row == p)[:, None] & (column == q)[None]) | ((row == q)[:, None] & (column == p)[None])
                )
                if mask.any():
                    if p == q:
                        grouped.own[p] = scores[mask]
                    else:
                        grouped.between[(p, q)] = scores[mask]
        return grouped

    def people(self) -> list[str]:
        return sorted(set(self.own) | {p for pair in self.between for p in pair})

    def draw(self, people: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(own, between) scores of a sample of people drawn with replacement: a person drawn
        twice counts twice, and two draws of one person never form a pair of different people."""
        own = [self.own.get(p, _empty()) for p in people]
        between = [
            self.between.get((min(p, q), max(p, q)), _empty())
            for i, p in enumerate(people if self.between else [])
            for q in people[i + 1 :]
            if p != q
        ]
        return np.concatenate([_empty(), *own]), np.concatenate([_empty(), *between])

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([_empty(), *self.own.values()]), np.concatenate([_empty(), *self.between.values()])


def bootstrap_interval(
    statistic: Callable[[list[str]], float | None],
    people: Sequence[str],
    *,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The percentile bootstrap interval of ``statistic`` over people: each replicate draws
    len(people) people with replacement and evaluates ``statistic`` on them. None when a
    statistic cannot be measured (returns None) in more than 5 % of the replicates."""
    rng = np.random.default_rng(seed)
    people = list(people)
    values = []
    for _ in range(replicates):
        value = statistic([people[i] for i in rng.integers(0, len(people), len(people))])
        if value is not None:
            values.append(value)
    if not values or len(values) < 0.95 * replicates:
        return None
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
