"""The privacy evaluation of cancelable faces (ISO/IEC 24745): one command, a report with plots.

    python -m anonymixer.evaluate --data DIR --identities CSV (--bundle DIR | --server URL [--bundle DIR])
        [--matchers NAME=WEIGHTS …] [--keys 2] [--steps N] [--views N] [--limit-people N] --out DIR

Every photo is detected and aligned as scene mode does it, then protected alone (as a user sends
it) under its person's key of each key set (``--keys``, ≥ 2: set 0 is the enrolment key, set 1
the new key after revocation). Each matcher embeds the originals from the photo (ArcFace 112
alignment) and the protected faces with the e4e/pSp crop (DESIGN §5), and the report gives:

* **originals** — EER, AUC, thresholds at FMR 1e-2 … 1e-5 (None where there are too few impostor
  pairs to measure one) from all pairs of original photos;
* **PSR** at each FMR: protected faces that no longer match their own original;
* **performance preservation** — EER/AUC of protected vs protected (same key set, one key per person);
* **revocability** — key-0 protected vs key-1 protected of the same person: match rate at the
  protected domain's thresholds;
* **unlinkability** — D↔sys (Gomez-Barrero et al.): mated = same person under different keys,
  non-mated = different people; densities and D↔(s) plotted;
* **irreversibility** (needs the bundle) — re-invert the protected face with e4e and re-render;
  and an attacker who knows the key and the method: the key's rows replaced by the mean latent
  w_avg (the best guess of what the key overwrote); match rate of each against the original;
* **quality** — FID is not computed (no Inception network in this project); a before/after grid.

Matchers: ``loss`` (the bundle's FR network, the one inside the loss) plus every ``NAME=WEIGHTS``
(an IR-SE or MobileFaceNet checkpoint). Keys are derived from a random evaluation secret and
never written.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import io
import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from anonymixer import bundle as bundle_io
from anonymixer.alignment import FRAMINGS, arcface_crop
from anonymixer.checkpoints import load_checkpoint
from anonymixer.face_detection import FaceDetector, largest_face
from anonymixer.images import headless_pyplot, open_rgb, save_grid
from anonymixer.keys import SecretKey
from anonymixer.losses import ALIGNED_SIZE, fr_crop, resize
from anonymixer.metrics import (
    equal_error_rate,
    error_rates,
    protection_success_rate,
    rate_at_or_above,
    roc_auc,
    threshold_at_fmr,
    unlinkability,
)
from anonymixer.protect import torch_stages
from anonymixer.scene import align_face

FMRS = (1e-2, 1e-3, 1e-4, 1e-5)
Embed = Callable[[torch.Tensor], np.ndarray]  # faces [B, 3, 112, 112] in [-1, 1] → [B, D] normalised


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] → float [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def pair_scores(a: np.ndarray, b: np.ndarray, people: list[str], same_set: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every pair (i from a, j from b) split into (same person, different people);
    within one set only i < j (different photos)."""
    scores = a @ b.T
    person = np.array(people)
    same = person[:, None] == person[None, :]
    keep = np.triu(np.ones_like(same), k=1) if same_set else np.ones_like(same)
    return scores[same & keep], scores[~same & keep]


def verification(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, Any]:
    if not len(genuine) or not len(impostor):
        return {"pairs": [len(genuine), len(impostor)], "note": "needs genuine and impostor pairs"}
    eer, eer_threshold = equal_error_rate(genuine, impostor)
    return {
        "pairs": {"genuine": len(genuine), "impostor": len(impostor)},
        "eer": eer,
        "eer_threshold": eer_threshold,
        "auc": roc_auc(genuine, impostor),
        "thresholds": {f"{fmr:g}": threshold_at_fmr(impostor, fmr) for fmr in FMRS},
    }


def rates(scores: np.ndarray, thresholds: dict[str, float | None], protect: bool = False) -> dict[str, float | None]:
    measure = protection_success_rate if protect else rate_at_or_above
    return {fmr: (None if t is None or not len(scores) else measure(scores, t)) for fmr, t in thresholds.items()}


