"""One evaluation run: photos → protected faces, attacks and reconstructions → every matcher's
templates → the figures (:mod:`evaluation.protocol`) → the report (:mod:`evaluation.report`).

Every photo is detected and aligned as scene mode does it (the bundle's framing, 256 px). The
protected photos are the first ``photos_per_person`` of each person; each is protected alone (as
a user sends it) under its person's key of every key set, and — for the stolen-key scenario —
each person's probe photo (their first) under every target's key, all in one call per photo so
that the photo is inverted once. Then the client's enroll flow: each person's other protected
photos, protected together as one group under their key of key set 0. Keys are derived from a
random per-run secret and never written.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from anonymixer import bundle as bundle_io
from anonymixer.config import Overrides, resolve_settings
from anonymixer.config import Settings as ProtectSettings
from anonymixer.face_detection import FaceDetector, largest_face
from anonymixer.images import open_rgb
from anonymixer.keys import SecretKey
from anonymixer.protect import Protector
from anonymixer.scene import align_face
from evaluation.attacks import reconstruct
from evaluation.matchers import Matcher, as_aligned
from evaluation.protocol import Templates


class Protect(Protocol):
    """How the photos are protected (in-process or through the service); the protected faces
    come back uint8 [256, 256, 3] each."""

    def __call__(self, index: int, image: np.ndarray, keys: list[SecretKey]) -> list[np.ndarray]:
        """Photo ``index`` (its aligned face) alone under each of ``keys``."""
        ...

    def group(self, indices: list[int], images: list[np.ndarray], key: SecretKey) -> list[np.ndarray]:
        """Photos ``indices`` (their aligned faces) of one person as one group under ``key``."""
        ...


@dataclass
class Face:
    file: str
    person: str
    aligned: np.ndarray  # uint8 [256, 256, 3]


@dataclass
class Settings:
    keys: int = 2
    photos_per_person: int = 2  # 0: all
    stolen_keys: int = 0  # targets of the stolen-key scenario (the first people with two protected photos; 0: all)
    steps: int | None = None  # refinement steps (None: the algorithm's)
    inversion_steps: int | None = None  # in-process only (None: the algorithm's)
    views: int | None = None  # in-process only
    bootstrap: int = 1000


def load_faces(data: Path, identities: Path, framing: str, limit_people: int | None) -> tuple[list[Face], list[str]]:
    rows = list(csv.DictReader(identities.open()))
    people = sorted({r["identity"] for r in rows})[:limit_people]
    detector = FaceDetector()
    faces, skipped = [], []
    for row in tqdm([r for r in rows if r["identity"] in people], desc="detect and align", unit="photo"):
        photo = np.asarray(open_rgb(data / row["file"]))
        found = detector.detect(photo)
        if not len(found):
            skipped.append(row["file"])
            continue
        faces.append(Face(row["file"], row["identity"], align_face(photo, largest_face(found), 256, framing)[0]))
    return faces, skipped


def person_key(secret: bytes, key_set: int, person: str) -> SecretKey:
    return SecretKey(hmac.new(secret, f"{key_set}/{person}".encode(), hashlib.sha256).digest())


@dataclass
class Plan:
    protected: list[int]  # indices of the protected photos
    probes: dict[str, int]  # person → probe photo (their first protected photo)
    targets: dict[str, int]  # stolen-key target → enrolled photo (their second protected photo)
    enrolled: dict[str, list[int]]  # person → the photos of their enroll group (protected photos but the probe)
    jobs: dict[int, list[tuple[str, SecretKey]]]  # photo → [(job, key)]; job "set/<s>" or "stolen/<target>"
    enrol_keys: dict[str, SecretKey]  # person → the key of their enroll group (key set 0's)


def plan(faces: list[Face], settings: Settings, secret: bytes) -> Plan:
    per_person: dict[str, list[int]] = {}
    for i, face in enumerate(faces):
        chosen = per_person.setdefault(face.person, [])
        if not settings.photos_per_person or len(chosen) < settings.photos_per_person:
            chosen.append(i)
    protected = sorted(i for chosen in per_person.values() for i in chosen)
    probes = {p: chosen[0] for p, chosen in per_person.items()}
    eligible = [p for p in sorted(per_person) if len(per_person[p]) >= 2]
    targets = {p: per_person[p][1] for p in eligible[: settings.stolen_keys or None]}  # 0: every one
    enrolled = {p: per_person[p][1:] for p in eligible}
    jobs: dict[int, list[tuple[str, SecretKey]]] = {i: [] for i in protected}
    for i in protected:
        for s in range(settings.keys):
            jobs[i].append((f"set/{s}", person_key(secret, s, faces[i].person)))
    for target in targets:
        for person, probe in probes.items():
            if person != target:  # the target's own probe under its key is key set 0's
                jobs[probe].append((f"stolen/{target}", person_key(secret, 0, target)))
    enrol_keys = {p: person_key(secret, 0, p) for p in enrolled}
    return Plan(protected, probes, targets, enrolled, jobs, enrol_keys)


class LocalProtection:
    """In-process with the bundle: each photo inverted once, its reconstruction kept."""

    def __init__(self, protector: Protector, steps: int | None) -> None:
        self.protector, self.steps = protector, steps
        self.reconstructions: dict[int, np.ndarray] = {}
        self.latents: dict[int, torch.Tensor] = {}  # photo → its W+ [1, n_latent, d]

    def reconstruct(self, index: int, image: np.ndarray) -> torch.Tensor:
        w = self.latents[index] = self.protector.invert([image])
        self.reconstructions[index] = as_aligned(self.protector.render(w))[0]
        return w

    def __call__(self, index: int, image: np.ndarray, keys: list[SecretKey]) -> list[np.ndarray]:
        w = self.reconstruct(index, image).expand(len(keys), -1, -1)
        faces = self.protector.protect([image] * len(keys), keys, steps=self.steps, latents=w)
        return list(as_aligned(np.stack([f.image for f in faces])))

    def group(self, indices: list[int], images: list[np.ndarray], key: SecretKey) -> list[np.ndarray]:
        # each photo's latent from its protection alone: the inversion depends on the image alone
        pairs = zip(indices, images, strict=True)
        w = torch.cat([self.latents[i] if i in self.latents else self.reconstruct(i, image) for i, image in pairs])
        faces = self.protector.protect(images, key, groups=[0] * len(images), steps=self.steps, latents=w)
        return list(as_aligned(np.stack([f.image for f in faces])))


class ServiceProtection:
    """Through the service over gRPC (the client library); the server's own settings apply."""

    def __init__(self, url: str, steps: int | None) -> None:
        from anonymixer_client import AnonymixerClient

        self.client = AnonymixerClient(url, timeout_s=3600)
        self.client.wait_until_ready(60)
        self.steps = steps

    def __call__(self, index: int, image: np.ndarray, keys: list[SecretKey]) -> list[np.ndarray]:
        return decoded(self.client.protect([image] * len(keys), [k.reveal() for k in keys], steps=self.steps))

    def group(self, indices: list[int], images: list[np.ndarray], key: SecretKey) -> list[np.ndarray]:
        # the client's enroll call (AnonymixerClient.enroll), whose faces every matcher embeds itself
        return decoded(self.client.protect(images, key.reveal(), groups=[0] * len(images), steps=self.steps))


