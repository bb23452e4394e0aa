"""The evaluation protocol's figures on synthetic templates with known answers: a "protection" that
changes nothing, one that gives every (person, key) a fresh identity, one whose key alone decides
the face (whoever holds it makes anybody the key's person) and one that gives every photo a fresh
identity (nothing ties two photos of one person under one key)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from evaluation.matchers import NetworkMatcher
from evaluation.protocol import TARGETS, Templates, enrolled_template, evaluate_matcher

# 48 photos: 1080 impostor pairs, so FMR 0.1 % (where the targets are read) is measurable
PEOPLE, PHOTOS, DIM = 16, 3, 128


def unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True))


def identities(rng: np.random.Generator, n: int) -> np.ndarray:
    return unit(rng.normal(size=(n, DIM)))


def photos_of(identity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PHOTOS templates of one identity: cos ≈ 0.85 between them, ≈ 0 (± 0.1) to anyone else."""
    return unit(identity + 0.04 * rng.normal(size=(PHOTOS, DIM)))


def templates(protect: str) -> Templates:
    rng = np.random.default_rng(0)
    names = [f"p{i:02d}" for i in range(PEOPLE)]
    people = [p for p in names for _ in range(PHOTOS)]
    originals = np.concatenate([photos_of(who, rng) for who in identities(rng, PEOPLE)])
    identity: dict[tuple[object, ...], np.ndarray] = {}

    def protected(photo: int, owner: str, key_set: int) -> np.ndarray:
        """Photo ``photo`` protected under the key of ``owner`` in ``key_set``: the same identity
        for every photo of one (person, key), plus noise (cos ≈ 0.99 between them)."""
        if protect == "nothing":
            return np.asarray(originals[photo])
        who: tuple[object, ...] = {
            "fresh": (people[photo], owner, key_set),
            "key alone": (owner, key_set),
            "per photo": (photo, owner, key_set),
        }[protect]
        if who not in identity:
            identity[who] = identities(rng, 1)[0]
        return unit(identity[who] + 0.1 * unit(rng.normal(size=DIM)))

    photos = list(range(len(people)))
    key_sets = [np.stack([protected(i, people[i], s) for i in photos]) for s in (0, 1)]
    probes = {p: people.index(p) for p in names}
    targets = {p: probes[p] + 1 for p in names}  # every person, as the command's default
    # the attacker's probes under the target's key
    stolen = {(target, p): protected(probes[p], target, 0) for target in targets for p in names if p != target}
    # the enroll flow: the other photos as one group under key set 0
    enrolled = {p: np.stack([protected(i, p, 0) for i in photos if people[i] == p and i != probes[p]]) for p in names}
    attacks = {"re-inversion": key_sets[0][[probes[p] for p in names]]}
    return Templates(people, originals, photos, key_sets, probes, targets, stolen, attacks, enrolled)


def failed(m: dict[str, Any]) -> set[str]:
    return {row["measure"] for row in m["targets"] if row["pass"] is False}


def measure(*path: str) -> str:
    return next(t.label for t in TARGETS if t.path == path)


@pytest.fixture(scope="module")
def matcher() -> NetworkMatcher:
    return NetworkMatcher("cosine", torch.nn.Identity(), white_box=True)


def test_a_protection_that_changes_nothing_fails_every_measure(matcher: NetworkMatcher) -> None:
    m = evaluate_matcher(matcher, templates("nothing"), replicates=200)
    assert m["originals"]["eer"]["value"] == 0.0 and m["originals"]["auc"]["value"] == 1.0
    assert m["psr"]["0.01"]["value"] == 0.0  # every protected face still matches its original
    assert m["detection"]["rate"]["value"] == 1.0 and m["psr_detected"]["0.001"]["value"] == 0.0
    assert m["revocability"]["match_rate"]["0.01"]["value"] == 1.0  # the "new" key gives the same face
    assert m["revocability"]["cross_key"]["eer"]["value"] == 0.0  # fully linkable across keys
    for mated in ("same_photo", "other_photo"):
        assert m["revocability"][mated]["eer"]["value"] == 0.0 and m["revocability"][mated]["d_sys"]["value"] > 0.9
    assert m["unlinkability_d_sys"]["value"] > 0.9
    assert m["attacks"]["re-inversion"]["match_rate"]["0.01"]["value"] == 1.0
    # the stolen key: the probes are the originals themselves, so the target's own photo wins
    assert m["stolen_key"]["rank_one"]["value"] == 1.0 and m["stolen_key"]["chance"] == 1 / PEOPLE
    # a face left as it is still verifies (the enroll flow, one key across photos) and no key gives
    # anybody else's face: what it fails is every privacy target
    assert failed(m) == {
        measure("psr", "0.001"),
        measure("psr_detected", "0.001"),
        measure("revocability", "other_photo", "eer"),
        measure("revocability", "other_photo", "d_sys"),
        measure("attacks", "re-inversion", "match_rate", "0.001"),
    }


