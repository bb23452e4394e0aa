"""How visible scene mode's paste-back is, measured from the outside as a user's eye would: from
the original photo, the composite and landmarks that no part of the product uses.

Landmarks: MTCNN (:class:`anonymixer.face_detection.FaceDetector`) finds each face's box in the
original, dlib's 68-point shape predictor (``face_recognition_models``, the ``eval`` extra) places
the landmarks inside it. The 68-point predictor is used only here, for measuring, never in the
product: the product's own 5 MTCNN points place the paste, so they could not judge it.

Regions, per face, inside a box twice the detection box around it (the *2× box*):

* **F, the photo's own face**: the jaw (points 0–16), then the eyebrows (26 … 17) moved up by
  the height from the brows to the base of the nose (point 33): the forehead by the rule of
  thirds, up to about the hairline. (A first version lifted the brows only by their height above
  the eyes, which counted the forehead's own skin as outside the face.) Whatever the paste changes
  outside F (dilated by the ring width) is hair, ears, neck or background.
* **P, the pasted region**: where the composite differs from the original by CIE76 ΔE > 2 (just
  noticeable), cleaned by a small opening and hole filling; the components touching the middle of
  the detection box are kept (else the largest one overlapping the box; none: the face is
  "unchanged"). Measured, not taken from the paste's mask, so any paste-back can be judged.

Measures (the ring width w is max(2, 2 % of the face box's width) px):

* **Edge colour step** (target ≤ 2 ΔE): P's edge cut into 36 sectors of 10° around its
  centroid; per sector the ΔE between the mean LAB colour of P's pixels within w of its boundary
  and of the pixels outside P within w of it, in the composite minus the same in the original
  (the photo's own edges, at the jaw say, are not the paste's fault). A seam shows as a step.
  The summary takes the worst 10 % of all sectors of all faces (90th percentile) and the mean.
* **Texture ratio** (target ≥ 0.8): fine-texture energy, the mean |L − gaussian(L, σ = 3 px)|
  of LAB lightness over P eroded by w (the edge itself excluded), composite ÷ original. A
  generated face smoother than the skin around it (pores, grain, noise) reads as a pasted mask.
* **Generated pixels outside the face** (target 0): pixels of the 2× box outside F dilated by w
  where the composite is clearly changed (ΔE > 5); with the share of P outside dilated F.
* **Face covered**: the share of F inside P. Not seen by the eye but the guard of the three
  above: a paste-back that replaces less of the face scores better on them while it leaves the
  person's own features (an eye, the mouth) in place.

For the scene's privacy, the protected face (a) and the composite's face (b, re-detected and
aligned as the original was) are scored against the original aligned face by MobileFaceNet and dlib
at FMR 0.1 % (thresholds from the impostor pairs of all labelled photos, as benchmarks/identity_mix
computes them): blending the photo's own skin back must not bring the identity back.

    python -m benchmarks.paste_back_quality --pair ORIGINAL COMPOSITE [--pair …] [--tag _couple]
    python -m benchmarks.paste_back_quality [--variant current] [--tag _today]

Without ``--pair``: the labelled photos of ../shared/data/faces that have a cached inversion in
build/cache/identity_mix (30 photos: inverting another costs about 200 s on a 2-core CPU). Each
photo's largest face gets a stand-in protected face, cheap yet real: its inversion mixed under a
per-photo key with the bundle's algorithm, unrefined (``--steps N``: refined N Adam steps as the
service does, about 2 s a step on a 2-core CPU), rendered at full resolution (cached in
build/cache/paste_back_quality). Each ``--variant`` (a name of :data:`VARIANTS` or
``module:function``, a :data:`Compose`) pastes it back; all are measured side by side. A ``--pair``
composite that is the demo's side-by-side "photo | result" (out/demo/scenes/*.png) is split.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.color import rgb2lab
from tqdm import tqdm

from anonymixer import bundle, paste_back, scene
from anonymixer.face_detection import FaceDetector, largest_face
from anonymixer.images import open_rgb, save_grid
from anonymixer.keys import SecretKey
from benchmarks.machine import results_dir, save_record

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
BUNDLE = Path("build/cache/bundles/mobile1024-84e8d855e9e90e66")
INVERSIONS = Path("build/cache/identity_mix/inversions-mobile1024-ffhq-50-0.03-1.0.pt")
CACHE = Path("build/cache/paste_back_quality")
PASTED_DE = 2.0  # ΔE76 above which a pixel counts as pasted (just noticeable)
CHANGED_DE = 5.0  # ΔE76 above which a pixel outside the face counts as generated
SECTORS = 36
MIN_SECTOR_PX = 5
TEXTURE_SIGMA = 3.0
GRID_PHOTOS = 8

Compose = Callable[[np.ndarray, Sequence[scene.SceneFace], Sequence[np.ndarray], scene.SceneConfig], np.ndarray]


def with_blend(blend: str) -> Compose:
    """scene.compose with SceneConfig.blend = ``blend``."""

    def compose(
        photo: np.ndarray, faces: Sequence[scene.SceneFace], protected: Sequence[np.ndarray], config: scene.SceneConfig
    ) -> np.ndarray:
        return scene.compose(photo, faces, protected, dataclasses.replace(config, blend=blend))

    return compose


# (photo, faces, protected, config) → composite: "current" is the scene's own compose as configured;
# "blend=NAME" each of paste_back.BLENDS where the code has them (none before d920886)
VARIANTS: dict[str, Compose] = {
    "current": scene.compose,
    **{f"blend={b}": with_blend(b) for b in getattr(paste_back, "BLENDS", ())},
}


def code_version() -> dict[str, Any]:
    """The commit of the anonymixer package measured, and whether its files differ from it."""
    root = Path(scene.__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "anonymixer_modified": bool(git("status", "--porcelain", "anonymixer")),
    }


@dataclass(frozen=True)
class Shape:
    box: np.ndarray  # float [4]: the detection box x0, y0, x1, y1 (photo px)
    points: np.ndarray  # float [68, 2]: dlib's landmarks


# ---------------------------------------------------------------- regions and measures (no dlib)


def face_region(points: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """F: bool [H, W], the jaw and the eyebrows moved up to the hairline, taken by the rule of thirds
    (forehead as tall as brows to the base of the nose, point 33)."""
    brows = points[17:27]
    lift = points[33, 1] - brows[:, 1].mean()
    outline = np.concatenate([points[0:17], (brows - [0.0, lift])[::-1]])
    canvas = Image.new("1", (size[1], size[0]))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in outline.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool)


def double_box(box: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The box twice ``box``'s size about its centre, clipped to the photo: (x0, y0, x1, y1)."""
    (x0, y0, x1, y1), (h, w) = box[:4], shape[:2]
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    return max(int(cx - bw), 0), max(int(cy - bh), 0), min(int(np.ceil(cx + bw)), w), min(int(np.ceil(cy + bh)), h)


