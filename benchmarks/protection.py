"""Protection on real photos with real weights: which W+ rows carry identity, what the attribute
loss buys, whether the targets hold, and what augmented views buy (README, "mobile1024: the
measured choices").

Photos: ../shared/data/faces, the first ``--people`` identities with two single-face photos each,
aligned with the bundle's framing. Every photo is inverted once with the bundle's settings (cached
in ``--cache``, never committed: they are the originals' latents), then protected under fixed
keys with the bundle's defaults except what a table varies:

* ``rows``: each candidate identity-row range, refinement off (steps 0; on for ``REFINED``), on the first photo
  of each person: the loss network's cos(protected, original), the independent dlib distance
  (> 0.6: another person), the MTCNN landmark shift over the inter-ocular distance, the mean pixel
  change outside the paste-back ellipse (hair, background) and cos between two keys' faces;
* ``attributes``: the default rows with the attribute loss off, pixels only, and the default;
* ``targets``: every photo under one key: de-identification, detection, landmark shift, and
  consistency (the two photos of one person under one key matched by dlib; different people under
  one key never);
* ``views``: the two photos of the first people with ``--views`` augmented views against none.

    python -m benchmarks.protection --bundle BUNDLE --cache DIR [--people 8] [--tables rows ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anonymixer import bundle
from anonymixer.config import resolve_settings
from anonymixer.face_detection import FaceDetector
from anonymixer.images import save_grid
from anonymixer.losses import FRFeatureLoss
from anonymixer.paste_back import FaceMask
from anonymixer.protect import Protector
from benchmarks.face_measures import (
    MEASURE_SIZE,
    Photo,
    embeddings,
    labelled_photos,
    landmark_shift,
    landmarks,
    nanmean,
    outside_face_change,
    to_256,
)
from benchmarks.machine import results_dir, save_record
from evaluation.matchers import DLIB_SAME_PERSON, DlibMatcher, as_unit

KEYS = (b"benchmark key A", b"benchmark key B")
# Candidate identity rows [start, stop) of MobileStyleGAN's 23 (row 0: 4×4; block i: rows 1+3i..3+3i
# at 8·2^i px wavelets, i.e. 16·2^i px of image). The paper's rows 3–7 of StyleGAN2 sit at 16–64 px.
CANDIDATES = ((1, 7), (4, 10), (1, 10), (4, 13), (1, 13))
REFINED = ((4, 10), (1, 10), (4, 13))  # also refined (2 CPU cores: each costs steps × 2.3 s per face)
TABLES = ("rows", "attributes", "targets", "views")


class Bench:
    def __init__(self, model: bundle.Bundle, photos: list[Photo], cache: Path) -> None:
        self.model, self.photos = model, photos
        self.detector = FaceDetector()
        self.dlib = DlibMatcher(self.detector)
        self.defaults = resolve_settings(model.config).config
        self.latents = self._latents(cache)
        mask = FaceMask().reframed(model.framing)
        coords = np.arange(MEASURE_SIZE, dtype=np.float64)
        self.face_region = mask.alpha(coords[None, :], coords[:, None], MEASURE_SIZE) > 0
        self.original = {p.name: p.aligned for p in photos}
        self.descriptor = {p.name: self.dlib.descriptor(p.aligned) for p in photos}
        self.points = {p.name: landmarks(self.detector, p.aligned) for p in photos}

    def _latents(self, cache: Path) -> dict[str, torch.Tensor]:
        c = self.defaults
        cache.mkdir(parents=True, exist_ok=True)
        settings = f"{c.inversion_steps}-{c.inversion_lr}-{c.inversion_perceptual_weight}"
        path = cache / f"latents-{self.model.profile}-{self.model.framing}-{settings}.pt"
        found = torch.load(path) if path.exists() else {}
        protector = Protector(self.model, self.defaults)
        for p in tqdm([p for p in self.photos if p.name not in found], desc="inverting photos"):
            found[p.name] = protector.invert([p.aligned])[0]
            torch.save(found, path)
        return found

    def protect(self, photos: list[Photo], key: bytes, **overrides) -> tuple[np.ndarray, np.ndarray, float]:
        """(protected uint8 at 256, templates, seconds per photo) under ``overrides`` of the defaults."""
        pixel_only = overrides.pop("pixel_only", False)
        config = dataclasses.replace(self.defaults, **overrides)
        pixels = FRFeatureLoss(self.model.face_embedder, feature_weight=0.0) if pixel_only else None
        protector = Protector(self.model, config, attribute_loss=pixels)
        start = time.perf_counter()
        faces = []
        for p in tqdm(photos, desc=f"protect {overrides}", leave=False):
            faces += protector.protect([p.aligned], key, latents=self.latents[p.name][None])
        seconds = (time.perf_counter() - start) / len(photos)
        images = to_256(as_unit(np.stack([f.image for f in faces])))
        return images, np.stack([f.template for f in faces]), seconds

    def measure(self, photos: list[Photo], images: np.ndarray) -> dict:
        e_x = embeddings(self.model, np.stack([p.aligned for p in photos]))
        e_y = embeddings(self.model, images)
        rows = []
        for p, image, cos in zip(photos, images, (e_x * e_y).sum(1).tolist(), strict=True):
            points = landmarks(self.detector, image)
            rows.append(
                {
                    "fr_cos": cos,
                    "dlib": self.dlib.distance(self.descriptor[p.name], self.dlib.descriptor(image)),
                    "detected": points is not None,
                    "landmark_shift": landmark_shift(self.points[p.name], points),
                    "outside_change": outside_face_change(p.aligned, image, self.face_region),
                }
            )
        out = {
            k: round(nanmean([r[k] for r in rows]), 4) for k in ("fr_cos", "dlib", "landmark_shift", "outside_change")
        }
        out["dlib_other_person"] = f"{sum(r['dlib'] > DLIB_SAME_PERSON for r in rows)}/{len(rows)}"
        out["detected"] = f"{sum(r['detected'] for r in rows)}/{len(rows)}"
        return out

    def reconstruction(self, photos: list[Photo]) -> dict:
        with torch.no_grad():
            images = to_256(self.model.generator.synthesis(torch.stack([self.latents[p.name] for p in photos])))
        return self.measure(photos, images)


def firsts(photos: list[Photo]) -> list[Photo]:
    return [next(p for p in photos if p.person == person) for person in dict.fromkeys(p.person for p in photos)]


def rows_table(bench: Bench, people: int, steps: list[int]) -> list[dict]:
    photos = firsts(bench.photos)[:people]
    table = [{"rows": "reconstruction", **bench.reconstruction(photos)}]
    for rows in [c for c in CANDIDATES if c[1] <= bench.model.n_latent]:
        for n in steps if rows in REFINED else steps[:1]:
            images, templates, seconds = bench.protect(photos, KEYS[0], identity_layers=rows, steps=n, views=0)
            entry = {
                "rows": list(rows),
                "steps": n,
                **bench.measure(photos, images),
                "seconds_per_face": round(seconds, 1),
            }
            if n == 0:
                _, other, _ = bench.protect(photos, KEYS[1], identity_layers=rows, steps=0, views=0)
                entry["cos_between_keys"] = round(float((templates * other).sum(1).mean()), 4)
            table.append(entry)
            print(entry, flush=True)
    return table


def attributes_table(bench: Bench, people: int) -> list[dict]:
    photos = firsts(bench.photos)[:people]
    table = []
    for name, overrides in (
        ("none", {"attribute_weight": 0.0}),
        ("pixels at 64 px only", {"pixel_only": True}),
        (f"{bench.defaults.attribute_loss} (default)", {}),
    ):
        images, _, seconds = bench.protect(photos, KEYS[0], views=0, **overrides)
        entry = {"attribute_loss": name, **bench.measure(photos, images), "seconds_per_face": round(seconds, 1)}
        table.append(entry)
        print(entry, flush=True)
    return table


def consistency(bench: Bench, photos: list[Photo], images: np.ndarray) -> dict:
    d = [bench.dlib.descriptor(im) for im in images]
    same, different = [], []
    for i, j in itertools.combinations(range(len(photos)), 2):
        (same if photos[i].person == photos[j].person else different).append(bench.dlib.distance(d[i], d[j]))
    return {
        "same_person_same_key_matched": f"{sum(v < DLIB_SAME_PERSON for v in same)}/{len(same)}",
        "same_person_same_key_dlib": [round(v, 3) for v in same],
        "different_people_same_key_matched": f"{sum(v < DLIB_SAME_PERSON for v in different)}/{len(different)}",
        "different_people_same_key_min_dlib": round(float(np.nanmin(different)), 3) if different else None,
    }


def targets_table(bench: Bench, grid: Path) -> dict:
    images, _, seconds = bench.protect(bench.photos, KEYS[0], views=0)
    with torch.no_grad():
        recon = to_256(bench.model.generator.synthesis(torch.stack([bench.latents[p.name] for p in bench.photos])))
    save_grid([as_unit(np.stack([p.aligned for p in bench.photos])), as_unit(recon), as_unit(images)], grid, tile=128)
    out = {
        "photos": len(bench.photos),
        "views": 0,
        **bench.measure(bench.photos, images),
        **consistency(bench, bench.photos, images),
    }
    out["seconds_per_face"] = round(seconds, 1)
    out["grid"] = grid.name
    print(out, flush=True)
    return out


def views_table(bench: Bench, people: int, views: int) -> list[dict]:
    chosen = {p.person for p in firsts(bench.photos)[:people]}
    photos = [p for p in bench.photos if p.person in chosen]
    table = []
    for n in (0, views):
        images, templates, seconds = bench.protect(photos, KEYS[0], views=n)
        genuine = [
            float(templates[i] @ templates[j])
            for i, j in itertools.combinations(range(len(photos)), 2)
            if photos[i].person == photos[j].person
        ]
        entry = {
            "views": n,
            "genuine_fr_cos_same_key": round(float(np.mean(genuine)), 4),
            **consistency(bench, photos, images),
            "seconds_per_photo": round(seconds, 1),
        }
        table.append(entry)
        print(entry, flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cache", required=True, help="folder for the photos' inversions (never commit it)")
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--rows-people", type=int, default=4)
    parser.add_argument("--views-people", type=int, default=2)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = bundle.load(args.bundle)
    detector = FaceDetector()
    aligned = Path(args.cache) / f"aligned-{model.framing}.pt"
    if aligned.exists():
        photos = torch.load(aligned, weights_only=False)
    else:
        photos = labelled_photos(model.framing, detector, per_person=2)
        aligned.parent.mkdir(parents=True, exist_ok=True)
        torch.save(photos, aligned)
    pairs = [p for p in photos if sum(q.person == p.person for q in photos) == 2]
    people = list(dict.fromkeys(p.person for p in pairs))[: args.people]
    bench = Bench(model, [p for p in pairs if p.person in people], Path(args.cache))
    out_dir = Path(args.out) if args.out else results_dir()
    results: dict = {}
    start = time.perf_counter()
    if "rows" in args.tables:
        results["rows"] = rows_table(bench, args.rows_people, [0, bench.defaults.steps])
    if "attributes" in args.tables:
        results["attributes"] = attributes_table(bench, args.rows_people)
    if "targets" in args.tables:
        results["targets"] = targets_table(bench, out_dir / f"protection_{model.profile}_grid.jpg")
    if "views" in args.tables:
        results["views"] = views_table(bench, args.views_people, args.views)
    save_record(
        out_dir / f"protection_{model.profile}.json",
        "protection",
        results,
        bundle=model.profile,
        algorithm=dataclasses.asdict(bench.defaults),
        photos=[p.name for p in bench.photos],
        wall_seconds=round(time.perf_counter() - start),
        command="python -m benchmarks.protection "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v is not None
        ),
    )


if __name__ == "__main__":
    main()