def decoded(faces: list[Any]) -> list[np.ndarray]:
    """The service's PNGs → aligned faces."""
    from PIL import Image

    return list(as_aligned(np.stack([np.asarray(Image.open(io.BytesIO(f.png)).convert("RGB")) for f in faces])))


def algorithm(model: bundle_io.Bundle, settings: Settings) -> ProtectSettings:
    """The bundle's settings under the evaluation's own options (``--inversion-steps``, ``--views``;
    ``--steps`` goes with each request)."""
    options = {
        name: value
        for name, value in (("inversion_steps", settings.inversion_steps), ("views", settings.views))
        if value is not None
    }
    return resolve_settings(model.config, Overrides("evaluation options", options))


@dataclass
class Outcome:
    """What a run produced, for the protocol and the report."""

    faces: list[Face]
    layout: Plan
    key_sets: list[np.ndarray]  # per key set: uint8 [len(protected), 256, 256, 3]
    stolen: dict[tuple[str, str], np.ndarray]  # (target, person) → the person's probe under the target's key
    enrolled: dict[str, np.ndarray]  # person → uint8 [len(layout.enrolled[person]), 256, 256, 3]: their group
    attacks: dict[str, np.ndarray]  # name → uint8 [people, 256, 256, 3], people sorted
    reconstructions: np.ndarray | None  # uint8 [len(protected), 256, 256, 3]: render(invert(original))
    seconds: dict[str, float]


