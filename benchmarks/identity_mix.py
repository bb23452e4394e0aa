"""Which identity mix keeps all four promises of ISO/IEC 24745 (issue 27): a screen of the mix
modes on real photos and real weights, unrefined (one render per face and key) and refined.

Photos: every labelled photo of ../shared/data/faces, detected and aligned as the evaluation does.
Each is inverted once with the bundle's settings and cached (``--cache``, never committed: they
are the originals' latents); a mix without refinement then costs one render.

    python -m benchmarks.identity_mix --bundle BUNDLE --cache build/cache/identity_mix [--keys 8]

``--clamp-ab`` runs each candidate twice, refined (``--steps``): with the losses on the unclamped
render, as before issue 28, and as they are now, on the render clamped as the returned picture is.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from skimage.color import rgb2lab
from tqdm import tqdm

from anonymixer import bundle, refine
from anonymixer.config import resolve_settings
from anonymixer.images import save_grid
from anonymixer.keys import SecretKey
from anonymixer.protect import Protector, image_tensor
from benchmarks.face_measures import to_256
from benchmarks.machine import results_dir, save_record
from evaluation.matchers import DLIB_SAME_PERSON, NO_FACE, DlibMatcher, Matcher, NetworkMatcher, as_unit
from evaluation.metrics import threshold_at_fmr
from evaluation.run import Face, load_faces

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def cached_inversions(model: bundle.Bundle, faces: list[Face], cache: Path) -> torch.Tensor:
    """W+ [N, n_latent, d] of every face, inverted with the bundle's settings, cached per photo."""
    config = resolve_settings(model.config).config
    settings = f"{config.inversion_steps}-{config.inversion_lr}-{config.inversion_perceptual_weight}"
    path = cache / f"inversions-{model.profile}-{model.framing}-{settings}.pt"
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, torch.Tensor] = torch.load(path) if path.exists() else {}
    todo = [f for f in faces if f.file not in found]
    protector = Protector(model, config)
    pairs = [todo[i : i + 2] for i in range(0, len(todo), 2)]  # the bundle's refine_batch
    for pair in tqdm(pairs, desc="invert (cached)", unit="pair"):
        for face, w in zip(pair, protector.invert([f.aligned for f in pair]), strict=True):
            found[face.file] = w.cpu()
        torch.save(found, path)
    return torch.stack([found[f.file] for f in faces])


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: dict[str, Any]  # over the bundle's algorithm


ROTATE = {"mix_mode": "rotate", "whitened_dims": 128}
CANDIDATES = (  # the cheapest to tell apart first
    Candidate("paper (replace)", {"mix_mode": "paper"}),
    Candidate("rotate 128", ROTATE),
    Candidate("lossy 32 of 128", {**ROTATE, "kept_dims": 32}),
    Candidate("reference (released code)", {"mix_mode": "reference"}),
    Candidate("rotate 128, residual kept", {**ROTATE, "keep_residual": True}),
    Candidate("rotate 128, psi 0.7", {**ROTATE, "rotation_psi": 0.7}),
    Candidate("lossy 64 of 128", {**ROTATE, "kept_dims": 64}),
    # the target acts through the refinement only: unrefined, it is "rotate 128"
    Candidate("rotate 128 + template target", {**ROTATE, "target_weight": 10.0}),
    Candidate("template", {**ROTATE, "mix_mode": "template"}),
    Candidate("template, 8 attribute dims", {**ROTATE, "mix_mode": "template", "attribute_dims": 8}),
    Candidate("template, 16 attribute dims", {**ROTATE, "mix_mode": "template", "attribute_dims": 16}),
    Candidate("template, share 0.8", {**ROTATE, "mix_mode": "template", "person_share": 0.8}),
    Candidate("template, share 0.6", {**ROTATE, "mix_mode": "template", "person_share": 0.6}),
    Candidate(
        "template, 8 attribute dims, share 0.7",
        {**ROTATE, "mix_mode": "template", "attribute_dims": 8, "person_share": 0.7},
    ),
)
RECOVERED_KEYS = 2  # keys whose faces the key holder's attack reverses (a render each: the CPU's budget)
FACE_CENTRE = (slice(100, 180), slice(88, 168))  # cheeks, nose and mouth of a 256 px aligned face


