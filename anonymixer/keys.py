"""User keys → synthetic latents, bit-identical on every machine (DESIGN §5, "Key → latent").

    z      = BoxMuller(HKDF-SHA256(ikm=key, salt=deployment salt, info="anonymixer/v1/z"))  float64 → float32
    w_key  = w_avg + ψ·(mapping(z) − w_avg)                                                  ψ = 0.7

Each standard normal pair comes from two 53-bit uniforms in (0, 1) read from consecutive 8-byte
big-endian words of the HKDF output stream. HKDF output is prefix-stable, so the first ``d``
values of a 512-value derivation equal a ``d``-value derivation (the small ``tiny`` profile uses
the same stream). No torch random number generator is involved anywhere. Changing any of this
changes every user's protected identity: bump ``KEY_DERIVATION_VERSION`` and the info string.

``mapping(z)`` is the bundle's own PyTorch mapping network run in float32 on the CPU, one key at a
time, whatever device, dtype or autocast the caller runs in (:func:`key_latents`): a key must mean
the same face on every deployment. An FP16 TensorRT engine (its plan check allows 1 % per item) or
bf16 autocast (5e-2 at most on a seeded 512-d mapping) move ``w``, and even fp32 kernels round a
row differently with its batch size (a key alone and among 15 others differ by ~5e-6 on a CPU).
The ``rotate`` mix mode (:mod:`anonymixer.mixing`) and the identity target also draw orthogonal
matrices from the key (:func:`key_rotation`, float64 from an HKDF seed). The service reports
:func:`identity_derivation` with every face, so that clients can tell templates of different
derivations apart.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from anonymixer.networks import AnyGenerator
from anonymixer.networks.stylegan2 import truncate

if TYPE_CHECKING:  # anonymixer.config imports this module (through augment)
    from anonymixer.config import ProtectConfig

KEY_DERIVATION_VERSION = 1
Z_INFO = b"anonymixer/v1/z"
MIN_KEY_BYTES = 1
MAX_KEY_BYTES = 1024
HASH_LEN = 32


class SecretKey:
    """A user's secret key. Its repr and str never show the bytes, so it cannot leak into logs."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes | bytearray | str) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray)):
            raise TypeError(f"a key must be bytes or str, not {type(secret).__name__}")
        if not MIN_KEY_BYTES <= len(secret) <= MAX_KEY_BYTES:
            raise ValueError(f"a key must be {MIN_KEY_BYTES}–{MAX_KEY_BYTES} bytes, got {len(secret)}")
        self._secret = bytes(secret)

    @classmethod
    def of(cls, key: SecretKey | bytes | bytearray | str) -> SecretKey:
        return key if isinstance(key, SecretKey) else cls(key)

    def reveal(self) -> bytes:
        """The raw bytes, for key derivation only."""
        return self._secret

    def __len__(self) -> int:
        return len(self._secret)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._secret).digest())

    def __repr__(self) -> str:
        return f"SecretKey(<{len(self._secret)} bytes, redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("SecretKey is not picklable: keys must not be written anywhere")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256 (an empty salt means HashLen zero bytes, as the RFC says)."""
    if length > 255 * HASH_LEN:
        raise ValueError(f"HKDF-SHA256 can expand to at most {255 * HASH_LEN} bytes")
    prk = hmac.new(salt or bytes(HASH_LEN), ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for counter in range(1, math.ceil(length / HASH_LEN) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


def uniforms(stream: bytes) -> list[float]:
    """8-byte big-endian words → uniforms in the open interval (0, 1), 53 bits each."""
    return [((word >> 11) + 0.5) * 2.0**-53 for (word,) in struct.iter_unpack(">Q", stream)]


def salt_fingerprint(salt: bytes) -> str:
    """12 hex digits that name a deployment salt in logs without revealing it (a domain-separated
    SHA-256 of random bytes cannot be turned back); the empty salt is ``none``."""
    if not salt:
        return "none"
    return hmac.new(b"anonymixer/salt-fingerprint", salt, hashlib.sha256).hexdigest()[:12]


def key_z(key: SecretKey, salt: bytes = b"", dim: int = 512) -> np.ndarray:
    """The key's z: ``dim`` standard normals, derived in float64 and returned as float32."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"z dimension must be a positive even number, got {dim}")
    u = uniforms(hkdf_sha256(key.reveal(), salt, Z_INFO, 8 * dim))
    z = np.empty(dim, dtype=np.float64)
    for i in range(0, dim, 2):  # Box–Muller with Python's libm: no vectorised-math variations
        radius = math.sqrt(-2.0 * math.log(u[i]))
        angle = 2.0 * math.pi * u[i + 1]
        z[i], z[i + 1] = radius * math.cos(angle), radius * math.sin(angle)
    return z.astype(np.float32)


def identity_derivation(config: ProtectConfig) -> str:
    """What turns a key into a protected identity under ``config``, e.g.
    ``anonymixer/key-v1/paper/rows3-8/psi0.7`` or
    ``anonymixer/key-v1/template/rows4-13/psi0.7/white128-attr8-share1``: templates of different
    derivations do not compare (the service returns it with every face; clients refuse to verify
    across two)."""
    c = config
    start, stop = c.identity_layers
    parts = [f"anonymixer/key-v{KEY_DERIVATION_VERSION}", c.mix_mode, f"rows{start}-{stop}", f"psi{c.truncation_psi:g}"]
    if c.mix_mode == "rotate":
        kept = c.kept_dims or c.whitened_dims
        parts.append(f"white{c.whitened_dims}-kept{kept}-residual{int(c.keep_residual)}-rpsi{c.rotation_psi:g}")
    if c.mix_mode == "template":
        parts.append(f"white{c.whitened_dims}-attr{c.attribute_dims}-share{c.person_share:g}")
    if c.target_weight:
        parts.append(f"target{c.target_weight:g}")
    return "/".join(parts)


def cpu_float32(generator: AnyGenerator) -> AnyGenerator:
    """``generator`` itself if it is all float32 on the CPU, else a float32 CPU copy of it: where
    :func:`key_latents` runs the mapping. Make the copy once per process (a Protector does): the
    function copies a GPU generator at every call."""
    tensors = [*generator.parameters(), *generator.buffers()]
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return generator
    return copy.deepcopy(generator).to("cpu", torch.float32)


@torch.no_grad()
def key_latents(
    keys: Sequence[SecretKey],
    generator: AnyGenerator,
    w_avg: torch.Tensor,
    *,
    salt: bytes = b"",
    psi: float = 0.7,
) -> torch.Tensor:
    """w_key [B, style_dim] for each key, on ``w_avg``'s device: ``generator.mapping(z)`` truncated
    toward ``w_avg``, in float32 on the CPU (:func:`cpu_float32`), autocast off, each key alone
    (a row's rounding would otherwise depend on its batch-mates). Bit-identical for a key and salt
    whatever the caller's device, dtype, autocast or batch."""
    cpu, centre = cpu_float32(generator), w_avg.detach().to("cpu", torch.float32)
    with torch.autocast("cpu", enabled=False):
        w = torch.cat([cpu.mapping(torch.from_numpy(key_z(k, salt, centre.shape[-1]))[None]) for k in keys])
        return truncate(w, centre, psi).to(w_avg.device)


# what a key's rotations turn: the whitened identity code (anonymixer.mixing, "rotate") and the
# face-recognition template the refinement pulls toward (anonymixer.refine, target_weight)
ROTATION_INFO = {"latent": b"anonymixer/v1/rotation/latent", "template": b"anonymixer/v1/rotation/template"}


def key_rotation(key: SecretKey, salt: bytes, dims: int, what: str = "latent") -> np.ndarray:
    """A ``dims``×``dims`` orthogonal matrix drawn uniformly (Haar) from the key, float64, for
    ``what`` (:data:`ROTATION_INFO`).

    HKDF gives a 256-bit seed for numpy's legacy Mersenne Twister (whose stream numpy keeps fixed)
    and a QR decomposition of its Gaussian matrix, signs fixed so that the draw is uniform."""
    seed = hkdf_sha256(key.reveal(), salt, ROTATION_INFO[what], HASH_LEN)
    gaussian = np.random.RandomState(np.frombuffer(seed, dtype=">u4").astype(np.uint32)).standard_normal((dims, dims))
    q, r = np.linalg.qr(gaussian)
    return q * np.sign(np.diag(r))
