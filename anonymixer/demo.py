"""``python -m anonymixer.demo``: run the core on sample faces and write before/after pictures.

At this stage of the project the demo inverts each face with the bundle's e4e encoder and renders
it back with its StyleGAN2 generator (the key mixing and refinement loop arrive with the algorithm
issue). With the default ``tiny`` bundle the networks are seeded random weights, so the "after"
column is structured noise: the demo shows that the whole path runs, not what trained weights do.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from anonymixer import bundle, profiles
from anonymixer.images import center_square, open_rgb, save_grid, to_tensor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# The face of the public-domain NASA portrait that scikit-image ships as ``astronaut.png``.
ASTRONAUT_FACE_BOX = (150, 20, 330, 200)


def sample_faces() -> list[tuple[str, Image.Image]]:
    """Built-in sample: the astronaut portrait shipped inside the scikit-image wheel."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise SystemExit("no --faces given and scikit-image (the built-in sample) is not installed")
    path = Path(spec.origin).parent / "data" / "astronaut.png"
    return [("astronaut", open_rgb(path).crop(ASTRONAUT_FACE_BOX))]


def collect_faces(paths: list[str], limit: int) -> list[tuple[str, Image.Image]]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"--faces: {p} does not exist")
    # Photos are not aligned yet (face detection comes later): a centred square crop stands in.
    return [(f.stem, center_square(open_rgb(f))) for f in files[:limit]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anonymixer.demo", description=__doc__)
    parser.add_argument("--bundle", default="build/bundles/tiny", help="bundle folder (built as tiny if absent)")
    parser.add_argument("--faces", nargs="*", default=[], help="face images or folders (default: built-in sample)")
    parser.add_argument("--limit", type=int, default=8, help="at most this many faces (default 8)")
    parser.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    args = parser.parse_args(argv)

    bundle_dir = Path(args.bundle)
    if not (bundle_dir / bundle.MANIFEST).exists():
        print(f"building the tiny bundle in {bundle_dir} …", file=sys.stderr)
        profiles.build_tiny(bundle_dir)
    model = bundle.load(bundle_dir)
    faces = collect_faces(args.faces, args.limit) if args.faces else sample_faces()
    size = int(model.config["encoder"]["input_size"])
    before, after = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for _, face in tqdm(faces, desc="faces", unit="face", file=sys.stderr):
            w_plus = model.encoder(to_tensor(face, size)[None])
            before.append(to_tensor(face, 256)[None])
            after.append(model.generator.synthesis(w_plus))
    grid = save_grid([torch.cat(before), torch.cat(after)], Path(args.out) / "before_after.png")
    elapsed = time.perf_counter() - start
    print(f"{len(faces)} face(s) through the {model.config['profile']} bundle in {elapsed:.2f} s; wrote {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
