"""``python -m anonymixer.demo``: protect sample faces under two keys and write a before/after grid.

Each face is inverted with the bundle's e4e encoder, mixed with each key's latent, refined by the
Adam loop and rendered (``anonymixer.protect``). With the default ``tiny`` bundle the networks are
seeded random weights, so the protected columns are structured noise: the demo shows that the whole
algorithm runs (and how long it takes), not what trained weights produce. Photos are not aligned
yet (face detection comes with scene mode): a centred square crop stands in for alignment.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from anonymixer import bundle, profiles
from anonymixer.images import center_square, open_rgb, save_grid
from anonymixer.protect import Protector

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# The face of the public-domain NASA portrait that scikit-image ships as ``astronaut.png``.
ASTRONAUT_FACE_BOX = (150, 20, 330, 200)
ALIGNED = 256
DEMO_KEYS = ("demo key A", "demo key B")


def sample_faces() -> list[tuple[str, Image.Image]]:
    """Built-in sample: the astronaut portrait shipped inside the scikit-image wheel (if installed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return []
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
    return [(f.stem, center_square(open_rgb(f))) for f in files[:limit]]


def as_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anonymixer.demo", description=__doc__)
    parser.add_argument("--bundle", default="build/bundles/tiny", help="bundle folder (built as tiny if absent)")
    parser.add_argument("--faces", nargs="*", default=[], help="face images or folders, after the built-in sample")
    parser.add_argument("--limit", type=int, default=4, help="at most this many --faces files (default 4)")
    parser.add_argument(
        "--keys",
        nargs="+",
        default=list(DEMO_KEYS),
        help="keys, one column each (demo only: a key on the command line is visible to other users of the machine)",
    )
    parser.add_argument("--steps", type=int, default=None, help="refinement steps (default: the bundle's, 50)")
    parser.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    args = parser.parse_args(argv)

    bundle_dir = Path(args.bundle)
    if not (bundle_dir / bundle.MANIFEST).exists():
        print(f"building the tiny bundle in {bundle_dir} …", file=sys.stderr)
        profiles.build_tiny(bundle_dir)
    protector = Protector(bundle.load(bundle_dir))
    faces = sample_faces() + collect_faces(args.faces, args.limit)
    if not faces:
        raise SystemExit("no faces: give --faces, or install scikit-image for the built-in sample")
    aligned = [np.asarray(face.resize((ALIGNED, ALIGNED), Image.BICUBIC)) for _, face in faces]
    columns = [as_tensor(aligned)]
    for key in args.keys:
        steps = protector.config.steps if args.steps is None else args.steps
        start = time.perf_counter()
        with tqdm(total=steps, desc=f"key {len(columns)}", unit="step", file=sys.stderr) as bar:
            results = protector.protect(aligned, key, steps=steps, on_step=lambda *_: bar.update())
        elapsed = time.perf_counter() - start
        columns.append(as_tensor([r.image for r in results]))
        sims = ", ".join(f"{name} {r.original_similarity:+.3f}" for (name, _), r in zip(faces, results, strict=True))
        print(
            f"key {len(columns) - 1}: {len(faces)} face(s), {results[0].steps} steps, "
            f"{protector.config.views} views each, {elapsed:.1f} s; cos(protected, original): {sims}"
        )
    grid = save_grid(columns, Path(args.out) / "before_after.png")
    print(f"wrote {grid} (columns: original, then one per key; {protector.model.config['profile']} bundle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
