"""The fast step against the eager one on real photos, at the service's defaults: what changes
when only the step's speed changes (issue 26's quality check).

    python -m benchmarks.step_parity --bundle BUNDLE [--photos 4] [--out DIR]

The first ``--photos`` people of ../shared/data/faces, one single-face photo each, aligned with
the bundle's framing, go through the service's two optimisations twice, once per variant:

* ``eager`` — ``compile`` off and the losses on the full 1024 px render (the step before issue 26);
* ``fast`` — the bundle's settings (mobile1024: the synthesis compiled, the losses on the exact
  half-size render);
* ``fast_alone`` — the same, each photo in a batch of its own: nothing changes but the order in
  which the CPU's kernels sum, which sets how closely any two runs can agree (the noise floor).

Each variant inverts every photo (the bundle's inversion steps) and protects it under one key (the
bundle's steps) from its own latent. Per photo and pair of variants (eager–fast, the change;
fast–fast_alone, the floor) it records the largest relative difference of the two inversion loss
traces and the largest absolute difference of the two refinement loss traces, step by step; the
cosine between the two protected templates; and per variant the reconstruction PSNR and the
independent dlib matcher's verdict (distance to the original > 0.6: another person). And each
variant's seconds per photo. Writes
``step_parity_<profile>.json`` to ``--out`` (default ``benchmarks/results/<date>-<machine>/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anonymixer import bundle
from anonymixer.config import ProtectConfig, resolve_settings
from anonymixer.face_detection import FaceDetector
from anonymixer.inversion import invert_as_configured
from anonymixer.protect import Protector, image_tensor
from benchmarks.face_measures import labelled_photos, psnr, to_256
from benchmarks.machine import results_dir, save_record
from evaluation.matchers import DLIB_SAME_PERSON, DlibMatcher

KEY = b"step parity key"


PAIRS = (("eager", "fast"), ("fast", "fast_alone"))


def run_variant(model: bundle.Bundle, config: ProtectConfig, faces: list[np.ndarray], alone: bool) -> dict[str, Any]:
    """Invert and protect ``faces`` with ``config`` (``alone``: one photo per batch): traces,
    reconstructions, protected faces, seconds."""
    if alone:
        runs = [run_variant(model, config, [face], alone=False) for face in faces]
        merged: dict[str, Any] = {
            k: np.concatenate([r[k] for r in runs]) for k in ("inversion_trace", "refinement_trace", "reconstructions")
        }
        merged["protected"] = [p for r in runs for p in r["protected"]]
        merged["seconds_per_photo"] = float(np.mean([r["seconds_per_photo"] for r in runs]))
        return merged
    protector = Protector(model, config)
    protector.scheduler.warm_up(max_items=len(faces))  # compiles (cached) before the clock starts
    x = torch.stack([image_tensor(face, protector.device) for face in faces])
    start = time.perf_counter()
    inversion = invert_as_configured(x, model, config)
    protected = protector.protect(faces, KEY, latents=inversion.w_plus)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        reconstructions = to_256(model.generator.synthesis(inversion.w_plus))
    return {
        "inversion_trace": inversion.loss_trace.T.numpy(),  # [photos, steps]
        "refinement_trace": np.array([p.loss_trace for p in protected]),
        "reconstructions": reconstructions,
        "protected": protected,
        "seconds_per_photo": seconds / len(faces),
    }


def compare(args: argparse.Namespace) -> dict[str, Any]:
    model = bundle.load(args.bundle)
    fast = resolve_settings(model.config).config
    eager = dataclasses.replace(fast, compile="off", loss_resolution=None)
    detector = FaceDetector()
    photos = labelled_photos(model.framing, detector, per_person=1)[: args.photos]
    faces = [p.aligned for p in photos]
    variants = (("eager", eager, False), ("fast", fast, False), ("fast_alone", fast, True))
    runs = {name: run_variant(model, config, faces, alone) for name, config, alone in variants}
    dlib = DlibMatcher(detector)
    rows = []
    for i, photo in enumerate(photos):
        original = dlib.descriptor(photo.aligned)
        row: dict[str, Any] = {"photo": photo.name}
        for a, b in PAIRS:
            ra, rb = runs[a], runs[b]
            inv_a, inv_b = ra["inversion_trace"][i], rb["inversion_trace"][i]
            row[f"{a}-{b}"] = {
                "inversion_trace_max_rel_diff": round(float(np.max(np.abs(inv_b - inv_a) / np.abs(inv_a))), 6),
                "refinement_trace_max_abs_diff": round(
                    float(np.max(np.abs(rb["refinement_trace"][i] - ra["refinement_trace"][i]))), 6
                ),
                "protected_template_cos": round(float(ra["protected"][i].template @ rb["protected"][i].template), 6),
            }
        for name, run in runs.items():
            row[f"{name}_reconstruction_psnr"] = round(psnr(run["reconstructions"][i], photo.aligned), 2)
            distance = dlib.distance(original, dlib.descriptor(run["protected"][i].image))
            row[f"{name}_dlib_distance"] = round(distance, 4)
            row[f"{name}_dlib_other_person"] = bool(distance > DLIB_SAME_PERSON)
        rows.append(row)
        print(row, flush=True)
    summary = {
        "photos": len(rows),
        "seconds_per_photo": {name: round(run["seconds_per_photo"], 1) for name, run in runs.items()},
        **{
            pair: {
                "min_protected_template_cos": min(r[pair]["protected_template_cos"] for r in rows),
                "max_inversion_trace_rel_diff": max(r[pair]["inversion_trace_max_rel_diff"] for r in rows),
                "max_refinement_trace_abs_diff": max(r[pair]["refinement_trace_max_abs_diff"] for r in rows),
            }
            for pair in (f"{a}-{b}" for a, b in PAIRS)
        },
        "same_dlib_verdicts": all(
            r["eager_dlib_other_person"] == r["fast_dlib_other_person"] == r["fast_alone_dlib_other_person"]
            for r in rows
        ),
        "steps": {"inversion": fast.inversion_steps, "refinement": fast.steps},
        "fast": {"compile": fast.compile, "loss_resolution": fast.loss_resolution},
    }
    print(summary, flush=True)
    path = save_record(Path(args.out) / f"step_parity_{model.profile}.json", "step_parity", rows, summary=summary)
    return {"path": path, "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="a bundle on disk (real weights: mobile1024)")
    p.add_argument("--photos", type=int, default=4, help="people, one photo each (default 4)")
    p.add_argument("--out", default=str(results_dir()), help="default benchmarks/results/<date>-<machine>")
    compare(p.parse_args())


if __name__ == "__main__":
    main()
