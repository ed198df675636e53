"""The perturbation branch: attention masks, schedules, feature and image noise, ablation switches."""

import math
import warnings

import pytest
import torch

from agpnet.model import AGPNetConfig, build_model
from agpnet.model.perturbation import (
    feature_noise_std,
    final_attention,
    minmax,
    perturb_features,
    perturb_image,
    schedule,
    top_fraction_mask,
)


def make_model(fields: dict, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_model(AGPNetConfig(**{**fields, **overrides}), "random")
    return model


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_minmax_range_and_constant_maps():
    a = torch.stack([torch.rand(4, 4) * 5 - 2, torch.full((4, 4), 3.0)])
    n = minmax(a)
    assert n[0].min() == 0 and n[0].max() == 1
    assert torch.equal(n[1], torch.zeros(4, 4))  # a constant map: zeros, not NaN


def test_final_attention_is_sum_of_normalised_maps(tiny_model_fields):
    g = torch.Generator().manual_seed(0)
    prior, learn = torch.rand(3, 8, 8, generator=g) * 0.1, torch.rand(3, 8, 8, generator=g) * 7
    a = final_attention(prior, learn)
    torch.testing.assert_close(a, minmax(prior) + minmax(learn))
    assert a.min() >= 0 and a.max() <= 2
    torch.testing.assert_close(final_attention(prior, None), minmax(prior))

    model = make_model(tiny_model_fields)
    f_clean, a_prior = model.encode_clean(images())
    a_learn = model.learned_attention(f_clean)
    torch.testing.assert_close(model.perturbation.final_attention(a_prior, a_learn), minmax(a_prior) + minmax(a_learn))
    masks = model.attention_masks(images())
    assert set(masks) == {"a_prior", "a_learn", "a_final"}
    assert all(m.shape == (2, 8, 8) for m in masks.values())
    torch.testing.assert_close(masks["a_final"], masks["a_prior"] + masks["a_learn"])
    only_prior = make_model(tiny_model_fields, attention="prior")
    torch.testing.assert_close(only_prior.perturbation.final_attention(a_prior, a_learn), minmax(a_prior))
    only_learn = make_model(tiny_model_fields, attention="learn")
    torch.testing.assert_close(only_learn.perturbation.final_attention(a_prior, a_learn), minmax(a_learn))


def test_schedules():
    assert [schedule("linear", t) for t in (0, 0.25, 1)] == [0, 0.25, 1]
    assert [schedule("constant", t) for t in (0, 0.5)] == [1, 1]
    assert schedule("cosine", 0) == 0 and schedule("cosine", 1) == 1
    assert math.isclose(schedule("cosine", 0.5), 0.5)
    assert [schedule("step", t, 4) for t in (0, 0.2, 0.3, 0.6, 0.8, 1)] == [0, 0, 1 / 3, 2 / 3, 1, 1]


def test_alpha_and_mask_ratio_follow_the_config(tiny_model_fields):
    model = make_model(tiny_model_fields)
    assert model.perturbation.alpha(0) == 0 and model.perturbation.alpha(0.5) == 10 and model.perturbation.alpha(1) == 20
    assert model.perturbation.mask_ratio(0) == 0 and model.perturbation.mask_ratio(0.5) == 0.25
    constant = make_model(tiny_model_fields, alpha_schedule="constant", alpha_max=7)
    assert constant.perturbation.alpha(0) == constant.perturbation.alpha(0.9) == 7


@pytest.mark.parametrize("alpha, beta", [(0.0, 1.0), (20.0, 1.0), (5.0, 0.5)])
def test_feature_noise_std_follows_alpha_and_beta(alpha, beta):
    g = torch.Generator().manual_seed(0)
    c = 4096  # many channels: the empirical std per token is accurate to about 2 %
    features = torch.randn(2, 6, c, generator=g) * torch.linspace(0.5, 3, 6)[None, :, None]
    weight = torch.rand(2, 2, 3, generator=g)
    std = feature_noise_std(features, weight, alpha, beta)
    expected = (alpha * weight.flatten(1) + beta) * features.norm(dim=-1) / c
    torch.testing.assert_close(std, expected)
    noise = perturb_features(features, std, generator=g) - features
    torch.testing.assert_close(noise.std(dim=-1), expected, rtol=0.06, atol=0)
    unit = feature_noise_std(features, weight, alpha, beta, scale="unit")
    torch.testing.assert_close(unit, alpha * weight.flatten(1) + beta)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5])