def load_matchers(specs: list[str], model: bundle_io.Bundle | None) -> dict[str, Embed]:
    def wrap(net: torch.nn.Module) -> Embed:
        def embed(faces: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return torch.cat([net(chunk) for chunk in faces.split(32)]).numpy()

        return embed

    matchers = {"loss": wrap(model.face_embedder)} if model is not None else {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--matchers takes NAME=WEIGHTS, got {spec!r}")
        net = load_checkpoint(path).face_embedder
        if net is None:
            raise SystemExit(f"{path}: not a face-recognition checkpoint")
        matchers[name] = wrap(net)
    if not matchers:
        raise SystemExit("no matcher: give --bundle (its FR network) or --matchers NAME=WEIGHTS")
    return matchers


def load_photos(
    data: Path, identities: Path, limit_people: int | None, framing: str
) -> tuple[list[dict[str, Any]], list[str]]:
    rows = list(csv.DictReader(identities.open()))
    people = sorted({r["identity"] for r in rows})[:limit_people]
    detector = FaceDetector()
    photos, skipped = [], []
    for row in tqdm([r for r in rows if r["identity"] in people], desc="detect and align", unit="photo"):
        photo = np.asarray(open_rgb(data / row["file"]))
        found = detector.detect(photo)
        if not len(found):
            skipped.append(row["file"])
            continue
        face = largest_face(found)
        image = torch.tensor(photo).permute(2, 0, 1).float()
        fr_face = arcface_crop(image / 127.5 - 1, face[5:])
        photos.append(
            {
                "file": row["file"],
                "person": row["identity"],
                "aligned": align_face(photo, face, 256, framing)[0],
                "fr": fr_face,
            }
        )
    return photos, skipped


def person_key(secret: bytes, key_set: int, person: str) -> SecretKey:
    return SecretKey(hmac.new(secret, f"{key_set}/{person}".encode(), hashlib.sha256).digest())


def make_protect(
    args: argparse.Namespace, model: bundle_io.Bundle | None
) -> Callable[[list[np.ndarray], list[SecretKey]], list[np.ndarray]]:
    if args.server:
        from PIL import Image

        from anonymixer_client import AnonymixerClient  # the service, over gRPC

        client = AnonymixerClient(args.server, timeout_s=3600)
        client.wait_until_ready(60)

        def remote(images: list[np.ndarray], keys: list[SecretKey]) -> list[np.ndarray]:
            faces = client.protect(images, [k.reveal() for k in keys], steps=args.steps)
            return [np.asarray(Image.open(io.BytesIO(f.png)).convert("RGB")) for f in faces]

        return remote
    from anonymixer.config import ProtectConfig
    from anonymixer.protect import Protector

    assert model is not None
    overrides = {**model.config.get("algorithm", {}), **({"views": args.views} if args.views is not None else {})}
    protector = Protector(model, ProtectConfig.from_dict(overrides))

    def local(images: list[np.ndarray], keys: list[SecretKey]) -> list[np.ndarray]:
        return [f.image for f in protector.protect(images, keys, steps=args.steps)]

    return local


def attacks(model: bundle_io.Bundle, protected: np.ndarray, rows: tuple[int, int]) -> dict[str, np.ndarray]:
    """Reconstructions an attacker can make from protected faces [B, R, R, 3] (uint8)."""
    stages = torch_stages(model)
    with torch.no_grad():
        w = torch.cat([stages.encode(resize(chunk, ALIGNED_SIZE)) for chunk in to_unit(protected).split(8)])
        reinverted = model.generator.synthesis(w)
        unmixed = w.clone()
        unmixed[:, rows[0] : rows[1]] = model.w_avg  # undo the key: the mean latent in its rows
        reverted = model.generator.synthesis(unmixed)
    return {"reinvert": reinverted.clamp(-1, 1), "unmix_with_key_knowledge": reverted.clamp(-1, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = bundle_io.load(args.bundle) if args.bundle else None
    matchers = load_matchers(args.matchers, model)
    framing = args.framing or (model.framing if model else "ffhq")
    photos, skipped = load_photos(Path(args.data), Path(args.identities), args.limit_people, framing)
    people = [p["person"] for p in photos]
    protect = make_protect(args, model)
    secret = secrets.token_bytes(32)
    protected = []
    start = time.perf_counter()
    for key_set in range(args.keys):
        keys = [person_key(secret, key_set, p) for p in people]
        faces = []
        for first in tqdm(range(0, len(photos), args.batch), desc=f"protect, key set {key_set}", unit="batch"):
            chunk = slice(first, first + args.batch)
            faces += protect([p["aligned"] for p in photos[chunk]], keys[chunk])
        protected.append(np.stack(faces))
    protect_seconds = time.perf_counter() - start
    rows = tuple(model.config.get("algorithm", {}).get("identity_layers", (3, 8))) if model else (3, 8)
    recon = attacks(model, protected[0], rows) if model is not None else {}

    report: dict[str, Any] = {
        # seeded random bundles record their seed as their source (anonymixer.profiles)
        "random_weights": bool(model is not None and "seed" in model.config.get("sources", {})),
        "photos": len(photos),
        "people": len(set(people)),
        "skipped_no_face": skipped,
        "key_sets": args.keys,
        "steps": args.steps,
        "protect_seconds": round(protect_seconds, 1),
        "fid": "not computed: this project ships no Inception network",
        "matchers": {},
    }
    originals_fr = torch.stack([p["fr"] for p in photos])
    for name, embed in matchers.items():
        e_orig = embed(originals_fr)
        e_prot = [embed(fr_crop(to_unit(faces))) for faces in protected]
        original_pairs = pair_scores(e_orig, e_orig, people, True)
        protected_pairs = pair_scores(e_prot[0], e_prot[0], people, True)
        base, preserved = verification(*original_pairs), verification(*protected_pairs)
        thresholds = base.get("thresholds", {})
        mated, non_mated = pair_scores(e_prot[0], e_prot[1], people, False)
        link = unlinkability(mated, non_mated)
        own = np.sum(e_prot[0] * e_orig, axis=1)
        entry = {
            "originals": base,
            "psr": rates(own, thresholds, protect=True),
            "protected_vs_original_cosine_mean": float(own.mean()),
            "preservation": preserved,
            "revocability_match_rate": rates(mated, preserved.get("thresholds", {})),
            "unlinkability_d_sys": link.system,
            "irreversibility_match_rate": {
                attack: rates(np.sum(embed(fr_crop(images)) * e_orig, axis=1), thresholds)
                for attack, images in recon.items()
            },
        }
        report["matchers"][name] = entry
        plot_unlinkability(link, out / f"unlinkability_{name}.png", name)
        plot_error_curves({"originals": original_pairs, "protected": protected_pairs}, out / f"det_{name}.png", name)
    grid_rows = [photos.index(next(p for p in photos if p["person"] == person)) for person in sorted(set(people))]
    columns = [to_unit(np.stack([photos[i]["aligned"] for i in grid_rows]))]
    columns += [to_unit(faces[grid_rows]) for faces in protected]
    columns += [images[grid_rows] for images in recon.values()]
    save_grid(columns, out / "grid.png", tile=128)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "report.md").write_text(markdown(report, list(recon)))
    return report


def plot_unlinkability(link: Any, path: Path, name: str) -> None:
    plt = headless_pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(link.bin_centres, link.mated_density, label="mated (same person, other key)")
    ax.plot(link.bin_centres, link.non_mated_density, label="non-mated (other person)")
    ax.set_xlabel("cosine score")
    ax.set_ylabel("density")
    twin = ax.twinx()
    twin.plot(link.bin_centres, link.local, "k--", label="D↔(s)")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("D↔(s)")
    ax.set_title(f"{name}: D↔sys = {link.system:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pairs(result: dict[str, Any]) -> str:
    counts = result["pairs"]
    return f"{counts['genuine']} / {counts['impostor']}" if isinstance(counts, dict) else f"{counts} (too few)"


def plot_error_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, name: str) -> None:
    """FNMR against FMR (a DET curve on log axes) for each (genuine, impostor) score set."""
    plt = headless_pyplot()

    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (genuine, impostor) in curves.items():
        if not len(genuine) or not len(impostor):
            continue
        thresholds = np.unique(np.concatenate([genuine, impostor]))
        fmr, fnmr = error_rates(genuine, impostor, thresholds)
        floor = 0.5 / max(len(genuine), len(impostor))  # zero rates drawn at half a pair
        ax.plot(np.maximum(fmr, floor), np.maximum(fnmr, floor), label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FMR")
    ax.set_ylabel("FNMR")
    ax.set_title(f"{name}: error trade-off")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any], attack_names: list[str]) -> str:
    lines = ["# Privacy evaluation", ""]
    if report["random_weights"]:
        lines += [
            "**Random-weight bundle: the privacy numbers below mean nothing; the run only shows the pipeline.**",
            "",
        ]
    lines += [
        f"{report['photos']} photos of {report['people']} people, {report['key_sets']} key sets, "
        f"steps {report['steps'] or 'server default'}; skipped (no face): {report['skipped_no_face'] or 'none'}; "
        f"FID: {report['fid']}. — means not measurable with this many pairs.",
        "",
    ]
    for name, m in report["matchers"].items():
        o, p = m["originals"], m["preservation"]
        lines += [
            f"## Matcher `{name}`",
            "",
            "| | EER | AUC | genuine/impostor pairs |",
            "| --- | --- | --- | --- |",
            f"| originals | {fmt(o.get('eer'))} | {fmt(o.get('auc'))} | {pairs(o)} |",
            f"| protected vs protected (same key set) | {fmt(p.get('eer'))} | {fmt(p.get('auc'))} | {pairs(p)} |",
            "",
            "PSR and the attacks use the originals' threshold at each FMR; revocability uses the protected"
            " domain's threshold at the same FMR.",
            "",
            "| FMR | threshold | PSR | revocability match rate | "
            + " | ".join(f"{a} match rate" for a in attack_names)
            + " |",
            "| --- " * (4 + len(attack_names)) + "|",
        ]
        for fmr, t in o.get("thresholds", {}).items():
            attack_cells = [fmt(m["irreversibility_match_rate"][a][fmr]) for a in attack_names]
            cells = [fmr, fmt(t), fmt(m["psr"][fmr]), fmt(m["revocability_match_rate"].get(fmr)), *attack_cells]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Unlinkability D↔sys = {m['unlinkability_d_sys']:.4f} (0 = unlinkable; plot `unlinkability_{name}.png`); "
            f"mean cos(protected, original) = {m['protected_vs_original_cosine_mean']:.4f}.",
            "",
        ]
    lines += [
        "`grid.png`: per person, the original, then each key set, then each attack's reconstruction; "
        "`det_<matcher>.png`: FNMR against FMR for the originals and the protected faces.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anonymixer.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of photos")
    parser.add_argument("--identities", required=True, help="CSV with columns file, identity")
    parser.add_argument("--bundle", help="protect in-process with this bundle (and run the attacks)")
    parser.add_argument(
        "--framing", choices=sorted(FRAMINGS), help="face alignment (default: the bundle's; ffhq with --server)"
    )
    parser.add_argument("--server", help="protect through the service at this gRPC address instead")
    parser.add_argument("--matchers", nargs="*", default=[], help="NAME=WEIGHTS (IR-SE or MobileFaceNet checkpoint)")
    parser.add_argument("--keys", type=int, default=2, help="key sets (≥ 2; default 2)")
    parser.add_argument("--steps", type=int, default=None, help="refinement steps (default: the algorithm's)")
    parser.add_argument("--views", type=int, default=None, help="augmented views, in-process only")
    parser.add_argument("--limit-people", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8, help="photos per protect call (default 8)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.keys < 2:
        parser.error("--keys must be ≥ 2 (revocability and unlinkability compare key sets)")
    if not args.bundle and not args.server:
        parser.error("give --bundle DIR or --server URL")
    try:
        report = run(args)
    except bundle_io.BundleError as exc:  # e.g. a bundle that cannot protect yet (mobile1024: no encoder)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/report.json, report.md, grid.png, det_*.png and unlinkability_*.png", file=sys.stderr)
    return 0 if report["matchers"] else 1


if __name__ == "__main__":
    sys.exit(main())
