"""Key derivation: RFC-correct HKDF, frozen test vectors, statistics, and keys that never show."""

from __future__ import annotations

import hashlib
import logging
import pickle

import numpy as np
import pytest
import torch

from anonymixer import bundle
from anonymixer.config import ProtectConfig
from anonymixer.keys import SecretKey, cpu_float32, hkdf_sha256, identity_derivation, key_latents, key_z
from anonymixer.networks.stylegan2 import truncate

# Frozen: if one of these changes, every user's protected identity changes. Do not edit them to
# make a test pass — bump the derivation version instead (anonymixer.keys).
VECTORS = [
    (
        b"a",
        b"",
        [0.8198626637458801, 1.050889253616333, -0.5977127552032471, -0.6716548800468445],
        "5b50ccbed4a0180ec6c2113ba26633925b009263aa7391f0c158d375fcc15e51",
    ),
    (
        b"correct horse battery staple",
        b"",
        [-0.3354721665382385, -1.078803300857544, -0.5993372201919556, 0.35515934228897095],
        "0247cd8fc977325c23176cd4ec66992fa3b6038892f5bc83e507ce363c479e21",
    ),
    (
        bytes(range(256)) * 4,
        b"",
        [0.5062468647956848, 1.7837624549865723, 1.258589267730713, -0.1999756246805191],
        "3022858fae58a39b40aed723528f87a6fd5981a32e8e80a1a85ec0e6dc8ec607",
    ),
    (
        b"a",
        b"deployment-salt",
        [-0.8553364872932434, -0.4634767174720764, -0.8759905695915222, 0.6608002781867981],
        "93ae1169c61433dae3c1b4264b6eccb8b338fd95434ba35aeeb322b5c35bebce",
    ),
]


def test_hkdf_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


@pytest.mark.parametrize(("key", "salt", "first", "digest"), VECTORS)
def test_key_vectors(key: bytes, salt: bytes, first: list[float], digest: str) -> None:
    z = key_z(SecretKey(key), salt)
    assert z.dtype == np.float32 and z.shape == (512,)
    assert [float(v) for v in z[:4]] == first
    assert hashlib.sha256(z.astype("<f4").tobytes()).hexdigest() == digest


def test_shorter_z_is_a_prefix_and_statistics_are_standard_normal() -> None:
    key = SecretKey(b"prefix")
    assert np.array_equal(key_z(key, dim=64), key_z(key)[:64])
    z = np.stack([key_z(SecretKey(f"user-{i}")) for i in range(200)])
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert np.abs(np.corrcoef(z[:, :8].T) - np.eye(8)).max() < 0.25  # coordinates uncorrelated


def test_key_latent_is_truncated_mapping(tiny_bundle_dir) -> None:
    model = bundle.load(tiny_bundle_dir)
    keys = [SecretKey(b"k1"), SecretKey(b"k2")]
    w = key_latents(keys, model.generator, model.w_avg, psi=0.7)
    z = torch.from_numpy(np.stack([key_z(k, dim=64) for k in keys]))
    torch.testing.assert_close(w, truncate(model.generator.mapping(z), model.w_avg, 0.7))
    assert not torch.allclose(w[0], w[1])
    salted = key_latents(keys[:1], model.generator, model.w_avg, salt=b"s", psi=0.7)
    assert not torch.allclose(salted[0], w[0])


KEYS = [SecretKey(f"user {i}") for i in range(16)]


def test_a_keys_latent_ignores_its_batch_mates_autocast_and_the_generators_dtype(tiny_bundle_dir) -> None:
    """fp32 CPU kernels round a row differently by batch size (~2e-6 here), bf16 autocast by far
    more: neither may reach a key's latent. A generator held in another dtype is mapped through an
    fp32 CPU copy."""
    model = bundle.load(tiny_bundle_dir)
    together = key_latents(KEYS, model.generator, model.w_avg, salt=b"s")
    assert together.dtype == torch.float32
    alone = torch.cat([key_latents([k], model.generator, model.w_avg, salt=b"s") for k in KEYS])
    assert torch.equal(together, alone)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = key_latents(KEYS, model.generator, model.w_avg, salt=b"s")
    assert autocast.dtype == torch.float32 and torch.equal(autocast, together)
    wide = model.generator.double()  # fp32 → fp64 is exact, so its fp32 copy equals the original
    copy = cpu_float32(wide)
    assert copy is not wide and all(p.dtype == torch.float32 for p in copy.parameters())
    mapped = key_latents(KEYS, wide, model.w_avg.double(), salt=b"s")
    assert mapped.dtype == torch.float32 and torch.equal(mapped, together)


@pytest.mark.gpu
def test_a_keys_latent_is_the_same_on_the_gpu(tiny_bundle_dir) -> None:
    cpu = bundle.load(tiny_bundle_dir)
    gpu = bundle.load(tiny_bundle_dir, "cuda")
    on_gpu = key_latents(KEYS, gpu.generator, gpu.w_avg, salt=b"s")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), key_latents(KEYS, cpu.generator, cpu.w_avg, salt=b"s"))


def test_identity_derivation_names_what_makes_a_keys_identity() -> None:
    assert identity_derivation(ProtectConfig()) == "anonymixer/key-v1/paper/rows3-8/psi0.7"
    changed = [
        ProtectConfig(mix_mode="reference"),
        ProtectConfig(identity_layers=(2, 8)),
        ProtectConfig(truncation_psi=0.5),
    ]
    assert len({identity_derivation(c) for c in [ProtectConfig(), *changed]}) == 4
    assert identity_derivation(ProtectConfig(steps=3, views=0)) == identity_derivation(ProtectConfig())


def test_secret_key_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    key = SecretKey("hunter2-very-secret")
    logging.getLogger("t").warning("key=%s repr=%r f=%s", key, key, f"{key}")
    assert "hunter2" not in caplog.text and "redacted" in caplog.text
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(key)
    assert key == SecretKey(b"hunter2-very-secret") and key != SecretKey(b"other")


@pytest.mark.parametrize(
    ("secret", "message"), [(b"", "1–1024 bytes, got 0"), (b"x" * 1025, "got 1025"), (12, "bytes or str")]
)
def test_bad_keys(secret: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        SecretKey(secret)  # type: ignore[arg-type]
