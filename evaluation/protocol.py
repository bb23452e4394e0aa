"""The evaluation protocol: from one matcher's templates to every figure of the report, each with
its bootstrap 95 % interval over people (ISO/IEC 24745 and 30136 terms).

The templates (:class:`Templates`) are of aligned faces:

* ``originals`` — every labelled photo (the originals' thresholds need as many impostor pairs as
  there are: FMR 0.1 % needs 1000);
* ``key_sets[s]`` — the protected photos (a subset, :attr:`Templates.protected`), each protected
  alone under its person's key of key set ``s`` (set 0 enrols, set 1 is the key after revocation);
* ``enrolled[person]`` — the client's enroll flow: the person's protected photos other than their
  probe, protected together as one group under key set 0;
* ``stolen[(target, person)]`` — the stolen-key scenario: the attacker holds ``target``'s key,
  protects the probe photo of ``person`` with it and compares it with ``target``'s protected face;
* ``attacks[name]`` — each attack's reconstruction of the key-set-0 probe photo of every person.

Figures (per matcher; "—"/None where too few pairs measure it):

* originals: EER, AUC, the thresholds at each FMR;
* PSR at each FMR: protected faces (key set 0) scoring below the originals' threshold against
  their own original — a face the matcher does not find counts as protected; beside it the
  detection rate (protected faces the matcher finds) and the PSR among the faces it finds;
* performance preservation: EER/AUC of protected vs protected, key set 0 (one key per person);
  the same pairs of one person (other photo, same key) matched by the matcher's own rule;
* enroll flow (what the client ships): a lone probe vs every enrolled template (the mean of the
  group's templates): its EER;
* revocability: key set 0 vs key set 1, same person: match rate at the protected domain's
  thresholds, and the cross-key EER (genuine = same person under its two keys, impostor =
  different people; 0.5 = a revoked key's faces are as foreign as another person's), also apart
  for the same photo under the two keys and for another photo under the other key;
* unlinkability: D↔sys (Gomez-Barrero et al.) with the same mated / non-mated scores;
* stolen key: rank-1 identification of the target among all people's probes protected with the
  target's key, the EER of that comparison (genuine = the target's own probe), and how often the
  other people's probes match the target at the originals' thresholds, beside ordinary impostors
  (other people under their own keys);
* attacks: match rate against the own original at the originals' thresholds, mean score;
* targets: each figure that has a bar (:data:`TARGETS`), passed or not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluation.matchers import DLIB_SAME_PERSON, NO_FACE, DlibMatcher, Matcher
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
OPERATING_FMR = 1e-3  # the paper's: PSR @ FMR 0.1 %, and where the targets are read


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
    enrolled: dict[str, np.ndarray] = field(default_factory=dict)  # person → [their enrolled photos, D]


@dataclass(frozen=True)
class Target:
    """The bar a figure must clear: at least (``at_least``) or at most ``bound``."""

    label: str
    path: tuple[str, ...]  # where the figure sits in a matcher's result
    bound: float
    at_least: bool


TARGETS = (
    Target("PSR @ FMR 0.1 %, every protected face (paper: 88.73 %)", ("psr", "0.001"), 0.8873, True),
    Target("protected faces the matcher finds", ("detection", "rate"), 0.98, True),
    Target("PSR @ FMR 0.1 %, among the faces it finds", ("psr_detected", "0.001"), 0.95, True),
    Target(
        "stolen key: other people under the target's key match it @ FMR 0.1 %",
        ("stolen_key", "impostor_fmr", "0.001"),
        0.01,
        False,
    ),
    Target("enroll flow: EER (lone probe vs enrolled template)", ("enroll_flow", "eer"), 0.02, False),
    Target(
        "same person, same key, other photo: match rate (the matcher's own rule)",
        ("same_key_across_photos", "match_rate"),
        0.90,
        True,
    ),
    Target("cross-key, other photo under the other key: EER", ("revocability", "other_photo", "eer"), 0.45, True),
    Target("cross-key, other photo under the other key: D↔sys", ("revocability", "other_photo", "d_sys"), 0.10, False),
    # an attack, even with the key (ISO/IEC 24745's irreversibility), should bring back the
    # original no more often than the stolen key's strangers match
    *(
        Target(
            f"{name} attack: matches its original @ FMR 0.1 %", ("attacks", name, "match_rate", "0.001"), 0.01, False
        )
        for name in ("re-inversion", "prior-mean", "key-aware")
    ),
)


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
    scores: ByPerson, reference: ByPerson, fmr: float, replicates: int, *, below: bool, between: bool = False
) -> dict[str, Any]:
    """Share of ``scores`` (their own scores, or with ``between`` those of pairs of two people)
    below (``below``) or at/above the threshold of ``reference``'s impostor pairs at ``fmr``; both
    resampled with the same people."""

    def statistic(people: list[str]) -> float | None:
        values, impostor = scores.draw(people)[int(between)], reference.draw(people)[1]
        threshold = threshold_at_fmr(impostor, fmr) if len(impostor) else None
        if threshold is None or not len(values):
            return None
        matched = rate_at_or_above(values, threshold)
        return 1 - matched if below else matched

    return figure(statistic, scores.people(), replicates)


def share(values: ByPerson, replicates: int) -> dict[str, Any]:
    """The mean of per-item values (1 or 0: a share) with its interval over people."""

    def statistic(people: list[str]) -> float | None:
        drawn = values.draw(people)[0]
        return float(drawn.mean()) if len(drawn) else None

    return figure(statistic, values.people(), replicates)


def linkability(pairs: ByPerson, replicates: int) -> dict[str, Any]:
    """D↔sys of (mated = own, non-mated = between) pairs, over the pairs the matcher scored."""

    def d_sys(sample: list[str]) -> float | None:
        m, n = (found(scores) for scores in pairs.draw(sample))
        return unlinkability(m, n).system if _both(m, n) else None

    return figure(d_sys, pairs.people(), replicates)


def evaluate_matcher(matcher: Matcher, t: Templates, replicates: int = 1000) -> dict[str, Any]:
    prot_people = [t.people[i] for i in t.protected]
    originals = ByPerson.pairs(matcher.compare(t.originals, t.originals), t.people, t.people, one_set=True)
    own_scores = np.diag(matcher.compare(t.key_sets[0], t.originals[t.protected]))
    own = ByPerson.per_item(own_scores, prot_people)
    preserved = ByPerson.pairs(matcher.compare(t.key_sets[0], t.key_sets[0]), prot_people, prot_people, one_set=True)
    across = matcher.compare(t.key_sets[0], t.key_sets[1])
    cross = ByPerson.pairs(across, prot_people, prot_people, one_set=False)
    # the PSR among the pairs the matcher scored: a face it does not find is no protection of ours
    detected = ByPerson({p: found(scores) for p, scores in own.own.items()})
    result: dict[str, Any] = {
        "white_box": matcher.white_box,
        "faces_not_found": {
            "originals": missing(t.originals),
            "protected": sum(missing(s) for s in t.key_sets),
            "enrolled": sum(missing(s) for s in t.enrolled.values()),
            "stolen_key": missing(np.stack(list(t.stolen.values()))) if t.stolen else 0,
            **{name: missing(faces) for name, faces in t.attacks.items()},
        },
        "originals": verification(originals, replicates),
        "psr": {f"{f:g}": rate_below_threshold(own, originals, f, replicates, below=True) for f in FMRS},
        "detection": detection(t.key_sets[0], prot_people, replicates),
        "psr_detected": {f"{f:g}": rate_below_threshold(detected, originals, f, replicates, below=True) for f in FMRS},
        "protected_vs_original_score_mean": mean_found(own_scores),
        "preservation": verification(preserved, replicates),
        "same_key_across_photos": same_key_across_photos(matcher, preserved, originals, replicates),
        "enroll_flow": enroll_flow(matcher, t, replicates),
        "revocability": revocability(across, prot_people, cross, preserved, replicates),
        "unlinkability_d_sys": linkability(cross, replicates),
        "stolen_key": stolen_key(matcher, t, originals, preserved, replicates),
        "attacks": attack_figures(matcher, t, originals, replicates),
    }
    result["targets"] = [checked(result, target) for target in TARGETS]
    mated, non_mated = cross.all()
    result["_scores"] = {  # for the plots; not written to report.json
        "originals": originals.all(),
        "protected": preserved.all(),
        "cross_key": (found(mated), found(non_mated)),
    }
    return result


def detection(protected: np.ndarray, people: list[str], replicates: int) -> dict[str, Any]:
    """Protected faces (key set 0) the matcher finds a face in, over all of them."""
    is_found = ~np.isnan(protected).any(axis=1)
    return {
        "found": int(is_found.sum()),
        "protected": len(is_found),
        "rate": share(ByPerson.per_item(is_found.astype(np.float64), people), replicates),
    }


def own_rule(matcher: Matcher) -> float | None:
    """The score above which the matcher itself calls two faces one person, None where it has no
    rule of its own: dlib documents one (distance < 0.6); a network has none, so the originals'
    threshold at FMR 0.1 % stands in."""
    return -DLIB_SAME_PERSON if isinstance(matcher, DlibMatcher) else None


def same_key_across_photos(
    matcher: Matcher, preserved: ByPerson, originals: ByPerson, replicates: int
) -> dict[str, Any]:
    """Two photos of one person, each protected alone under the same key: do they still match?"""
    rule = own_rule(matcher)
    pairs = len(preserved.all()[0])
    if rule is None:
        rate = rate_below_threshold(preserved, originals, OPERATING_FMR, replicates, below=False)
        return {"rule": "the originals' threshold at FMR 0.1 %", "pairs": pairs, "match_rate": rate}

    def statistic(people: list[str]) -> float | None:
        genuine = preserved.draw(people)[0]
        return float(np.mean(genuine > rule)) if len(genuine) else None  # dlib's rule is strict: distance < 0.6

    return {
        "rule": f"distance < {DLIB_SAME_PERSON}",
        "pairs": pairs,
        "match_rate": figure(statistic, preserved.people(), replicates),
    }


def enrolled_template(templates: np.ndarray) -> np.ndarray:
    """One person's enrolled template from the matcher's templates of their group, as the client's
    enroll builds it: the mean of the faces the matcher found — normalised back onto the unit
    sphere where the matcher's templates live on it (cosine: the client's L2-normalised mean), the
    plain mean where they do not (dlib's descriptors, compared by distance). NaN if none is found."""
    kept = templates[~np.isnan(templates).any(axis=1)]
    if not len(kept):
        return np.full(templates.shape[1], np.nan)
    mean = kept.mean(axis=0)
    on_sphere = np.allclose(np.linalg.norm(kept, axis=1), 1, atol=1e-4)
    return np.asarray(mean / np.linalg.norm(mean) if on_sphere else mean)


def enroll_flow(matcher: Matcher, t: Templates, replicates: int) -> dict[str, Any]:
    """Every person's lone probe (key set 0) against every enrolled template: genuine = their own,
    impostor = other people's (people with a single photo enrol nothing but still probe)."""
    if not t.enrolled:
        return {"note": "no person with two protected photos"}
    index = {photo: k for k, photo in enumerate(t.protected)}
    probers, enrolled = sorted(t.probes), sorted(t.enrolled)
    probes = t.key_sets[0][[index[t.probes[p]] for p in probers]]
    references = np.stack([enrolled_template(t.enrolled[p]) for p in enrolled])
    pairs = ByPerson.pairs(matcher.compare(probes, references), probers, enrolled, one_set=False)
    photos = sum(len(templates) for templates in t.enrolled.values())
    return {"people": len(enrolled), "enrolled_photos": photos, **verification(pairs, replicates)}


def revocability(
    across: np.ndarray, people: list[str], cross: ByPerson, preserved: ByPerson, replicates: int
) -> dict[str, Any]:
    """Key set 0 (rows) vs key set 1 (columns) of the protected photos (``cross``: grouped by
    person): mated = same person."""
    same_person = np.equal.outer(people, people)
    same_photo = np.eye(len(across), dtype=bool)
    cross_key = verification(cross, replicates)
    return {
        "cross_key": {k: cross_key[k] for k in ("pairs", "eer", "auc") if k in cross_key},
        # mated pairs of one photo under the two keys share pose, hair and background; other photos do not
        "same_photo": cross_key_mated(across, people, same_photo | ~same_person, replicates),
        "other_photo": cross_key_mated(across, people, ~same_photo, replicates),
        "score_mean": {
            "same photo, two keys": mean_found(np.diag(across)),
            "other photo, other key": mean_found(across[same_person & ~same_photo]),
            "other people": mean_found(across[~same_person]),
        },
        "match_rate": {f"{f:g}": rate_below_threshold(cross, preserved, f, replicates, below=False) for f in FMRS},
    }


def cross_key_mated(across: np.ndarray, people: list[str], keep: np.ndarray, replicates: int) -> dict[str, Any]:
    """Cross-key EER, AUC and D↔sys with the mated pairs ``keep`` leaves (non-mated: other people)."""
    pairs = ByPerson.pairs(across, people, people, one_set=False, keep=keep)
    result = verification(pairs, replicates)
    return {**{k: result[k] for k in ("pairs", "eer", "auc") if k in result}, "d_sys": linkability(pairs, replicates)}


def stolen_key(
    matcher: Matcher, t: Templates, originals: ByPerson, preserved: ByPerson, replicates: int
) -> dict[str, Any]:
    """Rank-1 identification, EER and impostor match rates when each target's key is stolen (see
    the module's docstring)."""
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
    hits = ByPerson.per_item(
        np.array([rank_one_rate(r[None], np.array([k])) for r, k in zip(rows, truth, strict=True)]), targets
    )
    own = ByPerson.per_item(np.array(genuine), targets)
    others = ByPerson({p: scores for p, scores in zip(targets, impostor, strict=True)})
    strangers = stolen_pairs(targets, candidates, impostor)

    def rank_one(sample: list[str]) -> float | None:
        return float(hits.draw(sample)[0].mean())

    def eer(sample: list[str]) -> float | None:
        g, i = own.draw(sample)[0], others.draw(sample)[0]
        return equal_error_rate(g, i)[0] if _both(g, i) else None

    def impostor_rate(pairs: ByPerson) -> dict[str, Any]:
        return {
            f"{f:g}": rate_below_threshold(pairs, originals, f, replicates, below=False, between=True) for f in FMRS
        }

    return {
        "targets": len(targets),
        "candidates": len(candidates),
        "chance": 1 / len(candidates),
        "rank_one": figure(rank_one, targets, replicates),
        "eer": figure(eer, targets, replicates),
        # other people's probes under the target's key matching the target, beside other people under their own keys
        "impostor_fmr": impostor_rate(strangers),
        "ordinary_impostor_fmr": impostor_rate(preserved),
        # why it succeeds or not: how close the target's own probe and the other people come
        "score_mean": {"target": mean_found(np.array(genuine)), "others": mean_found(np.concatenate(impostor))},
    }


def stolen_pairs(targets: list[str], candidates: list[str], impostor: list[np.ndarray]) -> ByPerson:
    """The other people's scores of each target (``impostor``, in ``candidates`` order without the
    target) grouped by the pair of people they involve, so that a resample keeps a pair only when
    it draws both people."""
    between: dict[tuple[str, str], list[float]] = {}
    for target, scores in zip(targets, impostor, strict=True):
        for person, score in zip([p for p in candidates if p != target], scores, strict=True):
            between.setdefault((min(target, person), max(target, person)), []).append(float(score))
    return ByPerson(between={pair: np.array(scores) for pair, scores in between.items()})


def attack_figures(matcher: Matcher, t: Templates, originals: ByPerson, replicates: int) -> dict[str, Any]:
    """Each attack's reconstructions against their own originals."""
    probe_people = sorted(t.probes)
    probe_originals = t.originals[[t.probes[p] for p in probe_people]]
    result = {}
    for name, faces in t.attacks.items():
        scores = np.diag(matcher.compare(faces, probe_originals))
        per_person = ByPerson.per_item(scores, probe_people)
        result[name] = {
            "score_mean": mean_found(scores),
            "match_rate": {
                f"{f:g}": rate_below_threshold(per_person, originals, f, replicates, below=False) for f in FMRS
            },
        }
    return result


def checked(result: dict[str, Any], target: Target) -> dict[str, Any]:
    """A target's row: the figure, its interval, the bar and whether the figure clears it (None:
    not measured). Pass or fail is the figure's; the interval says how sure that is."""
    value: Any = result
    for key in target.path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    measured = value.get("value") if isinstance(value, dict) else None
    passed = (
        None if measured is None else bool(measured >= target.bound if target.at_least else measured <= target.bound)
    )
    return {
        "measure": target.label,
        "value": measured,
        "ci95": value.get("ci95") if isinstance(value, dict) else None,
        "target": f"{'≥' if target.at_least else '≤'} {target.bound:g}",
        "pass": passed,
    }
