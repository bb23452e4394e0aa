"""User keys → synthetic latents, bit-identical on every machine (DESIGN §5, "Key → latent").

    z      = BoxMuller(HKDF-SHA256(ikm=key, salt=deployment salt, info="anonymixer/v1/z"))  float64 → float32
    w_key  = w_avg + ψ·(mapping(z) − w_avg)                                                  ψ = 0.7

Each standard normal pair comes from two 53-bit uniforms in (0, 1) read from consecutive 8-byte
big-endian words of the HKDF output stream. HKDF output is prefix-stable, so the first ``d``
values of a 512-value derivation equal a ``d``-value derivation (the small ``tiny`` profile uses
the same stream). No torch random number generator is involved anywhere. Changing any of this
changes every user's protected identity: bump ``KEY_DERIVATION_VERSION`` and the info string.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Callable, Sequence

import numpy as np
import torch

from anonymixer.networks.stylegan2 import truncate

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


@torch.no_grad()
def key_latents(
    keys: Sequence[SecretKey],
    mapping: Callable[[torch.Tensor], torch.Tensor],
    w_avg: torch.Tensor,
    *,
    salt: bytes = b"",
    psi: float = 0.7,
) -> torch.Tensor:
    """w_key [B, style_dim] for each key: ``mapping(z)`` (the generator's MLP) truncated toward ``w_avg``."""
    z = torch.from_numpy(np.stack([key_z(k, salt, w_avg.shape[-1]) for k in keys])).to(w_avg.device)
    return truncate(mapping(z), w_avg, psi)