def test_a_fresh_identity_per_key_passes_them(matcher: NetworkMatcher) -> None:
    m = evaluate_matcher(matcher, templates("fresh"), replicates=200)
    # new identities score against the originals like other people: about 1 % match at FMR 1 %
    assert m["psr"]["0.01"]["value"] >= 0.9
    low, high = m["psr"]["0.01"]["ci95"]
    assert low <= m["psr"]["0.01"]["value"] <= high
    assert m["preservation"]["eer"]["value"] == 0.0  # one new identity per person: still verifiable
    assert m["enroll_flow"]["eer"]["value"] == 0.0 and m["enroll_flow"]["pairs"] == {"genuine": 16, "impostor": 240}
    assert m["same_key_across_photos"]["match_rate"]["value"] == 1.0
    cross = m["revocability"]["cross_key"]["eer"]["value"]
    assert 0.3 < cross <= 0.7  # key 0 and key 1 faces of one person: as foreign as other people
    assert m["revocability"]["match_rate"]["0.01"]["value"] < 0.1
    assert m["unlinkability_d_sys"]["value"] < 0.3
    # the target's own photo under the target's key is the target's template (verification needs
    # it), while the other people's photos under it are new people: they match no more than strangers
    sk = m["stolen_key"]
    assert sk["rank_one"]["value"] == 1.0 and sk["impostor_fmr"]["0.001"]["value"] <= 0.01
    for figure in (m["originals"]["eer"], m["preservation"]["auc"], m["unlinkability_d_sys"]):
        low, high = figure["ci95"]
        assert low <= figure["value"] <= high
    # every target but D↔sys: one person's photos under two keys give 16 independent mated scores
    # (a person's photos share their two identities), and the histogram estimate of identical
    # distributions from 16 values is ≈ 0.17, not 0 (≈ 0.08 from 128 people): a bias, not linkage
    assert failed(m) == {measure("revocability", "other_photo", "d_sys")}
    assert m["revocability"]["other_photo"]["d_sys"]["value"] < 0.25


def test_a_key_that_alone_decides_the_face_gives_the_identity_away(matcher: NetworkMatcher) -> None:
    m = evaluate_matcher(matcher, templates("key alone"), replicates=200)
    sk = m["stolen_key"]
    # under the target's key everybody becomes the target, while other people under their own keys do not
    assert sk["impostor_fmr"]["0.001"]["value"] == 1.0 and sk["ordinary_impostor_fmr"]["0.001"]["value"] == 0.0
    assert sk["rank_one"]["value"] < 0.5  # the target's own photo is lost among them: rank-1 near chance
    assert measure("stolen_key", "impostor_fmr", "0.001") in failed(m)


def test_a_fresh_identity_per_photo_fails_the_enroll_flow(matcher: NetworkMatcher) -> None:
    m = evaluate_matcher(matcher, templates("per photo"), replicates=200)
    assert m["enroll_flow"]["eer"]["value"] > 0.3  # the mean of unrelated faces is nobody's
    assert m["same_key_across_photos"]["match_rate"]["value"] == 0.0
    assert {measure("enroll_flow", "eer"), measure("same_key_across_photos", "match_rate")} <= failed(m)


def test_faces_the_matcher_does_not_find_are_no_protection(matcher: NetworkMatcher) -> None:
    t = templates("nothing")
    lost = np.arange(0, len(t.protected), 4)  # a quarter of the protected faces: not found
    t.key_sets[0][lost] = np.nan
    m = evaluate_matcher(matcher, t, replicates=50)
    assert m["psr"]["0.001"]["value"] == 0.25  # counted as protected
    assert m["detection"]["rate"]["value"] == 0.75 and m["detection"]["found"] == 36
    assert m["psr_detected"]["0.001"]["value"] == 0.0  # the faces it finds all match their originals
    assert measure("detection", "rate") in failed(m)


def test_an_enrolled_template_is_the_mean_as_the_matcher_compares() -> None:
    rng = np.random.default_rng(0)
    cosine = unit(rng.normal(size=(3, DIM)))
    mean = enrolled_template(cosine)
    assert np.allclose(mean, unit(cosine.mean(axis=0)))  # the client's L2-normalised mean
    distances = 0.3 * cosine  # dlib-like descriptors, compared by distance: the plain mean
    assert np.allclose(enrolled_template(distances), distances.mean(axis=0))
    distances[1] = np.nan  # a face the matcher does not find is left out
    assert np.allclose(enrolled_template(distances), distances[[0, 2]].mean(axis=0))
    assert np.isnan(enrolled_template(np.full((2, DIM), np.nan))).all()