def test_image_mask_covers_the_top_fraction(ratio):
    g = torch.Generator().manual_seed(1)
    attention = torch.rand(3, 8, 8, generator=g)
    batch = torch.randn(3, 3, 64, 64, generator=g)
    perturbed, mask = perturb_image(batch, attention, ratio, std=0.2, generator=g)
    assert mask.shape == (3, 64, 64) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(dim=1) == round(ratio * 64 * 64)).all()
    scores = torch.nn.functional.interpolate(attention[:, None], size=(64, 64), mode="bilinear")[:, 0]
    for s, m in zip(scores, mask):
        if m.any():
            assert s[m].min() >= s[~m].max()  # the mask holds the highest-attention pixels
    diff = perturbed - batch
    assert torch.equal(diff[~mask[:, None].expand_as(diff)], torch.zeros(int((~mask).sum()) * 3))
    if ratio >= 0.25:
        inside = diff[mask[:, None].expand_as(diff)]
        assert abs(float(inside.std()) - 0.2) < 0.01


def test_top_fraction_mask_with_ties():
    mask = top_fraction_mask(torch.zeros(2, 10, 10), 0.3)  # a constant map: still exactly 30 pixels
    assert (mask.flatten(1).sum(dim=1) == 30).all()


def test_uniform_noise_keeps_the_budget_without_the_attention(tiny_model_fields):
    attention = make_model(tiny_model_fields)
    uniform = make_model(tiny_model_fields, noise="uniform")
    a_final = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    w_att, w_uni = attention.perturbation.noise_weight(a_final), uniform.perturbation.noise_weight(a_final)
    torch.testing.assert_close(w_uni.sum(dim=(1, 2)), w_att.sum(dim=(1, 2)))
    assert torch.equal(w_uni, w_uni[:, :1, :1].expand_as(w_uni))  # constant per sample
    x = images()
    g = torch.Generator().manual_seed(2)
    _, mask_uni = uniform.perturbation.perturb_image(x, a_final, 1.0, generator=g)
    _, mask_att = attention.perturbation.perturb_image(x, a_final, 1.0, generator=g)
    assert mask_uni.sum() == mask_att.sum() and not torch.equal(mask_uni, mask_att)


def test_perturbation_preview(tiny_model_fields):
    model = make_model(tiny_model_fields)
    x = images(3)
    out = model.perturbation_preview(x, progress=0.5, generator=torch.Generator().manual_seed(0))
    assert out["image_perturbed"].shape == (3, 3, 64, 64) and out["feature_noise_std"].shape == (3, 8, 8)
    assert (out["image_mask"].flatten(1).float().mean(dim=1) == 0.25).all()
    f_clean, a_prior = model.encode_clean(x)
    weight = minmax(model.perturbation.final_attention(a_prior, model.learned_attention(f_clean))).flatten(1)
    expected = (10 * weight + 1) * f_clean.norm(dim=-1) / f_clean.shape[-1]
    torch.testing.assert_close(out["feature_noise_std"].flatten(1), expected)
    start = model.perturbation_preview(x, progress=0.0)
    assert not start["image_mask"].any() and torch.equal(start["image_perturbed"], x)
    none = make_model(tiny_model_fields, noise="none").perturbation_preview(x, progress=1.0)
    assert not none["feature_noise_std"].any() and not none["image_mask"].any()


ABLATIONS = [
    {"noise": "none"},
    {"noise": "uniform"},
    {"noise": "attention"},
    {"noise_level": "image"},
    {"noise_level": "feature"},
    {"attention": "prior"},
    {"attention": "learn"},
    {"ema_decoder": False},
    {"alpha_schedule": "constant"},
    {"alpha_schedule": "cosine"},
    {"alpha_schedule": "step"},
    {"blocks": (2,)},
    {"image_branch_attention": "perturbed"},
    {"feature_noise_scale": "unit"},
    {"backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8, "reg_tokens": 4}},
]


@pytest.mark.parametrize(
    "overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())[:40]
)
def test_each_ablation_switch_runs_a_training_step(tiny_model_fields, overrides):
    model = make_model(tiny_model_fields, **overrides)
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=1e-3)
    torch.manual_seed(0)
    loss = model.training_loss(images(), progress=0.7)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert not any(p.grad is not None for p in model.encoder.parameters())
    optimizer.step()
    model.update_ema(0)


def test_training_loss_with_cached_clean_features_is_the_same(tiny_model_fields):
    model = make_model(tiny_model_fields)
    x = images()
    torch.manual_seed(3)
    direct = model.training_loss(x, progress=0.6)
    clean = model.encode_clean(x)
    torch.manual_seed(3)
    cached = model.training_loss(x, progress=0.6, clean=clean)
    torch.testing.assert_close(direct, cached)