def protect_all(faces: list[Face], layout: Plan, protect: Protect) -> tuple[list[np.ndarray], dict]:
    key_sets: dict[str, list[np.ndarray]] = {}
    stolen: dict[tuple[str, str], np.ndarray] = {}
    with tqdm(total=sum(map(len, layout.jobs.values())), desc="protect", unit="face") as progress:
        for i, jobs in layout.jobs.items():
            images = protect(i, faces[i].aligned, [key for _, key in jobs])
            for (job, _), image in zip(jobs, images, strict=True):
                kind, _, name = job.partition("/")
                if kind == "set":
                    key_sets.setdefault(name, []).append(image)
                else:
                    stolen[(name, faces[i].person)] = image
            progress.update(len(jobs))
    return [np.stack(key_sets[str(s)]) for s in range(len(key_sets))], stolen


def protect_enrolled(faces: list[Face], layout: Plan, protect: Protect, key_set_0: np.ndarray) -> dict[str, np.ndarray]:
    """Each person's enroll group, protected together under their key of key set 0."""
    position = {photo: k for k, photo in enumerate(layout.protected)}
    enrolled = {}
    for person, photos in tqdm(layout.enrolled.items(), desc="enrol", unit="person"):
        if len(photos) == 1:  # a group of one is its photo protected alone (views and all): key set 0's face
            enrolled[person] = key_set_0[[position[photos[0]]]]
        else:
            enrolled[person] = np.stack(
                protect.group(photos, [faces[i].aligned for i in photos], layout.enrol_keys[person])
            )
    return enrolled


def run_protection(
    faces: list[Face], settings: Settings, *, protector: Protector | None, server: str | None
) -> Outcome:
    """Protect every job (in-process with ``protector``, or through the service at ``server``),
    reconstruct, attack (the attacks and reconstructions need the bundle's ``protector``)."""
    layout = plan(faces, settings, secrets.token_bytes(32))
    seconds = {}
    start = time.perf_counter()
    if server:
        protect: Protect = ServiceProtection(server, settings.steps)
    else:
        assert protector is not None
        protect = local = LocalProtection(protector, settings.steps)
    key_sets, stolen = protect_all(faces, layout, protect)
    enrolled = protect_enrolled(faces, layout, protect, key_sets[0])
    seconds["protect"] = time.perf_counter() - start
    reconstructions, attacks = None, {}
    if protector is not None:
        start = time.perf_counter()
        if server:  # the service never returns a latent: invert here as it did there
            local = LocalProtection(protector, 0)
            for i in tqdm(layout.protected, desc="reconstruct", unit="face"):
                local.reconstruct(i, faces[i].aligned)
        reconstructions = np.stack([local.reconstructions[i] for i in layout.protected])
        probe = {i: k for k, i in enumerate(layout.protected)}
        attacked = [key_sets[0][probe[layout.probes[p]]] for p in sorted(layout.probes)]
        # the key-aware attack holds the key each probe was protected with (key set 0)
        keys = [dict(layout.jobs[layout.probes[p]])["set/0"] for p in sorted(layout.probes)]
        per_face = [
            reconstruct(protector, face[None], [key])
            for face, key in zip(tqdm(attacked, desc="attack", unit="face"), keys, strict=True)
        ]
        attacks = {name: np.concatenate([r[name] for r in per_face]) for name in per_face[0]}
        attacks["reconstruction"] = reconstructions[[probe[layout.probes[p]] for p in sorted(layout.probes)]]
        seconds["attack"] = time.perf_counter() - start
    return Outcome(faces, layout, key_sets, stolen, enrolled, attacks, reconstructions, seconds)


