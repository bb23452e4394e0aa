"""The privacy and image-quality evaluation of cancelable faces (ISO/IEC 24745 / 30136).

    python -m evaluation --data DIR --identities CSV (--bundle DIR | --profile NAME [--weights DIR] |
        --server URL [--bundle DIR])
        [--matchers dlib NAME=WEIGHTS …] [--keys 2] [--photos-per-person 2] [--stolen-keys 0]
        [--steps N] [--inversion-steps N] [--views N] [--limit-people N] [--bootstrap 1000] --out DIR

Protects the photos (in-process with ``--bundle``, or through the service at ``--server``), runs the
client's enroll flow, the stolen-key scenario and the attacks, scores every matcher and writes
report.json, report.md (with the table side by side with the paper's and each matcher's targets),
grid.png, det_<matcher>.png and unlinkability_<matcher>.png.
See evaluation.run (what is protected), evaluation.protocol (what is measured),
evaluation.matchers, evaluation.attacks and evaluation.image_quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from anonymixer import bundle as bundle_io
from anonymixer.alignment import FRAMINGS, NEW_BUNDLE_FRAMING
from anonymixer.machine import describe
from anonymixer.protect import Protector
from evaluation.matchers import load_matchers
from evaluation.protocol import evaluate_matcher
from evaluation.report import write
from evaluation.run import (
    OUTCOME,
    Outcome,
    Settings,
    algorithm,
    load_faces,
    load_outcome,
    run_protection,
    save_outcome,
    templates,
)
from exporter.cache import MissingInputError, cached_bundle


def differences(report: dict[str, Any], model: bundle_io.Bundle | None) -> str:
    if model is None:
        generator = "the service's bundle"
    elif model.profile == "mobile1024":
        generator = "MobileStyleGAN-FFHQ (distilled from StyleGAN2, ~10× fewer FLOPs), inverted by optimisation"
    else:
        generator = f"the `{model.profile}` bundle"
    first = next(iter(report["matchers"].values()))
    impostors = first["originals"].get("pairs", {}).get("impostor", 0)
    matchers = ", ".join(
        f"`{n}` ({'white-box' if m['white_box'] else 'black-box'})" for n, m in report["matchers"].items()
    )
    s = report["settings"]
    return (
        f"generator {generator} (paper: StyleGAN2-FFHQ with the e4e encoder); refinement steps {s['steps']} "
        f"and inversion steps {s['inversion_steps']} (paper: 50 steps, e4e); data {report['photos']} photos of "
        f"{report['people']} people (paper: CelebA-HQ, thousands of identities): the originals give "
        f"{impostors} impostor pairs, so no FMR below 1/{impostors} is measurable and the FMR 0.1 % threshold "
        f"rests on the top {impostors // 1000 or 'less than one'} of them; matchers {matchers} instead of the "
        "paper's face-recognition networks (the paper has no black-box matcher)."
    )


def build_report(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], list[np.ndarray]]:
    started = time.perf_counter()
    model = bundle_io.load(args.bundle) if args.bundle else None
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})  # its options, by name
    framing = args.framing or (model.framing if model else NEW_BUNDLE_FRAMING)
    resolved = algorithm(model, settings) if model is not None else None
    if resolved is not None and not args.rescore:
        print(f"settings: {resolved.describe()}", file=sys.stderr)
    config = resolved.config if resolved is not None else None
    faces, skipped = load_faces(Path(args.data), Path(args.identities), framing, args.limit_people)
    matchers = load_matchers(args.matchers, model)
    if args.rescore:
        outcome = load_outcome(Path(args.rescore) / OUTCOME, faces)
    else:
        protector = Protector(model, config) if model is not None else None
        outcome = run_protection(faces, settings, protector=protector, server=args.server)
        save_outcome(outcome, Path(args.out))
    report: dict[str, Any] = {
        "command": "python -m evaluation " + " ".join(args.argv),
        # seeded random bundles record their seed as their source (anonymixer.profiles)
        "random_weights": bool(model is not None and "seed" in model.config.get("sources", {})),
        "profile": model.profile if model else "the server's",
        "where": f"through the service at {args.server}" if args.server else "in-process",
        "photos": len(faces),
        "people": len({f.person for f in faces}),
        "skipped_no_face": skipped,
        "protected_photos": len(outcome.layout.protected),
        "stolen_key_targets": len(outcome.layout.targets),
        "enrolled_people": len(outcome.layout.enrolled),
        "enrolled_photos": sum(map(len, outcome.layout.enrolled.values())),
        "settings": {
            "keys": settings.keys,
            "photos_per_person": settings.photos_per_person,
            "stolen_keys": settings.stolen_keys,
            "steps": settings.steps if settings.steps is not None else (config.steps if config else None),
            "inversion_steps": config.inversion_steps if config and not args.server else "the server's",
            "views": config.views if config and not args.server else "the server's",
            "bootstrap": settings.bootstrap,
            "framing": framing,
        },
        "matchers": {},
    }
    scores = {}
    for matcher in matchers:
        print(f"scoring with {matcher.name} …", file=sys.stderr)
        result = evaluate_matcher(matcher, templates(outcome, matcher), settings.bootstrap)
        scores[matcher.name] = result.pop("_scores")
        report["matchers"][matcher.name] = result
    quality(report, outcome, args.image_quality)
    probe = {i: k for k, i in enumerate(outcome.layout.protected)}
    rows = [probe[outcome.layout.probes[p]] for p in sorted(outcome.layout.probes)]
    originals = np.stack([faces[outcome.layout.probes[p]].aligned for p in sorted(outcome.layout.probes)])
    grid = [originals]
    if outcome.reconstructions is not None:
        grid.append(outcome.reconstructions[rows])
    grid += [images[rows] for images in outcome.key_sets]
    grid += [images for name, images in outcome.attacks.items() if name != "reconstruction"]
    report["differences"] = differences(report, model)
    report["seconds"] = {k: round(v, 1) for k, v in outcome.seconds.items()}
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.rescore:  # the protection's seconds are the earlier run's; the wall time is this scoring's
        earlier = Path(args.rescore) / "report.json"
        report["rescored_from"] = {"dir": args.rescore}
        if earlier.is_file():
            first = json.loads(earlier.read_text())
            report["rescored_from"].update(command=first.get("command"), wall_seconds=first.get("wall_seconds"))
    machine = describe()
    report["machine"] = machine
    report["machine_line"] = f"{machine.get('gpu') or machine['cpu']}, {machine['cores']} cores"
    return report, scores, grid


def quality(report: dict[str, Any], outcome: Outcome, enabled: bool) -> None:
    """FID and KID of the protected faces and of the reconstructions against their originals."""
    if not enabled:
        report["image_quality_note"] = "skipped (--no-image-quality)"
        return
    try:
        from evaluation.image_quality import InceptionFeatures, image_quality

        features = InceptionFeatures()
    except (ImportError, FileNotFoundError, ValueError, SystemExit) as exc:
        report["image_quality_note"] = f"not measured: {exc}"
        return
    originals = np.stack([outcome.faces[i].aligned for i in outcome.layout.protected])
    sets = {"protected (key set 0)": outcome.key_sets[0]}
    if outcome.reconstructions is not None:
        sets["reconstructions (no key: the inversion's own loss)"] = outcome.reconstructions
    report["image_quality"] = image_quality(features, originals, sets)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of photos")
    parser.add_argument("--identities", required=True, help="CSV with columns file, identity")
    parser.add_argument("--bundle", help="protect in-process with this bundle (and run the attacks)")
    parser.add_argument(
        "--profile", help="instead of --bundle: the cached bundle of this profile (built on first use, as serve does)"
    )
    parser.add_argument("--weights", help="with --profile: the folder of its weights (mobile1024: mobilefacenet.pt)")
    parser.add_argument("--server", help="protect through the service at this gRPC address instead")
    parser.add_argument("--framing", choices=sorted(FRAMINGS), help="face alignment (default: the bundle's, else ffhq)")
    parser.add_argument(
        "--matchers", nargs="*", default=[], help="dlib and/or NAME=WEIGHTS (IR-SE or MobileFaceNet checkpoint)"
    )
    parser.add_argument("--keys", type=int, default=2, help="key sets (≥ 2; default 2)")
    parser.add_argument("--photos-per-person", type=int, default=2, help="photos protected per person (0: all)")
    parser.add_argument(
        "--stolen-keys",
        type=int,
        default=0,
        help="targets of the stolen-key scenario (default 0: every person with two protected photos)",
    )
    parser.add_argument("--steps", type=int, default=None, help="refinement steps (default: the algorithm's)")
    parser.add_argument("--inversion-steps", type=int, default=None, help="in-process: inversion steps")
    parser.add_argument("--views", type=int, default=None, help="in-process: augmented views")
    parser.add_argument("--limit-people", type=int, default=None, help="the first N people only")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)")
    parser.add_argument(
        "--rescore",
        metavar="DIR",
        help="score the protected faces of an earlier run (its outcome.npz) again instead of protecting; "
        "give that run's options",
    )
    parser.add_argument("--no-image-quality", dest="image_quality", action="store_false", help="skip FID/KID")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.keys < 2:
        parser.error("--keys must be ≥ 2 (revocability and unlinkability compare key sets)")
    if args.profile:
        if args.bundle:
            parser.error("give --bundle or --profile, not both")
        try:  # the same cache as `anonymixer serve`
            args.bundle = str(cached_bundle(args.profile, args.weights))
        except MissingInputError as exc:
            parser.error(str(exc))
    if not args.bundle and not args.server and not args.rescore:
        parser.error("give --bundle DIR, --profile NAME or --server URL")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        report, scores, grid = build_report(args)
    except bundle_io.BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write(report, scores, grid, out)
    print((out / "report.md").read_text())
    print(f"wrote {out}/report.json, report.md, grid.png, det_*.png and unlinkability_*.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