class Screen:
    """Unrefined mixes of every cached inversion under every key: renders, templates, measures."""

    def __init__(self, model: bundle.Bundle, faces: list[Face], w: torch.Tensor, keys: int, every: list[Face]) -> None:
        """``faces`` with their inversions ``w`` are screened; the originals' thresholds (FMR 0.1 %)
        come from ``every`` labelled photo (1690 impostor pairs for 61)."""
        self.model, self.faces, self.w = model, faces, w
        self.config = resolve_settings(model.config).config
        self.rows = self.config.identity_layers
        self.keys = [SecretKey(f"identity-mix screen key {i}") for i in range(keys)]
        self.people = np.array([f.person for f in faces])
        self.matchers: list[Matcher] = [
            NetworkMatcher("mobilefacenet", model.face_embedder, white_box=True),
            DlibMatcher(),
        ]
        originals = np.stack([f.aligned for f in faces])
        self.original = {m.name: m.embed(originals) for m in self.matchers}
        self.threshold: dict[str, float | None] = {}
        people = np.array([f.person for f in every])
        impostor = np.triu(people[:, None] != people[None, :], 1)
        for m in self.matchers:
            templates = m.embed(np.stack([f.aligned for f in every]))
            self.threshold[m.name] = threshold_at_fmr(m.compare(templates, templates)[impostor], 1e-3)
        self.threshold["dlib@0.6"] = -DLIB_SAME_PERSON
        self.tone = lab_centre(originals)
        self.out_of_range: list[float] = []  # per refined render: the share of its values outside [-1, 1]

    def protector(self, candidate: Candidate) -> Protector:
        return Protector(self.model, dataclasses.replace(self.config, **candidate.overrides))

    def mix(self, protector: Protector, key: SecretKey) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed W+ [N, n, d], what a key holder recovers from it [N, n, d])."""
        keys = [key] * len(self.w)
        mixed = protector.mix(self.w, keys, templates=self.templates(protector)).assemble()
        return mixed, protector.unmix(mixed, keys)

    def aligned(self, protector: Protector) -> torch.Tensor:
        return torch.stack([image_tensor(face.aligned, protector.device) for face in self.faces])

    def templates(self, protector: Protector) -> torch.Tensor:
        """Each face's own FR template (each is protected alone: its group is itself)."""
        return protector.templates(self.aligned(protector), torch.arange(len(self.faces)))

    @torch.no_grad()
    def render(self, w: torch.Tensor) -> np.ndarray:
        return np.concatenate([to_256(self.model.generator.synthesis(c, resolution=512)) for c in w.split(4)])

    def refined(self, protector: Protector, key: SecretKey, steps: int) -> tuple[np.ndarray, torch.Tensor]:
        """(each face protected alone under ``key`` with ``steps`` refinement steps, uint8 [N, 256,
        256, 3]; what the key holder recovers from the refined latent [N, n, d])."""
        n = len(self.w)
        mix = protector.mix(self.w, [key] * n, templates=self.templates(protector))
        x = self.aligned(protector)
        w = mix.assemble(protector.scheduler.refine(mix, x, torch.arange(n), steps).trainable)
        with torch.no_grad():  # the losses' render (loss_resolution 512), before any clamp
            raw = torch.cat([self.model.generator.synthesis(c, resolution=512) for c in w.split(4)])
        self.out_of_range.append(float((raw.abs() > 1).float().mean()))
        return to_256(raw), protector.unmix(w, [key] * len(w))

    def run(self, candidate: Candidate, steps: int) -> tuple[dict, dict[str, list[np.ndarray]], list[np.ndarray]]:
        protector = self.protector(candidate)
        protected, recovered = [], []
        self.out_of_range.clear()
        for k, key in enumerate(tqdm(self.keys, desc=candidate.name, unit="key", leave=False)):
            if steps:
                image, back = self.refined(protector, key, steps)
            else:
                mixed, back = self.mix(protector, key)
                image = self.render(mixed)
            protected.append(image)
            if k < RECOVERED_KEYS:
                recovered.append(self.render(back))
        templates = {m.name: ([m.embed(p) for p in protected], [m.embed(r) for r in recovered]) for m in self.matchers}
        row = {"name": candidate.name, "steps": steps, **self.measure(templates)}
        row["skin_tone_delta_e"] = round(float(np.mean([tone_difference(self.tone, p) for p in protected])), 2)
        if self.out_of_range:
            row["unclamped_render_out_of_range"] = round(float(np.mean(self.out_of_range)), 5)
        return row, templates, protected + recovered[:1]

    def measure(self, templates: dict) -> dict:
        same = self.people[:, None] == self.people[None, :]
        other_photo = same & ~np.eye(len(same), dtype=bool)
        upper = np.triu(np.ones_like(same), 1)
        out: dict[str, dict] = {}
        for name in [m.name for m in self.matchers] + ["dlib@0.6"]:
            matcher = next(m for m in self.matchers if name.startswith(m.name))
            thr, original = self.threshold[name], self.original[matcher.name]
            protected, recovered = templates[matcher.name]

            def rate(a: np.ndarray, b: np.ndarray, pairs: np.ndarray) -> float:
                return float((matcher.compare(a, b)[pairs] >= thr).mean())  # noqa: B023

            diag = np.eye(len(same), dtype=bool)
            keys = range(len(protected))
            crossed = list(itertools.combinations(keys, 2))
            found = np.mean([np.isfinite(p[:, 0]).mean() for p in protected])
            out[name] = {
                # cosine (MobileFaceNet) or minus the distance (dlib), over the pairs where both have a face
                "mean score to original": np.mean([mean_score(matcher, p, original) for p in protected]),
                "mean score, two keys, same photo": np.mean(
                    [mean_score(matcher, protected[a], protected[b]) for a, b in crossed]
                ),
                "de-identified": 1 - np.mean([rate(p, original, diag) for p in protected]),
                "one key, other people match": np.mean([rate(p, p, upper & ~same) for p in protected]),
                "one key, same person other photo match": np.mean([rate(p, p, upper & other_photo) for p in protected]),
                "two keys, same photo match": np.mean([rate(protected[a], protected[b], diag) for a, b in crossed]),
                "two keys, other photo match": np.mean(
                    [rate(protected[a], protected[b], other_photo) for a, b in crossed]
                ),
                "key holder recovers original": np.mean([rate(r, original, diag) for r in recovered]),
                "detected": float(found),
            }
            out[name] = {k: round(float(v), 4) for k, v in out[name].items()}
        return out