OUTCOME = "outcome.npz"
NO_FACES = np.zeros((0, 256, 256, 3), np.uint8)


def save_outcome(outcome: Outcome, out: Path) -> Path:
    """The run's protected faces, attacks and reconstructions (never a key: the plan's jobs are
    left out), so that ``--rescore`` can score them again — with another matcher, say."""
    pairs = list(outcome.stolen)
    enrolled = sorted(outcome.enrolled)
    arrays: dict[str, Any] = {
        "files": np.array([f.file for f in outcome.faces]),
        "protected": np.array(outcome.layout.protected),
        "probes": np.array(json.dumps(outcome.layout.probes)),
        "targets": np.array(json.dumps(outcome.layout.targets)),
        "enrolled_photos": np.array(json.dumps(outcome.layout.enrolled)),
        "seconds": np.array(json.dumps(outcome.seconds)),
        "key_sets": np.stack(outcome.key_sets),
        "stolen_pairs": np.array(["/".join(pair) for pair in pairs]),
        "stolen": np.stack([outcome.stolen[pair] for pair in pairs]) if pairs else NO_FACES,
        "enrolled": np.concatenate([outcome.enrolled[p] for p in enrolled]) if enrolled else NO_FACES,
        "attack_names": np.array(list(outcome.attacks)),
        **{f"attack/{name}": images for name, images in outcome.attacks.items()},
    }
    if outcome.reconstructions is not None:
        arrays["reconstructions"] = outcome.reconstructions
    np.savez_compressed(out / OUTCOME, **arrays)
    return out / OUTCOME


def load_outcome(path: Path, faces: list[Face]) -> Outcome:
    """:func:`save_outcome`'s file, for the same photos (the same --data, --identities, --limit-people)."""
    saved = np.load(path)
    if saved["files"].tolist() != [f.file for f in faces]:
        raise SystemExit(f"{path}: protected from other photos than these (same --data, --identities, --limit-people?)")
    if "enrolled" not in saved:
        raise SystemExit(f"{path}: protected before the evaluation ran the enroll flow; protect again")
    probes, targets = json.loads(str(saved["probes"])), json.loads(str(saved["targets"]))
    groups: dict[str, list[int]] = json.loads(str(saved["enrolled_photos"]))
    layout = Plan(saved["protected"].tolist(), probes, targets, groups, {}, {})
    stolen = dict(zip((tuple(p.split("/", 1)) for p in saved["stolen_pairs"]), saved["stolen"], strict=True))
    bounds = np.cumsum([0, *(len(groups[p]) for p in sorted(groups))])  # the groups, concatenated by person
    enrolled = {p: saved["enrolled"][a:b] for p, a, b in zip(sorted(groups), bounds[:-1], bounds[1:], strict=True)}
    attacks = {str(name): saved[f"attack/{name}"] for name in saved["attack_names"]}
    reconstructions = saved.get("reconstructions")
    seconds = json.loads(str(saved["seconds"]))
    return Outcome(faces, layout, list(saved["key_sets"]), stolen, enrolled, attacks, reconstructions, seconds)


def templates(outcome: Outcome, matcher: Matcher) -> Templates:
    faces, layout = outcome.faces, outcome.layout
    stolen = list(outcome.stolen)
    embedded_stolen = matcher.embed(np.stack([outcome.stolen[k] for k in stolen])) if stolen else np.zeros((0, 1))
    return Templates(
        people=[f.person for f in faces],
        originals=matcher.embed(np.stack([f.aligned for f in faces])),
        protected=layout.protected,
        key_sets=[matcher.embed(images) for images in outcome.key_sets],
        probes=layout.probes,
        targets=layout.targets,
        stolen=dict(zip(stolen, embedded_stolen, strict=True)),
        attacks={name: matcher.embed(images) for name, images in outcome.attacks.items()},
        enrolled={person: matcher.embed(images) for person, images in outcome.enrolled.items()},
    )
