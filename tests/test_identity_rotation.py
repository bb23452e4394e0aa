"""The ``rotate`` mix mode and the identity target (issue 27) on the tiny bundle: the whitened
space, the key's rotations, what a key holder recovers, and the protector end to end."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from anonymixer import profiles
from anonymixer.config import ProtectConfig
from anonymixer.keys import SecretKey, identity_derivation, key_rotation
from anonymixer.mixing import KeyTurn, Rotation, key_rows, mix_latents, unmix
from anonymixer.protect import Protector, image_tensor
from anonymixer.wspace import activate, fit_wspace, unactivate
from tests.test_protect import faces

DIMS = 32  # of the tiny generator's 64


@pytest.fixture(scope="module")
def model():
    return profiles.random_bundle("tiny")


@pytest.fixture(scope="module")
def space(model):
    return fit_wspace(model.generator.mapping, model.style_dim, DIMS)


def test_the_mappings_last_activation_is_undone_exactly() -> None:
    w = torch.randn(100, 64, dtype=torch.float64) * 3
    assert torch.allclose(activate(unactivate(w)), w)


def test_the_whitened_code_of_the_generators_own_w_is_standard_normal(model, space) -> None:
    z = torch.randn(4096, model.style_dim, generator=torch.Generator().manual_seed(1))
    code, _ = space.split(model.generator.mapping(z))
    assert code.mean(0).abs().max() < 0.1  # fitted on other seeded z: a fresh sample agrees
    assert (code.std(0) - 1).abs().max() < 0.1
    w = model.generator.mapping(z[:8])
    assert torch.allclose(space.latent(*space.split(w)), w, atol=1e-5)


def test_a_keys_rotation_is_orthogonal_reproducible_and_its_own() -> None:
    a, b = SecretKey("alice"), SecretKey("bob")
    r = key_rotation(a, b"", DIMS)
    np.testing.assert_allclose(r @ r.T, np.eye(DIMS), atol=1e-12)
    assert np.array_equal(r, key_rotation(a, b"", DIMS))
    assert not np.allclose(r, key_rotation(b, b"", DIMS))
    assert not np.allclose(r, key_rotation(a, b"salt", DIMS))
    assert not np.allclose(r, key_rotation(a, b"", DIMS, "template"))


def turn(model, space, rotation: Rotation, keys: list[str]) -> KeyTurn:
    own = model.generator.mapping(torch.randn(len(keys), model.style_dim, generator=torch.Generator().manual_seed(2)))
    matrices = torch.stack([torch.from_numpy(key_rotation(SecretKey(k), b"", DIMS)) for k in keys])
    return KeyTurn(rotation, space, matrices, space.split(own)[0])


def test_under_one_key_people_keep_their_distances_and_two_keys_part_them(model, space) -> None:
    w = model.generator.mapping(torch.randn(2, model.style_dim, generator=torch.Generator().manual_seed(3)))
    rows = w[:, None].expand(-1, 3, -1)
    whole = Rotation(DIMS, False, 1.0)
    one_key = turn(model, space, whole, ["k", "k"])
    turned = space.split(whole.apply(rows, one_key.matrices, one_key.codes, space))[0]
    originals = space.split(rows)[0]
    assert torch.allclose((turned[0] - turned[1]).norm(dim=-1), (originals[0] - originals[1]).norm(dim=-1), rtol=1e-4)
    two_keys = turn(model, space, whole, ["k", "j"])
    same_face = space.split(whole.apply(rows[:1].expand(2, -1, -1), two_keys.matrices, two_keys.codes, space))[0]
    # a random rotation moves a code as far as an unrelated code would be: ≈ √2 × its norm
    assert (same_face[0] - same_face[1]).norm(dim=-1).min() > originals[0].norm(dim=-1).min()


def test_a_key_holder_recovers_all_that_is_kept_and_nothing_that_is_not(model, space) -> None:
    w = model.generator.mapping(torch.randn(3, model.style_dim, generator=torch.Generator().manual_seed(4)))
    w_plus = w[:, None].expand(-1, model.generator.n_latent, -1).contiguous()
    rows = (2, 5)
    exact = turn(model, space, Rotation(DIMS, True, 1.0), ["a", "b", "c"])
    mixed = mix_latents(w_plus, w, "rotate", rows, exact).assemble()
    assert not torch.allclose(mixed[:, 2:5], w_plus[:, 2:5], atol=1e-2)
    assert torch.allclose(unmix(mixed, "rotate", rows, model.w_avg, exact), w_plus, atol=1e-4)
    lossy = turn(model, space, Rotation(DIMS // 4, False, 1.0), ["a", "b", "c"])
    back = unmix(mix_latents(w_plus, w, "rotate", rows, lossy).assemble(), "rotate", rows, model.w_avg, lossy)
    code, original = space.split(back[:, 2:5])[0], space.split(w_plus[:, 2:5])[0]
    assert torch.allclose(code[..., : DIMS // 4], original[..., : DIMS // 4], atol=1e-4)
    assert code[..., DIMS // 4 :].abs().max() < 1e-5  # the lost coordinates: only the mean is left


def test_the_rows_the_key_decides_per_mode() -> None:
    assert key_rows("paper", (3, 8)) == (3, 8)
    assert key_rows("rotate", (3, 8)) == (3, 8)
    assert key_rows("reference", (3, 8)) == (0, 3)


@pytest.fixture(scope="module")
def rotating(model) -> Protector:
    config = ProtectConfig(views=0, mix_mode="rotate", whitened_dims=DIMS, identity_layers=(2, 6), steps=2)
    return Protector(model, config)


def test_one_key_gives_two_people_two_faces_and_the_holder_can_turn_them_back(rotating) -> None:
    images = faces(2, 64)
    w = rotating.invert(images)
    keys = [SecretKey("one key")] * 2
    mixed = rotating.mix(w, keys).assemble()
    assert not torch.allclose(mixed[0, 2:6], mixed[1, 2:6], atol=1e-2)  # not one face for everybody
    # without the residual the holder gets back only the whitened part of the face's rows
    code, original = rotating.wspace.split(rotating.unmix(mixed, keys)[:, 2:6])[0], rotating.wspace.split(w[:, 2:6])[0]
    assert torch.allclose(code, original, atol=1e-3)
    protected = rotating.protect(images, "one key", steps=1)
    assert not np.array_equal(protected[0].image, protected[1].image)


def test_the_derivation_names_every_rotate_setting(rotating) -> None:
    name = identity_derivation(rotating.config)
    assert "rotate" in name and f"white{DIMS}" in name
    assert identity_derivation(replace(rotating.config, kept_dims=8)) != name
    assert identity_derivation(replace(rotating.config, target_weight=1.0)) != name


def test_the_identity_target_pulls_toward_the_keys_rotation_of_the_template(model) -> None:
    config = ProtectConfig(views=0, mix_mode="rotate", whitened_dims=DIMS, identity_layers=(2, 6), lr=0.05)
    images = faces(1, 64)
    plain = Protector(model, config)
    pulled = Protector(model, replace(config, target_weight=5.0, anonymity_weight=0.0, attribute_weight=0.0))
    latent = plain.invert(images)
    free = plain.protect(images, "k", steps=0, latents=latent)[0]
    pulled_face = pulled.protect(images, "k", steps=8, latents=latent)[0]
    assert pulled_face.loss_trace[-1] < pulled_face.loss_trace[0]  # the target term alone: it falls
    assert not np.array_equal(free.image, pulled_face.image)


def test_protect_works_under_no_grad(rotating) -> None:
    with torch.no_grad():
        out = rotating.protect(faces(1, 64), "k", steps=1)
    assert out[0].steps == 1


@pytest.fixture(scope="module")
def templated(model) -> Protector:
    config = ProtectConfig(
        views=0, mix_mode="template", whitened_dims=DIMS, identity_layers=(2, 6), steps=1, attribute_dims=4
    )
    return Protector(model, config)


def test_a_template_code_follows_the_person_not_the_photo(templated) -> None:
    images = faces(3, 64)
    w = templated.invert(images)
    x = torch.stack(
        [
            templated.templates(torch.stack([image_tensor(im, "cpu")]), torch.zeros(1, dtype=torch.long))[0]
            for im in images
        ]
    )
    one = [SecretKey("one key")] * 3
    # photos 0 and 1 as one person (their template is their mean), photo 2 another person
    shared = torch.stack([x[:2].mean(0), x[:2].mean(0), x[2]])
    rows = templated.mix(w, one, templates=torch.nn.functional.normalize(shared, dim=1)).trainable
    code = templated.wspace.split(rows)[0]
    m = templated.config.attribute_dims
    assert torch.allclose(code[0, :, m:], code[1, :, m:])  # one person, one key: one identity
    assert not torch.allclose(code[0, :, m:], code[2, :, m:], atol=1e-2)  # another person: another
    assert torch.allclose(code[..., :m], templated.wspace.split(w[:, 2:6])[0][..., :m], atol=1e-4)  # own attributes
    other_key = templated.mix(w, [SecretKey("other key")] * 3, templates=torch.nn.functional.normalize(shared, dim=1))
    assert not torch.allclose(templated.wspace.split(other_key.trainable)[0][0, :, m:], code[0, :, m:], atol=1e-2)


def test_a_key_holder_gets_back_only_the_attributes_of_a_template_code(templated) -> None:
    images = faces(2, 64)
    w = templated.invert(images)
    mixed = templated.mix(
        w,
        [SecretKey("k")] * 2,
        templates=templated.templates(torch.stack([image_tensor(im, "cpu") for im in images]), torch.arange(2)),
    ).assemble()
    code = templated.wspace.split(templated.unmix(mixed, ["k", "k"])[:, 2:6])[0]
    m = templated.config.attribute_dims
    assert code[..., m:].abs().max() < 1e-5
    assert torch.allclose(code[..., :m], templated.wspace.split(w[:, 2:6])[0][..., :m], atol=1e-4)


def test_a_smaller_person_share_brings_people_under_one_key_closer(model, templated) -> None:
    images = faces(2, 64)
    w = templated.invert(images)
    t = templated.templates(torch.stack([image_tensor(im, "cpu") for im in images]), torch.arange(2))
    half = Protector(model, replace(templated.config, person_share=0.5))

    def spread(p: Protector) -> float:
        code = p.wspace.split(p.mix(w, [SecretKey("k")] * 2, templates=t).trainable)[0]
        return float((code[0] - code[1]).norm())

    assert spread(half) < 0.75 * spread(templated)


def test_a_group_is_protected_as_one_person(templated) -> None:
    images = faces(2, 64)
    together = templated.protect(images, "k", groups=[0, 0], steps=0)
    apart = templated.protect(images, "k", groups=[0, 1], steps=0)
    assert not np.array_equal(together[0].image, apart[0].image)  # the group's mean template decides
