"""Attacks that try to recover the *original's* identity from a protected face.

Both start from what any holder of a protected face and of the method (the bundle: generator,
inversion) can do — re-invert the protected face into W+ with the service's own inversion (the
encoder when the bundle has one, else optimisation from the mean latent):

* **re-inversion**: render that latent. It recovers the protected face as faithfully as the
  inversion allows; it shows whether the refinement left the original's identity in the image.
* **prior-mean**: the attacker knows which rows the key overwrote (the method is public) but not
  what they held, and writes the generator's mean latent ``w_avg`` — the best guess with no other
  knowledge — into the identity rows before rendering. If the original's identity survived in the
  other rows, this brings it forward.

The reconstructions are scored against the original photos by the evaluation's matchers.
"""

from __future__ import annotations

import numpy as np

from anonymixer.protect import Protector
from evaluation.matchers import as_aligned

ATTACKS = ("re-inversion", "prior-mean")


def reconstruct(protector: Protector, protected: np.ndarray) -> dict[str, np.ndarray]:
    """Each attack's reconstructions of aligned protected faces uint8 [N, S, S, 3], as aligned
    faces uint8 [N, 256, 256, 3]."""
    w = protector.invert(list(protected))
    start, stop = protector.config.identity_layers
    prior_mean = w.clone()
    prior_mean[:, start:stop] = protector.model.w_avg
    return {"re-inversion": as_aligned(protector.render(w)), "prior-mean": as_aligned(protector.render(prior_mean))}
