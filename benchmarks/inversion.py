"""Inversion by optimisation on real photos: reconstruction quality against steps, for both
framings and with/without the perceptual term, and the CPU time per face (README, "Inversion").

For one photo of each of the first ``--people`` identities of ../shared/data/faces: PSNR and L1
at 256 px, the loss network's cos(reconstruction, original), the independent dlib distance, and
the MTCNN landmark shift over the inter-ocular distance — for ``w_avg`` (step 0) and after each
of ``--steps``. Variants: ``ffhq`` (FFHQ framing, perceptual weight 1; the full curve), ``e4e``
(the e4e template) and ``ffhq-pixel`` (no perceptual term), both up to ``--compare-steps``.

    python -m benchmarks.inversion --bundle BUNDLE [--people 3] [--steps 25 50 100 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from anonymixer import bundle
from anonymixer.config import ProtectConfig
from anonymixer.face_detection import FaceDetector
from anonymixer.inversion import ReconstructionLoss, invert_latents
from benchmarks.face_measures import (
    embeddings,
    labelled_photos,
    landmark_shift,
    landmarks,
    nanmean,
    psnr,
    to_256,
)
from benchmarks.machine import results_dir, save_record
from evaluation.matchers import DlibMatcher, as_unit


def measure(model, photos, renders, dlib, detector) -> dict:
    originals = np.stack([p.aligned for p in photos])
    e_x, e_y = embeddings(model, originals), embeddings(model, renders)
    rows = []
    for p, original, render, cos in zip(photos, originals, renders, (e_x * e_y).sum(1).tolist(), strict=True):
        rows.append(
            {
                "photo": p.name,
                "psnr": psnr(original, render),
                "l1": float(np.abs(original.astype(np.float32) - render).mean() / 127.5),
                "fr_cos": cos,
                "dlib": dlib.distance(dlib.descriptor(original), dlib.descriptor(render)),
                "landmark_shift": landmark_shift(landmarks(detector, original), landmarks(detector, render)),
            }
        )
    summary = {k: round(nanmean([r[k] for r in rows]), 4) for k in ("psnr", "l1", "fr_cos", "dlib", "landmark_shift")}
    summary["dlib_same_person"] = sum(r["dlib"] < 0.6 for r in rows)
    return {
        "mean": summary,
        "photos": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
    }


def run_variant(model, photos, framing, perceptual, steps, lr, dlib, detector) -> dict:
    x = as_unit(np.stack([p.aligned for p in photos]))
    checkpoints, renders = set(steps), {}
    with torch.no_grad():
        renders[0] = to_256(model.generator.synthesis(model.latent_avg[None].expand(len(photos), -1, -1)))
    bar = tqdm(total=max(steps), desc=f"invert {framing} perceptual={perceptual}")
    rendering = 0.0  # the checkpoints' renders are not part of the inversion's cost

    def record(step: int, loss: torch.Tensor, w: torch.Tensor) -> None:
        nonlocal rendering
        bar.update(1)
        if step + 1 in checkpoints:
            start = time.perf_counter()
            with torch.no_grad():
                renders[step + 1] = to_256(model.generator.synthesis(w))
            rendering += time.perf_counter() - start

    start = time.perf_counter()
    invert_latents(
        x,
        generator=model.generator,
        latent_avg=model.latent_avg,
        loss=ReconstructionLoss(model.face_embedder, perceptual),
        steps=max(steps),
        lr=lr,
        on_step=record,
    )
    seconds = time.perf_counter() - start - rendering
    bar.close()
    out = {"framing": framing, "perceptual_weight": perceptual, "lr": lr}
    out["seconds_per_step_per_face"] = round(seconds / max(steps) / len(photos), 3)
    out["by_steps"] = {str(k): measure(model, photos, renders[k], dlib, detector) for k in sorted(renders)}
    for k, v in out["by_steps"].items():
        print(framing, perceptual, k, v["mean"], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--people", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--compare-steps", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = bundle.load(args.bundle)
    defaults = ProtectConfig()
    detector = FaceDetector()
    dlib = DlibMatcher(detector)
    variants = []
    for framing, perceptual, steps in (
        ("ffhq", defaults.inversion_perceptual_weight, args.steps),
        ("e4e", defaults.inversion_perceptual_weight, [s for s in args.steps if s <= args.compare_steps]),
        ("ffhq", 0.0, [s for s in args.steps if s <= args.compare_steps]),
    ):
        photos = labelled_photos(framing, detector, per_person=1)[: args.people]
        variants.append(run_variant(model, photos, framing, perceptual, steps, defaults.inversion_lr, dlib, detector))
    save_record(
        args.out or results_dir() / f"inversion_{model.profile}.json",
        "inversion",
        variants,
        bundle=model.profile,
        photos=[p.name for p in labelled_photos("ffhq", detector, per_person=1)[: args.people]],
        command="python -m benchmarks.inversion "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
    )


if __name__ == "__main__":
    main()