def ring_width(box: np.ndarray) -> int:
    return max(2, round(0.02 * float(box[2] - box[0])))


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 ΔE of two LAB images [..., 3]."""
    return np.linalg.norm(a - b, axis=-1)


def pasted_region(diff: np.ndarray, centre: tuple[slice, slice], inside: tuple[slice, slice]) -> np.ndarray:
    """P from the ΔE map ``diff`` [h, w]: changed by > PASTED_DE, opened, holes filled; the
    components touching ``centre`` (slices of the map), else the largest touching ``inside``."""
    changed = ndimage.binary_fill_holes(ndimage.binary_opening(diff > PASTED_DE, np.ones((3, 3)), iterations=2))
    labels, count = ndimage.label(changed)
    if not count:
        return np.zeros_like(changed)
    kept = np.unique(labels[centre])
    kept = kept[kept > 0]
    if not len(kept):
        touching = np.unique(labels[inside])
        touching = touching[touching > 0]
        if not len(touching):
            return np.zeros_like(changed)
        sizes = ndimage.sum_labels(changed, labels, touching)
        kept = touching[[int(np.argmax(sizes))]]
    return np.isin(labels, kept)


def rings(pasted: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of P within ``width`` of its boundary, and pixels outside P within ``width`` of it."""
    inner = pasted & (ndimage.distance_transform_edt(pasted) <= width)
    outer = ~pasted & (ndimage.distance_transform_edt(~pasted) <= width)
    return inner, outer


