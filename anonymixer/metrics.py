"""Biometric metrics over similarity scores (higher = more alike), as ISO/IEC 19795 and 24745
use them: verification error rates, thresholds at a false-match rate, protection success, and
the unlinkability measures of Gomez-Barrero et al. (IEEE TIFS 2018)."""

from __future__ import annotations

from dataclasses import dataclass

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


def unlinkability(mated: np.ndarray, non_mated: np.ndarray, bins: int = 100, omega: float = 1.0) -> Unlinkability:
    """Gomez-Barrero et al. (TIFS 2018). Mated: same person, different keys; non-mated: different
    people. With LR(s) = p(s|H_m) / p(s|H_nm) from histograms over the joint score range,
    D↔(s) = 2·ω·LR(s) / (1 + ω·LR(s)) − 1 where ω·LR(s) > 1, else 0; D↔sys = ∫ p(s|H_m)·D↔(s) ds
    (trapezoid rule over the bin centres). ω is the prior ratio P(H_m) / P(H_nm)."""
    mated, non_mated = _scores(mated, "mated"), _scores(non_mated, "non-mated")
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
    integrate = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it
    system = float(integrate(p_m * local, centres))
    return Unlinkability(centres, p_m, p_nm, local, min(max(system, 0.0), 1.0))
