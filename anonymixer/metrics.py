"""Biometric verification metrics over similarity scores (higher = more alike)."""

from __future__ import annotations

import numpy as np


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random genuine score beats a random
    impostor score, ties counting one half (the Mann–Whitney U statistic)."""
    genuine, impostor = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    if not len(genuine) or not len(impostor):
        raise ValueError("need at least one genuine and one impostor score")
    scores = np.concatenate([genuine, impostor])
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.bincount(inverse, weights=ranks) / counts  # tied scores share their mean rank
    u = mean_rank[inverse[: len(genuine)]].sum() - len(genuine) * (len(genuine) + 1) / 2
    return float(u / (len(genuine) * len(impostor)))


def best_accuracy(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(accuracy, threshold) at the threshold that classifies the most pairs right (score ≥ t: match)."""
    genuine, impostor = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    candidates = np.unique(np.concatenate([genuine, impostor, [np.inf]]))
    accepted_genuine = len(genuine) - np.searchsorted(np.sort(genuine), candidates, side="left")
    rejected_impostor = np.searchsorted(np.sort(impostor), candidates, side="left")
    correct = accepted_genuine + rejected_impostor
    best = int(np.argmax(correct))
    return float(correct[best] / (len(genuine) + len(impostor))), float(candidates[best])