def edge_steps(original: np.ndarray, composite: np.ndarray, pasted: np.ndarray, width: int) -> list[float | None]:
    """Per 10° sector of P's edge (LAB images [h, w, 3]): the inside-vs-outside ΔE of the mean
    colours in the composite minus that in the original; None where a side has < 5 pixels."""
    inner, outer = rings(pasted, width)
    cy, cx = ndimage.center_of_mass(pasted)
    ys, xs = np.mgrid[: pasted.shape[0], : pasted.shape[1]]
    sector = ((np.arctan2(ys - cy, xs - cx) + np.pi) / (2 * np.pi) * SECTORS).astype(int) % SECTORS
    steps: list[float | None] = []
    for s in range(SECTORS):
        a, b = inner & (sector == s), outer & (sector == s)
        if a.sum() < MIN_SECTOR_PX or b.sum() < MIN_SECTOR_PX:
            steps.append(None)
            continue
        step = [float(delta_e(im[a].mean(0), im[b].mean(0))) for im in (composite, original)]
        steps.append(step[0] - step[1])
    return steps


def texture_ratio(original: np.ndarray, composite: np.ndarray, pasted: np.ndarray, width: int) -> float | None:
    """Fine-texture energy of the composite over the original's, in P eroded by ``width`` (LAB
    images [h, w, 3]); None when nothing is left of P or the original has no texture there."""
    core = ndimage.distance_transform_edt(pasted) > width
    if not core.any():
        return None
    energy = [
        float(np.abs(im[..., 0] - ndimage.gaussian_filter(im[..., 0], TEXTURE_SIGMA))[core].mean())
        for im in (composite, original)
    ]
    return energy[0] / energy[1] if energy[1] > 0 else None


def generated_outside(diff: np.ndarray, face: np.ndarray, pasted: np.ndarray, width: int) -> tuple[int, float]:
    """(pixels outside F dilated by ``width`` changed by ΔE > CHANGED_DE, share of P outside it)."""
    outside = ndimage.distance_transform_edt(~face) > width
    share = float((pasted & outside).sum() / pasted.sum()) if pasted.any() else 0.0
    return int(((diff > CHANGED_DE) & outside).sum()), share


def window(box: np.ndarray, origin: tuple[int, int], margin: float) -> tuple[slice, slice]:
    """Row and column slices of ``box`` less ``margin`` of its size on each side, in a crop whose
    top-left corner is the photo's ``origin`` (x, y)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    top, left = max(int(y0 + dy) - origin[1], 0), max(int(x0 + dx) - origin[0], 0)
    return slice(top, max(int(y1 - dy) - origin[1], top)), slice(left, max(int(x1 - dx) - origin[0], left))


def measure_face(original: np.ndarray, composite: np.ndarray, box: np.ndarray, face: np.ndarray) -> dict[str, Any]:
    """The measures of one face: uint8 RGB [H, W, 3] photos, its detection ``box`` [4] and its
    region F (bool [H, W])."""
    x0, y0, x1, y1 = double_box(box, original.shape)
    lab = [rgb2lab(im[y0:y1, x0:x1]) for im in (original, composite)]
    diff = delta_e(lab[1], lab[0])
    centre, inside = window(box, (x0, y0), 0.25), window(box, (x0, y0), 0.0)
    pasted, width = pasted_region(diff, centre, inside), ring_width(box)
    row: dict[str, Any] = {"box": [round(float(v), 1) for v in box[:4]], "ring_px": width}
    if not pasted.any():
        return {**row, "status": "unchanged"}
    steps = edge_steps(lab[0], lab[1], pasted, width)
    found = [s for s in steps if s is not None]
    own = face[y0:y1, x0:x1]
    outside, share = generated_outside(diff, own, pasted, width)
    ratio = texture_ratio(lab[0], lab[1], pasted, width)
    return {
        **row,
        "status": "measured",
        "pasted_px": int(pasted.sum()),
        "edge_step_p90": round(float(np.percentile(found, 90)), 2) if found else None,
        "edge_step_mean": round(float(np.mean(found)), 2) if found else None,
        "texture_ratio": None if ratio is None else round(ratio, 3),
        "generated_outside_px": outside,
        "pasted_outside_share": round(share, 4),
        "face_covered": round(float((pasted & own).sum() / max(own.sum(), 1)), 4),
        "edge_steps": [None if s is None else round(s, 2) for s in steps],
    }


def measure(original: np.ndarray, composite: np.ndarray, shapes: Sequence[Shape]) -> list[dict[str, Any]]:
    """One dict of measures per face of ``shapes`` (uint8 RGB [H, W, 3] photos)."""
    return [measure_face(original, composite, s.box, face_region(s.points, original.shape[:2])) for s in shapes]


def summarise(faces: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Over measured faces: edge step p90 and mean over all sectors, texture ratio median and min,
    generated pixels outside the faces in all, the mean share of P outside F."""
    done = [f for f in faces if f["status"] == "measured"]
    steps = [s for f in done for s in f["edge_steps"] if s is not None]
    ratios = [f["texture_ratio"] for f in done if f["texture_ratio"] is not None]

    def stat(fn: Callable[[Any], Any], values: list[float]) -> float | None:
        return round(float(fn(values)), 3) if values else None

    return {
        "faces": len(faces),
        "unchanged": len(faces) - len(done),
        "edge_step_p90": stat(lambda v: np.percentile(v, 90), steps),
        "edge_step_mean": stat(np.mean, steps),
        "texture_ratio_median": stat(np.median, ratios),
        "texture_ratio_min": stat(np.min, ratios),
        "generated_outside_px": sum(f["generated_outside_px"] for f in done),
        "pasted_outside_share_mean": stat(np.mean, [f["pasted_outside_share"] for f in done]),
        "face_covered_median": stat(np.median, [f["face_covered"] for f in done]),
        "face_covered_min": stat(np.min, [f["face_covered"] for f in done]),
    }