def mean_score(matcher: Matcher, a: np.ndarray, b: np.ndarray) -> float:
    """The mean score of each face of templates ``a`` against the same face's in ``b``."""
    scores = np.diag(matcher.compare(a, b))
    return float(scores[scores > NO_FACE].mean())


def first_photos(faces: list[Face], per_person: int) -> list[Face]:
    """The first ``per_person`` photos of each person (0: all), in the CSV's order."""
    seen: dict[str, int] = {}
    kept = []
    for face in faces:
        seen[face.person] = seen.get(face.person, 0) + 1
        if not per_person or seen[face.person] <= per_person:
            kept.append(face)
    return kept


def lab_centre(images: np.ndarray) -> np.ndarray:
    """Mean CIELAB colour of each aligned face's centre [N, 3]."""
    return np.stack([rgb2lab(im[FACE_CENTRE]).reshape(-1, 3).mean(0) for im in images])


def tone_difference(original: np.ndarray, protected: np.ndarray) -> float:
    """Mean CIE76 ΔE between each protected face's centre and its original's."""
    return float(np.linalg.norm(lab_centre(protected) - original, axis=1).mean())


def table(rows: list[dict]) -> str:
    measures = list(rows[0]["dlib@0.6"])
    lines = []
    for matcher in [k for k in rows[0] if isinstance(rows[0][k], dict)]:
        lines += [f"\n{matcher}\n", "| mix | " + " | ".join(measures) + " |", "|---" * (len(measures) + 1) + "|"]
        lines += [f"| {r['name']} | " + " | ".join(f"{r[matcher][m]:.3f}" for m in measures) + " |" for r in rows]
    lines.append(
        "\nskin tone ΔE (face centre vs original): " + ", ".join(f"{r['name']} {r['skin_tone_delta_e']}" for r in rows)
    )
    return "\n".join(lines)


