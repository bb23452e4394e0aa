"""Attacks that try to recover the *original's* identity from a protected face.

All start from what any holder of a protected face and of the method (the bundle: generator,
inversion) can do — re-invert the protected face into W+ with the service's own inversion (the
encoder when the bundle has one, else optimisation from the mean latent):

* **re-inversion**: render that latent. It recovers the protected face as faithfully as the
  inversion allows; it shows whether the refinement left the original's identity in the image.
* **prior-mean**: the attacker knows which rows the key decides (the method is public:
  :func:`anonymixer.mixing.key_rows` of the mix mode) but not the key, and writes the generator's
  mean latent ``w_avg`` — the best guess with no other knowledge — into them before rendering. If
  the original's identity survived in the other rows, this brings it forward.
* **key-aware** (ISO/IEC 24745's irreversibility with the key): the attacker also holds the key,
  undoes what the key did (:meth:`anonymixer.protect.Protector.unmix`: ``rotate`` turned back, the
  mean in the key's rows of the other modes) and renders.

The reconstructions are scored against the original photos by the evaluation's matchers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anonymixer.keys import SecretKey
from anonymixer.mixing import key_rows
from anonymixer.protect import Protector
from evaluation.matchers import as_aligned

ATTACKS = ("re-inversion", "prior-mean", "key-aware")


def reconstruct(protector: Protector, protected: np.ndarray, keys: Sequence[SecretKey]) -> dict[str, np.ndarray]:
    """Each attack's reconstructions of aligned protected faces uint8 [N, S, S, 3], protected
    under ``keys`` (one per face), as aligned faces uint8 [N, 256, 256, 3]."""
    w = protector.invert(list(protected))
    start, stop = key_rows(protector.config.mix_mode, protector.config.identity_layers)
    prior_mean = w.clone()
    prior_mean[:, start:stop] = protector.model.w_avg
    renders = {"re-inversion": w, "prior-mean": prior_mean, "key-aware": protector.unmix(w, list(keys))}
    return {name: as_aligned(protector.render(latent)) for name, latent in renders.items()}