# ---------------------------------------------------------------- landmarks, stand-ins, privacy


class Landmarks:
    """MTCNN boxes and dlib's 68 points inside them (measuring only; never in the product)."""

    def __init__(self, detector: FaceDetector) -> None:
        import dlib
        import face_recognition_models

        self.dlib, self.detector = dlib, detector
        self.predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    def shape(self, photo: np.ndarray, box: np.ndarray) -> Shape:
        x0, y0, x1, y1 = (round(float(v)) for v in box[:4])
        found = self.predictor(np.ascontiguousarray(photo), self.dlib.rectangle(x0, y0, x1, y1))
        return Shape(box[:4].astype(np.float64), np.array([[p.x, p.y] for p in found.parts()], np.float64))

    def shapes(self, photo: np.ndarray) -> list[Shape]:
        return [self.shape(photo, row) for row in self.detector.detect(photo)]


def variant(name: str) -> Compose:
    """A name of :data:`VARIANTS`, or ``package.module:function``."""
    if name in VARIANTS:
        return VARIANTS[name]
    module, _, function = name.partition(":")
    if not function:
        raise SystemExit(f"unknown variant {name!r}: one of {sorted(VARIANTS)} or module:function")
    return getattr(importlib.import_module(module), function)


def crop_tile(image: np.ndarray, box: np.ndarray, tile: int = 256) -> np.ndarray:
    """A square crop (the 2× box's longer side) about the face, resized to ``tile``."""
    cx, cy, half = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])
    crop = Image.fromarray(image).crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
    return np.asarray(crop.resize((tile, tile), Image.Resampling.BICUBIC))


def unit(tiles: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 127.5 - 1


def grid_columns(original: np.ndarray, composites: list[np.ndarray], box: np.ndarray) -> list[np.ndarray]:
    """original | each composite | its |difference| × 4."""
    tiles = [crop_tile(original, box)]
    for composite in composites:
        diff = np.clip(np.abs(composite.astype(np.int16) - original) * 4, 0, 255).astype(np.uint8)
        tiles += [crop_tile(composite, box), crop_tile(diff, box)]
    return tiles


def save_grid_of(rows: list[list[np.ndarray]], path: Path) -> None:
    if rows:
        save_grid([unit([r[c] for r in rows]) for c in range(len(rows[0]))], path)
        print(f"wrote {path}")


class StandIn:
    """Protected faces made in-process: a cached inversion mixed under a key, refined for ``steps``
    Adam steps (0: unrefined, the cheap stand-in), rendered."""

    def __init__(self, model: bundle.Bundle, bundle_dir: Path, steps: int) -> None:
        from anonymixer.config import resolve_settings
        from anonymixer.protect import Protector

        self.protector = Protector(model, resolve_settings(model.config).config)
        self.inversions: dict[str, torch.Tensor] = torch.load(INVERSIONS)
        self.cache = CACHE / bundle_dir.name
        self.steps = steps

    def face(self, file: str, aligned: np.ndarray, key: str) -> np.ndarray:
        """uint8 [R, R, 3]: ``file``'s inversion protected under ``SecretKey(key)`` (``aligned``: the
        face it was inverted from, for its template and the refinement), cached per photo, key and steps."""
        from anonymixer.protect import image_tensor

        path = self.cache / (f"{Path(file).stem}.npz" if not self.steps else f"{Path(file).stem}-steps{self.steps}.npz")
        if path.exists():
            with np.load(path) as cached:
                if "key" in cached and str(cached["key"]) == key:
                    return cached["face"]
        p = self.protector
        x = image_tensor(aligned, p.device)[None]
        templates = p.templates(x, torch.arange(1))
        with torch.no_grad():
            mix = p.mix(self.inversions[file][None], [SecretKey(key)], templates=templates)
        w = (
            mix.assemble(p.scheduler.refine(mix, x, torch.arange(1), self.steps).trainable)
            if self.steps
            else mix.assemble()
        )
        with torch.no_grad():
            face = p.render(w)[0]
        self.cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, face=face, key=key)
        return face


