"""The evaluation protocol: from one matcher's templates to every figure of the report, each with
its bootstrap 95 % interval over people (ISO/IEC 24745 and 30136 terms).

The templates (:class:`Templates`) are of aligned faces:

* ``originals`` — every labelled photo (the originals' thresholds need as many impostor pairs as
  there are: FMR 0.1 % needs 1000);
* ``key_sets[s]`` — the protected photos (a subset, :attr:`Templates.protected`) under their
  person's key of key set ``s`` (set 0 enrols, set 1 is the key after revocation);
* ``stolen[(target, person)]`` — the stolen-key scenario: the attacker holds ``target``'s key,
  protects the probe photo of ``person`` with it and compares it with ``target``'s protected face;
* ``attacks[name]`` — each attack's reconstruction of the key-set-0 probe photo of every person.

Figures (per matcher; "—"/None where too few pairs measure it):

* originals: EER, AUC, the thresholds at each FMR;
* PSR at each FMR: protected faces (key set 0) scoring below the originals' threshold against
  their own original;
* performance preservation: EER/AUC of protected vs protected, key set 0 (one key per person);
* revocability: key set 0 vs key set 1, same person: match rate at the protected domain's
  thresholds, and the cross-key EER (genuine = same person under its two keys, impostor =
  different people; 0.5 = a revoked key's faces are as foreign as another person's);
* unlinkability: D↔sys (Gomez-Barrero et al.) with the same mated / non-mated scores;
* stolen key: rank-1 identification of the target among all people's probes protected with the
  target's key, and the EER of that comparison (genuine = the target's own probe);
* attacks: match rate against the own original at the originals' thresholds, mean score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluation.matchers import NO_FACE, Matcher
from evaluation.metrics import (
    ByPerson,
    bootstrap_interval,
    equal_error_rate,
    rank_one_rate,
    rate_at_or_above,
    roc_auc,
    threshold_at_fmr,
    unlinkability,
)

FMRS = (1e-2, 1e-3, 1e-4, 1e-5)


@dataclass
class Templates:
    people: list[str]  # person of each original photo
    originals: np.ndarray  # [N, D]
    protected: list[int]  # indices (into originals) of the protected photos
    key_sets: list[np.ndarray]  # per key set: [len(protected), D]
    probes: dict[str, int]  # person → the index (into originals) of their probe photo
    targets: dict[str, int]  # stolen-key target person → the index of their enrolled (protected) photo
    stolen: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (target, person) → [D]
    attacks: dict[str, np.ndarray] = field(default_factory=dict)  # name → [len(probes), D], sorted people


def figure(statistic: Callable[[list[str]], float | None], people: Sequence[str], replicates: int) -> dict[str, Any]:
    """A figure on all people and its bootstrap 95 % interval over them."""
    people = sorted(set(people))
    return {"value": statistic(people), "ci95": bootstrap_interval(statistic, people, replicates=replicates)}


def found(scores: np.ndarray) -> np.ndarray:
    """Scores of pairs where the matcher found both faces: the error rates count a pair scoring
    NO_FACE as it is (no match), a score density leaves it out."""
    return scores[scores > NO_FACE]


def mean_found(scores: np.ndarray) -> float | None:
    kept = found(scores)
    return float(kept.mean()) if len(kept) else None


def missing(templates: np.ndarray) -> int:
    """Faces the matcher found no face in (NaN templates)."""
    return int(np.isnan(templates).any(axis=1).sum()) if len(templates) else 0


def _both(genuine: np.ndarray, impostor: np.ndarray) -> bool:
    return bool(len(genuine) and len(impostor))


def verification(pairs: ByPerson, replicates: int) -> dict[str, Any]:
    """EER, AUC and thresholds at each FMR of (genuine = own, impostor = between) pairs."""
    genuine, impostor = pairs.all()
    if not _both(genuine, impostor):
        return {"pairs": {"genuine": len(genuine), "impostor": len(impostor)}, "note": "needs both kinds of pairs"}

    def eer(people: list[str]) -> float | None:
        g, i = pairs.draw(people)
        return equal_error_rate(g, i)[0] if _both(g, i) else None

    def auc(people: list[str]) -> float | None:
        g, i = pairs.draw(people)
        return roc_auc(g, i) if _both(g, i) else None

    return {
        "pairs": {"genuine": len(genuine), "impostor": len(impostor)},
        "eer": figure(eer, pairs.people(), replicates),
        "auc": figure(auc, pairs.people(), replicates),
        "thresholds": {f"{fmr:g}": threshold_at_fmr(impostor, fmr) for fmr in FMRS},
    }


def rate_below_threshold(
    scores: ByPerson, reference: ByPerson, fmr: float, replicates: int, *, below: bool
) -> dict[str, Any]:
    """Share of ``scores`` below (``below``) or at/above the threshold of ``reference``'s impostor
    pairs at ``fmr``; both resampled with the same people."""

    def statistic(people: list[str]) -> float | None:
        values, impostor = scores.draw(people)[0], reference.draw(people)[1]
        threshold = threshold_at_fmr(impostor, fmr) if len(impostor) else None
        if threshold is None or not len(values):
            return None
        matched = rate_at_or_above(values, threshold)
        return 1 - matched if below else matched

    return figure(statistic, scores.people(), replicates)


def evaluate_matcher(matcher: Matcher, t: Templates, replicates: int = 1000) -> dict[str, Any]:
    prot_people = [t.people[i] for i in t.protected]
    originals = ByPerson.pairs(matcher.compare(t.originals, t.originals), t.people, t.people, one_set=True)
    own_scores = np.diag(matcher.compare(t.key_sets[0], t.originals[t.protected]))
    own = ByPerson.per_item(own_scores, prot_people)
    preserved = ByPerson.pairs(matcher.compare(t.key_sets[0], t.key_sets[0]), prot_people, prot_people, one_set=True)
    across = matcher.compare(t.key_sets[0], t.key_sets[1])
    cross = ByPerson.pairs(across, prot_people, prot_people, one_set=False)
    same_person = np.equal.outer(prot_people, prot_people)

    base = verification(originals, replicates)
    preservation = verification(preserved, replicates)
    mated, non_mated = cross.all()

    def d_sys(sample: list[str]) -> float | None:
        m, n = (found(scores) for scores in cross.draw(sample))
        return unlinkability(m, n).system if _both(m, n) else None

    cross_key = verification(cross, replicates)
    result: dict[str, Any] = {
        "white_box": matcher.white_box,
        "faces_not_found": {
            "originals": missing(t.originals),
            "protected": sum(missing(s) for s in t.key_sets),
            "stolen_key": missing(np.stack(list(t.stolen.values()))) if t.stolen else 0,
            **{name: missing(faces) for name, faces in t.attacks.items()},
        },
        "originals": base,
        "psr": {f"{f:g}": rate_below_threshold(own, originals, f, replicates, below=True) for f in FMRS},
        "protected_vs_original_score_mean": mean_found(own_scores),
        "preservation": preservation,
        "revocability": {
            "cross_key": {k: cross_key[k] for k in ("pairs", "eer", "auc") if k in cross_key},
            # mated pairs of one photo under the two keys share pose, hair and background; other photos do not
            "score_mean": {
                "same photo, two keys": mean_found(np.diag(across)),
                "other photo, other key": mean_found(across[same_person & ~np.eye(len(across), dtype=bool)]),
                "other people": mean_found(across[~same_person]),
            },
            "match_rate": {f"{f:g}": rate_below_threshold(cross, preserved, f, replicates, below=False) for f in FMRS},
        },
        "unlinkability_d_sys": figure(d_sys, cross.people(), replicates),
        "stolen_key": stolen_key(matcher, t, replicates),
        "attacks": {},
    }
    probe_people = sorted(t.probes)
    probe_originals = t.originals[[t.probes[p] for p in probe_people]]
    for name, faces in t.attacks.items():
        scores = np.diag(matcher.compare(faces, probe_originals))
        per_person = ByPerson.per_item(scores, probe_people)
        result["attacks"][name] = {
            "score_mean": mean_found(scores),
            "match_rate": {
                f"{f:g}": rate_below_threshold(per_person, originals, f, replicates, below=False) for f in FMRS
            },
        }
    result["_scores"] = {  # for the plots; not written to report.json
        "originals": originals.all(),
        "protected": preserved.all(),
        "cross_key": (found(mated), found(non_mated)),
    }
    return result


def stolen_key(matcher: Matcher, t: Templates, replicates: int) -> dict[str, Any]:
    """Rank-1 identification and EER when each target's key is stolen (see the module's docstring)."""
    if not t.targets:
        return {"note": "no target with two protected photos"}
    candidates = sorted(t.probes)
    protected_index = {photo: k for k, photo in enumerate(t.protected)}
    rows, truth, genuine, impostor = [], [], [], []
    for target, enrolled in sorted(t.targets.items()):
        reference = t.key_sets[0][protected_index[enrolled]][None]
        probes = np.stack(
            [t.key_sets[0][protected_index[t.probes[p]]] if p == target else t.stolen[(target, p)] for p in candidates]
        )
        scores = matcher.compare(reference, probes)[0]
        rows.append(scores)
        truth.append(candidates.index(target))
        genuine.append(scores[truth[-1]])
        impostor.append(np.delete(scores, truth[-1]))
    targets = sorted(t.targets)
    hits = ByPerson.per_item([rank_one_rate(r[None], np.array([k])) for r, k in zip(rows, truth, strict=True)], targets)
    own = ByPerson.per_item(genuine, targets)
    others = ByPerson({p: scores for p, scores in zip(targets, impostor, strict=True)})

    def rank_one(sample: list[str]) -> float | None:
        return float(hits.draw(sample)[0].mean())

    def eer(sample: list[str]) -> float | None:
        g, i = own.draw(sample)[0], others.draw(sample)[0]
        return equal_error_rate(g, i)[0] if _both(g, i) else None

    return {
        "targets": len(targets),
        "candidates": len(candidates),
        "chance": 1 / len(candidates),
        "rank_one": figure(rank_one, targets, replicates),
        "eer": figure(eer, targets, replicates),
        # why it succeeds or not: how close the target's own probe and the other people come
        "score_mean": {"target": mean_found(np.array(genuine)), "others": mean_found(np.concatenate(impostor))},
    }
