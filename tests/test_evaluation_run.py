"""What an evaluation run protects — every stolen-key target, the client's enroll groups — and the
outcome file that ``--rescore`` reads back, with a stand-in protection (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anonymixer.keys import SecretKey
from evaluation.run import (
    Face,
    Outcome,
    Settings,
    load_outcome,
    person_key,
    plan,
    protect_all,
    protect_enrolled,
    save_outcome,
)

SECRET = b"s" * 32


def faces() -> list[Face]:
    """a: three photos, b: two, c: one."""
    people = ["a", "a", "a", "b", "b", "c"]
    return [Face(f"{i}.jpg", p, np.full((256, 256, 3), i, np.uint8)) for i, p in enumerate(people)]


class StandIn:
    """A face per (photo, key): the photo's number, plus one per key byte sum; records group calls."""

    def __init__(self) -> None:
        self.groups: list[tuple[list[int], SecretKey]] = []

    @staticmethod
    def face(index: int, key: SecretKey) -> np.ndarray:
        return np.full((256, 256, 3), (index + sum(key.reveal())) % 256, np.uint8)

    def __call__(self, index: int, image: np.ndarray, keys: list[SecretKey]) -> list[np.ndarray]:
        return [self.face(index, key) for key in keys]

    def group(self, indices: list[int], images: list[np.ndarray], key: SecretKey) -> list[np.ndarray]:
        self.groups.append((indices, key))
        return [self.face(i, key) + 1 for i in indices]


def test_every_person_with_two_photos_is_a_target_and_enrols_the_others() -> None:
    assert Settings().stolen_keys == 0
    layout = plan(faces(), Settings(photos_per_person=0), SECRET)
    assert layout.probes == {"a": 0, "b": 3, "c": 5}
    assert layout.targets == {"a": 1, "b": 4}  # c has a single photo: nothing to enrol, no target
    assert layout.enrolled == {"a": [1, 2], "b": [4]}
    assert plan(faces(), Settings(photos_per_person=0, stolen_keys=1), SECRET).targets == {"a": 1}
    assert plan(faces(), Settings(photos_per_person=2), SECRET).enrolled == {"a": [1], "b": [4]}


def test_enroll_groups_are_protected_together_under_key_set_0_and_read_back(tmp_path: Path) -> None:
    photos, protection = faces(), StandIn()
    layout = plan(photos, Settings(photos_per_person=0), SECRET)
    key_sets, stolen = protect_all(photos, layout, protection)
    enrolled = protect_enrolled(photos, layout, protection, key_sets[0])
    key = person_key(SECRET, 0, "a")
    assert [(indices, k.reveal()) for indices, k in protection.groups] == [([1, 2], key.reveal())]
    assert np.array_equal(enrolled["a"], np.stack([StandIn.face(1, key) + 1, StandIn.face(2, key) + 1]))
    # a group of one is its photo protected alone under key set 0: that face, no second call
    assert np.array_equal(enrolled["b"], key_sets[0][[layout.protected.index(4)]])

    outcome = Outcome(photos, layout, key_sets, stolen, enrolled, {}, None, {"protect": 1.0})
    again = load_outcome(save_outcome(outcome, tmp_path), photos)
    assert again.layout.enrolled == layout.enrolled and again.layout.targets == layout.targets
    assert set(again.enrolled) == {"a", "b"}
    for person, group in enrolled.items():
        assert np.array_equal(again.enrolled[person], group)
    assert all(np.array_equal(again.stolen[pair], face) for pair, face in stolen.items())
