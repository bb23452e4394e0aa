"""What ``anonymixer demo`` leaves for a person to look at: the before/after grid, each scene photo
beside its protected copy, ``summary.json`` and a few printed lines."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from anonymixer.images import save_grid

if TYPE_CHECKING:  # the client is imported only where the service is called (apps.demo)
    from anonymixer_client import ProtectedFace, ProtectedScene


@dataclass
class Served:
    """What the service answered: per key, the faces in input order; per scene photo, its answer."""

    faces: list[list[ProtectedFace]]
    protect_seconds: float
    scenes: list[ProtectedScene]
    scene_seconds: list[float]
    statistics: dict[str, int]


def _as_unit(pictures: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] → [B, 3, H, W] in [-1, 1], as save_grid takes them."""
    return torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1


def _pair_summary(names: list[str], pair: list[str], templates: list[np.ndarray]) -> dict[str, Any] | None:
    """The two photos of one person (--pair) and their templates' cosine under each key."""
    index = [names.index(Path(p).stem) for p in pair if Path(p).stem in names]
    if len(index) != 2:
        return None
    return {
        "photos": [names[i] for i in index],
        "template_cosine_per_key": [round(float(t[index[0]] @ t[index[1]]), 4) for t in templates],
    }


def write_outputs(
    out: Path,
    context: dict[str, Any],
    faces: list[tuple[str, np.ndarray]],
    reconstructions: np.ndarray,
    scene_photos: list[tuple[str, np.ndarray]],
    served: Served,
    pair: list[str],
    start: float,
) -> None:
    """before_after.png (aligned original | reconstruction | one column per key), scenes/<photo>.png
    (photo | protected photo) and summary.json in ``out``; the headline on stdout."""
    scene_dir = out / "scenes"
    scene_dir.mkdir(exist_ok=True)
    for (name, photo), scene in zip(scene_photos, served.scenes, strict=True):
        Image.fromarray(np.concatenate([photo, np.asarray(scene.image)], axis=1)).save(scene_dir / f"{name}.png")
    protected = [np.stack([np.asarray(f.image) for f in per_key]) for per_key in served.faces]
    originals = np.stack([face for _, face in faces])
    grid = save_grid([_as_unit(c) for c in [originals, reconstructions, *protected]], out / "before_after.png")

    names = [name for name, _ in faces]
    templates = [np.stack([f.template for f in per_key]) for per_key in served.faces]
    similarity = [[f.original_similarity for f in per_key] for per_key in served.faces]
    summary = {
        **context,
        "faces": names,
        "keys": len(served.faces),
        "requests": [
            {
                "key_index": i,
                "seconds": round(served.protect_seconds, 2),
                "original_similarity": [round(float(v), 4) for v in sims],
            }
            for i, sims in enumerate(similarity)
        ],
        "template_cosine_between_keys": (
            [round(float(a @ b), 4) for a, b in zip(templates[0], templates[1], strict=True)]
            if len(templates) > 1
            else []
        ),
        "same_person_pair": _pair_summary(names, pair, templates),
        "scenes": [
            {"photo": name, "faces": [f.action for f in scene.faces], "seconds": round(seconds, 2)}
            for (name, _), scene, seconds in zip(scene_photos, served.scenes, served.scene_seconds, strict=True)
        ],
        "server": served.statistics,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for i, sims in enumerate(similarity):
        listed = ", ".join(f"{name} {s:+.3f}" for name, s in zip(names, sims, strict=True))
        print(f"key {i + 1}: {served.protect_seconds:.1f} s; cos(protected, original): {listed}")
    if summary["same_person_pair"]:
        photos = ", ".join(summary["same_person_pair"]["photos"])
        print(
            f"one person, two photos ({photos}): template cos per key "
            f"{summary['same_person_pair']['template_cosine_per_key']}"
        )
    for scene in summary["scenes"]:
        print(f"scene {scene['photo']}: {len(scene['faces'])} face(s) {scene['faces']} in {scene['seconds']} s")
    print(
        f"wrote {grid} (aligned original | reconstruction | one column per key), {scene_dir}/*.png (photo | "
        f"protected photo) and {out / 'summary.json'}; {summary['total_seconds']} s in all"
    )