class Privacy:
    """MobileFaceNet and dlib scores against the original aligned face, thresholds at FMR 0.1 %."""

    def __init__(self, model: bundle.Bundle, every: Sequence[Any]) -> None:
        from evaluation.matchers import DlibMatcher, Matcher, NetworkMatcher
        from evaluation.metrics import threshold_at_fmr

        self.matchers: list[Matcher] = [
            NetworkMatcher("mobilefacenet", model.face_embedder, white_box=True),
            DlibMatcher(),
        ]
        people = np.array([f.person for f in every])
        impostor = np.triu(people[:, None] != people[None, :], 1)
        self.threshold: dict[str, float] = {}
        for m in self.matchers:
            templates = m.embed(np.stack([f.aligned for f in every]))
            threshold = threshold_at_fmr(m.compare(templates, templates)[impostor], 1e-3)
            assert threshold is not None
            self.threshold[m.name] = float(threshold)

    def scores(self, original: np.ndarray, other: np.ndarray | None) -> dict[str, float]:
        """Each matcher's score of aligned ``other`` (None: no face found) against ``original``."""
        from evaluation.matchers import NO_FACE, as_aligned

        if other is None:
            return {m.name: NO_FACE for m in self.matchers}
        pair = as_aligned(other[None])
        return {m.name: round(float(m.compare(m.embed(pair), m.embed(original[None]))[0, 0]), 4) for m in self.matchers}

    def summary(self, rows: list[dict[str, float]]) -> dict[str, dict[str, float | None]]:
        from evaluation.matchers import NO_FACE

        out = {}
        for name, thr in self.threshold.items():
            values = np.array([r[name] for r in rows])
            found = values[values > NO_FACE]
            out[name] = {
                "de-identified": round(float((values < thr).mean()), 4),
                "mean score": round(float(found.mean()), 4) if len(found) else None,
                "face found": round(float(len(found) / len(values)), 4),
            }
        return out


# ---------------------------------------------------------------- the two modes