def unclamped_losses() -> contextlib.AbstractContextManager[object]:
    """The refinement's losses on the unclamped render, as before issue 28."""
    return mock.patch.object(refine, "straight_through_clamp", lambda y: y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cache", default="build/cache/identity_mix")
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--photos-per-person", type=int, default=2, help="as the evaluation protects (0: all)")
    parser.add_argument("--photos", type=int, default=0, help="the first N of those (0: all)")
    parser.add_argument("--candidates", nargs="*", help="names (default: all)")
    parser.add_argument("--steps", type=int, default=0, help="refinement steps (0: the mixes unrefined)")
    parser.add_argument("--out", default=str(results_dir()))
    parser.add_argument("--tag", default="", help="appended to the record's and grid's names")
    parser.add_argument("--clamp-ab", action="store_true", help="each candidate also with its losses unclamped")
    args = parser.parse_args()
    model = bundle.load(args.bundle)
    every = load_faces(FACES, FACES / "identities.csv", model.framing, None)[0]
    faces = first_photos(every, args.photos_per_person)[: args.photos or None]
    w = cached_inversions(model, faces, Path(args.cache))
    screen = Screen(model, faces, w, args.keys, every)
    chosen = [c for c in CANDIDATES if c.name in args.candidates] if args.candidates else list(CANDIDATES)
    if not args.steps:
        chosen = [c for c in chosen if not c.overrides.get("target_weight")]
    rows, started = [], time.perf_counter()
    firsts = [faces.index(next(f for f in faces if f.person == p)) for p in dict.fromkeys(screen.people)][:6]
    grid: list[torch.Tensor] = [as_unit(np.stack([faces[i].aligned for i in firsts]))]
    out = Path(args.out)
    runs = [(c, False) for c in chosen]
    if args.clamp_ab:
        before = [(dataclasses.replace(c, name=f"{c.name}, losses unclamped (before issue 28)"), True) for c in chosen]
        runs = [run for pair in zip(before, runs, strict=True) for run in pair]
    for candidate, unclamped in runs:  # the record and the grid are rewritten after each candidate
        with unclamped_losses() if unclamped else contextlib.nullcontext():
            row, _, pictures = screen.run(candidate, args.steps)
        rows.append(row)
        print(table([row]), flush=True)
        grid += [as_unit(p[firsts]) for p in (pictures[0], pictures[1], pictures[-1])]
        save_record(
            out / f"identity_mix_mobile1024_steps{args.steps}{args.tag}.json",
            "identity_mix",
            rows,
            bundle=model.config.get("sources"),
            photos=len(faces),
            people=len(set(screen.people)),
            keys=args.keys,
            rows=list(screen.rows),
            inversion_steps=screen.config.inversion_steps,
            refinement_steps=args.steps,
            thresholds=screen.threshold,
            seconds=round(time.perf_counter() - started, 1),
            grid="per candidate: key 0, key 1, key 0 recovered by its holder (6 people's first photos)",
        )
        save_grid(grid, out / f"identity_mix_steps{args.steps}{args.tag}_grid.jpg", tile=128)
    print(table(rows))


if __name__ == "__main__":
    main()
