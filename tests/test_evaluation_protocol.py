"""The evaluation protocol's figures on synthetic templates with known answers: a "protection" that
changes nothing, and one that gives every (person, key) a fresh identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.matchers import NetworkMatcher
from evaluation.protocol import Templates, evaluate_matcher

PEOPLE, PHOTOS, DIM = 12, 3, 128


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def identities(rng: np.random.Generator, n: int) -> np.ndarray:
    return unit(rng.normal(size=(n, DIM)))


def photos_of(identity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PHOTOS templates of one identity: cos ≈ 0.85 between them, ≈ 0 (± 0.1) to anyone else."""
    return unit(identity + 0.04 * rng.normal(size=(PHOTOS, DIM)))


def templates(protect: str) -> Templates:
    rng = np.random.default_rng(0)
    people = [f"p{i:02d}" for i in range(PEOPLE) for _ in range(PHOTOS)]
    originals = np.concatenate([photos_of(who, rng) for who in identities(rng, PEOPLE)])
    protected = list(range(len(people)))
    if protect == "nothing":
        key_sets = [originals.copy(), originals.copy()]
        new_identity = {(p, s): None for p in set(people) for s in (0, 1)}
    else:  # every (person, key set) looks like a new person, consistently across their photos
        new_identity = {
            (p, s): who
            for (p, s), who in zip(
                [(p, s) for p in sorted(set(people)) for s in (0, 1)], identities(rng, 2 * PEOPLE), strict=True
            )
        }
        key_sets = [
            np.stack([unit(new_identity[(people[i], s)] + 0.1 * unit(rng.normal(size=DIM))) for i in protected])
            for s in (0, 1)
        ]
    probes = {p: people.index(p) for p in sorted(set(people))}
    targets = {p: people.index(p) + 1 for p in sorted(set(people))[:6]}
    stolen = {}
    for target in targets:  # the attacker's probes under the target's key
        for person, probe in probes.items():
            if person != target:
                identity = new_identity[(target, 0)]
                stolen[(target, person)] = (
                    originals[probe] if identity is None else unit(identity + 0.1 * unit(rng.normal(size=DIM)))
                )
    attacks = {"re-inversion": key_sets[0][[probes[p] for p in sorted(probes)]]}
    return Templates(people, originals, protected, key_sets, probes, targets, stolen, attacks)


@pytest.fixture(scope="module")
def matcher() -> NetworkMatcher:
    return NetworkMatcher("cosine", torch.nn.Identity(), white_box=True)


def test_a_protection_that_changes_nothing_fails_every_measure(matcher: NetworkMatcher) -> None:
    m = evaluate_matcher(matcher, templates("nothing"), replicates=200)
    assert m["originals"]["eer"]["value"] == 0.0 and m["originals"]["auc"]["value"] == 1.0
    assert m["psr"]["0.01"]["value"] == 0.0  # every protected face still matches its original
    assert m["revocability"]["match_rate"]["0.01"]["value"] == 1.0  # the "new" key gives the same face
    assert m["revocability"]["cross_key"]["eer"]["value"] == 0.0  # fully linkable across keys
    assert m["unlinkability_d_sys"]["value"] > 0.9
    assert m["attacks"]["re-inversion"]["match_rate"]["0.01"]["value"] == 1.0
    # the stolen key: the probes are the originals themselves, so the target's own photo wins
    assert m["stolen_key"]["rank_one"]["value"] == 1.0 and m["stolen_key"]["chance"] == 1 / PEOPLE


def test_a_fresh_identity_per_key_passes_them(matcher: NetworkMatcher) -> None:
    m = evaluate_matcher(matcher, templates("fresh"), replicates=200)
    # new identities score against the originals like other people: about 1 % match at FMR 1 %
    assert m["psr"]["0.01"]["value"] >= 0.9
    low, high = m["psr"]["0.01"]["ci95"]
    assert low <= m["psr"]["0.01"]["value"] <= high
    assert m["preservation"]["eer"]["value"] == 0.0  # one new identity per person: still verifiable
    cross = m["revocability"]["cross_key"]["eer"]["value"]
    assert 0.3 < cross <= 0.7  # key 0 and key 1 faces of one person: as foreign as other people
    assert m["revocability"]["match_rate"]["0.01"]["value"] < 0.1
    assert m["unlinkability_d_sys"]["value"] < 0.3
    # with the key stolen, every probe becomes the target's new identity: rank-1 near chance
    assert m["stolen_key"]["rank_one"]["value"] < 0.5
    for figure in (m["originals"]["eer"], m["preservation"]["auc"], m["unlinkability_d_sys"]):
        low, high = figure["ci95"]
        assert low <= figure["value"] <= high