def print_table(rows: list[tuple[str, dict[str, Any]]]) -> None:
    keys = [
        "edge_step_p90",
        "edge_step_mean",
        "texture_ratio",
        "generated_outside_px",
        "pasted_outside_share",
        "face_covered",
    ]
    print("| face | status | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 2) + "|")
    for name, f in rows:
        print(f"| {name} | {f['status']} | " + " | ".join(str(f.get(k, "")) for k in keys) + " |")


def split_side_by_side(original: np.ndarray, composite: np.ndarray) -> np.ndarray:
    """The demo's scenes/*.png hold "photo | result": the right half when the left is the photo."""
    w = original.shape[1]
    if composite.shape[1] == 2 * w and np.array_equal(composite[:, :w], original):
        return composite[:, w:]
    return composite


def run_pairs(pairs: list[list[str]], marks: Landmarks) -> tuple[list[dict[str, Any]], list[list[np.ndarray]]]:
    rows, table, grid = [], [], []
    for original_file, composite_file in pairs:
        original = np.asarray(open_rgb(original_file))
        composite = split_side_by_side(original, np.asarray(open_rgb(composite_file)))
        shapes = marks.shapes(original)
        faces = measure(original, composite, shapes)
        rows.append({"original": original_file, "composite": composite_file, "faces": faces})
        table += [(f"{Path(composite_file).name} #{i}", f) for i, f in enumerate(faces)]
        grid += [grid_columns(original, [composite], s.box) for s in shapes]
    print_table(table)
    return rows, grid


def run_photos(
    args: argparse.Namespace, marks: Landmarks
) -> tuple[dict[str, Any], list[list[np.ndarray]], dict[str, Any]]:
    from evaluation.run import load_faces

    model = bundle.load(args.bundle)
    config = scene.SceneConfig(framing=model.framing)
    composers = {name: variant(name) for name in args.variant}
    every = load_faces(FACES, FACES / "identities.csv", model.framing, None)[0]
    stand_in, privacy = StandIn(model, Path(args.bundle), args.steps), Privacy(model, every)
    photos = [f for f in every if f.file in stand_in.inversions][: args.photos or None]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in composers}
    scores: dict[str, list[dict[str, float]]] = {"protected": [], **{name: [] for name in composers}}
    grid: list[list[np.ndarray]] = []
    for i, entry in enumerate(tqdm(photos, desc="paste back", unit="photo")):
        photo = np.asarray(open_rgb(FACES / entry.file))
        detections = marks.detector.detect(photo)
        target = largest_face(detections)
        planned = scene.plan_faces(photo, detections, SecretKey(b"unused"), config)
        subject = next(f for f in planned if np.array_equal(f.detection, target))
        faces = [f if f is subject else dataclasses.replace(f, action="kept") for f in planned]
        assert subject.aligned is not None and np.array_equal(subject.aligned, entry.aligned)
        protected = stand_in.face(entry.file, entry.aligned, f"paste-back key {i}")
        alone = privacy.scores(entry.aligned, protected)
        scores["protected"].append(alone)
        shape = marks.shape(photo, target)
        composites = []
        for name, compose in composers.items():
            composite = compose(photo, faces, [protected], config)
            composites.append(composite)
            (measured,) = measure(photo, composite, [shape])
            rows[name].append({"photo": entry.file, "person": entry.person, **measured})
            found = marks.detector.detect(composite)
            again = None
            if len(found):
                centre = (target[:2] + target[2:4]) / 2
                nearest = found[np.argmin(np.linalg.norm((found[:, :2] + found[:, 2:4]) / 2 - centre, axis=1))]
                again = scene.align_face(composite, nearest, config.aligned_size, config.framing)[0]
            scores[name].append(privacy.scores(entry.aligned, again))
            rows[name][-1]["scores"] = {"protected": alone, "composite": scores[name][-1]}
        if len(grid) < GRID_PHOTOS:
            grid.append(grid_columns(photo, composites, target))
    results = {
        name: {"summary": summarise(rows[name]), "privacy": privacy.summary(scores[name]), "photos": rows[name]}
        for name in composers
    }
    context = {
        "code": code_version(),
        "bundle": str(args.bundle),
        "photos": len(photos),
        "refinement_steps": args.steps,
        "protected_privacy": privacy.summary(scores["protected"]),
        "thresholds_fmr_0.1%": privacy.threshold,
    }
    for name, result in results.items():
        print(f"{name}: {result['summary']}\n  privacy, composite: {result['privacy']}")
    print(f"privacy, protected face alone: {context['protected_privacy']}")
    return results, grid, context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", nargs=2, action="append", metavar=("ORIGINAL", "COMPOSITE"))
    parser.add_argument("--variant", action="append", help="a name of VARIANTS or module:function (default: current)")
    parser.add_argument("--bundle", default=str(BUNDLE))
    parser.add_argument("--photos", type=int, default=0, help="the first N photos with a cached inversion (0: all)")
    parser.add_argument("--steps", type=int, default=0, help="refinement steps of the stand-in faces (0: unrefined)")
    parser.add_argument("--out", default=str(results_dir()))
    parser.add_argument("--tag", default="", help="appended to the record's and grid's names")
    args = parser.parse_args()
    args.variant = args.variant or ["current"]
    started, marks = time.perf_counter(), Landmarks(FaceDetector())
    out = Path(args.out)
    context: dict[str, Any] = {}
    if args.pair:
        results: Any
        results, grid = run_pairs(args.pair, marks)
        summary = summarise([f for r in results for f in r["faces"]])
        print(summary)
        context["summary"] = summary
    else:
        results, grid, context = run_photos(args, marks)
    save_record(
        out / f"paste_back_quality{args.tag}.json",
        "paste_back_quality",
        results,
        command="python -m benchmarks.paste_back_quality " + " ".join(sys.argv[1:]),
        **context,
        seconds=round(time.perf_counter() - started, 1),
        grid="per face: original | composite | |difference| × 4 (per variant), about the 2× box",
    )
    save_grid_of(grid, out / f"paste_back_quality{args.tag}_grid.jpg")


if __name__ == "__main__":
    main()
