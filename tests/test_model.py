"""AGPNet model: encoder taps and CLS attention, decoder, predict, EMA, weights handling."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from agpnet.errors import AgpnetError
from agpnet.model import AGPNetConfig, build_model
from agpnet.model.encoder import prior_attention


def make_model(fields: dict, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_model(AGPNetConfig(**{**fields, **overrides}), "random")
    return model


def patterns(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random stripe images (n, 3, size, size), values about in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freq = 2 + 2 * torch.rand(n, 3, 2, generator=g)
    phase = 2 * math.pi * torch.rand(n, 3, 1, 1, generator=g)
    return torch.sin(2 * math.pi * (freq[..., 0, None, None] * x + freq[..., 1, None, None] * y) + phase)


def tokens_before_blocks(vit, images):
    return vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))


def reference_attention(block, x):
    """Full attention matrix (B, heads, T, T) of a timm block, computed explicitly from its weights."""
    attn = block.attn
    b, t, c = x.shape
    qkv = attn.qkv(block.norm1(x)).view(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    weights = (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(dim=-1)
    return weights, v


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True}, {"reg_tokens": 2}])
def test_cls_attention_equals_explicit_reference(tiny_model_fields, extra):
    fields = dict(tiny_model_fields, backbone_kwargs={**tiny_model_fields["backbone_kwargs"], **extra})
    model = make_model(fields)
    vit, encoder = model.encoder.vit, model.encoder
    assert encoder.num_prefix_tokens == 1 + extra.get("reg_tokens", 0)
    images = patterns(2)
    x = tokens_before_blocks(vit, images)
    rows = []
    for block in vit.blocks:
        weights, v = reference_attention(block, x)
        # The reference reproduces the block's own (fused) attention output ...
        explicit = (weights @ v).transpose(1, 2).reshape(x.shape)
        attn_out = block.attn.proj(explicit)
        torch.testing.assert_close(attn_out, block.attn(block.norm1(x)), rtol=1e-4, atol=1e-5)
        # ... and our CLS row equals its first row, patch columns.
        expected = weights[:, :, 0, encoder.num_prefix_tokens :]
        torch.testing.assert_close(prior_attention(block, x, encoder.num_prefix_tokens), expected)
        rows.append(expected)
        x = block(x)
    _, a_prior = encoder(images, with_attention=True)
    h, w = encoder.grid
    torch.testing.assert_close(a_prior, torch.stack(rows).mean(dim=(0, 2)).view(2, h, w))


def test_prior_attention_without_cls_token_is_the_mean_attention_each_patch_receives(tiny_model_fields):
    """A backbone without prefix tokens (SigLIP-like): A_prior is the column mean of the full attention,
    not patch 0's row."""
    kwargs = {**tiny_model_fields["backbone_kwargs"], "class_token": False, "global_pool": "avg"}
    model = make_model(tiny_model_fields, backbone_kwargs=kwargs)
    vit, encoder = model.encoder.vit, model.encoder
    assert encoder.num_prefix_tokens == 0
    images = patterns(2)
    x = tokens_before_blocks(vit, images)
    received = []
    for block in vit.blocks:
        weights, _ = reference_attention(block, x)
        received.append(weights.mean(dim=2))  # mean over queries: (B, heads, T)
        torch.testing.assert_close(prior_attention(block, x, 0), received[-1])
        assert not torch.allclose(received[-1], weights[:, :, 0])
        x = block(x)
    _, a_prior = encoder(images, with_attention=True)
    torch.testing.assert_close(a_prior, torch.stack(received).mean(dim=(0, 2)).view(2, *encoder.grid))
    torch.testing.assert_close(a_prior.sum(dim=(1, 2)), torch.ones(2))


def test_decoder_attention_is_float32_under_autocast(tiny_model_fields):
    """A_learn's logits and softmax stay fp32 under bf16 autocast (they match the fp32 computation)."""
    model = make_model(tiny_model_fields, decoder_depth=2)
    f_clean, _ = model.encode_clean(patterns(3))
    _, reference = model.decoder.blocks[0](f_clean + model.decoder.pos_embed, return_attention=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, mixed = model.decoder.blocks[0](f_clean + model.decoder.pos_embed, return_attention=True)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=1e-2, atol=1e-5)


def test_encoder_taps_blocks_is_frozen_and_stays_in_eval(tiny_model_fields):
    model = make_model(tiny_model_fields, blocks=(1,))
    images = patterns(2)
    features, attention = model.encoder(images)
    assert attention is None and len(features) == 1 and features[0].shape == (2, 64, 32)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training and model.decoder.training
    vit = model.encoder.vit
    x = vit.blocks[0](tokens_before_blocks(vit, images))
    torch.testing.assert_close(features[0], x[:, 1:])
    f_clean, _ = model.encode_clean(images, with_attention=False)
    torch.testing.assert_close(f_clean, F.layer_norm(x[:, 1:], (32,)))


@pytest.mark.parametrize("extra", [{}, {"reg_tokens": 2}, {"class_token": False, "global_pool": "avg"}])
def test_encoder_features_are_timms_intermediates(tiny_model_fields, extra):
    """The encoder's tapped patch tokens equal timm's own forward_intermediates (prefix tokens dropped),
    with and without the A_prior side path."""
    fields = dict(tiny_model_fields, backbone_kwargs={**tiny_model_fields["backbone_kwargs"], **extra}, blocks=(1, 2))
    encoder = make_model(fields).encoder
    images = patterns(2)
    expected = encoder.vit.forward_intermediates(images, indices=[0, 1], output_fmt="NLC", intermediates_only=True)
    for with_attention in (False, True):
        features, _ = encoder(images, with_attention=with_attention)
        for ours, theirs in zip(features, expected, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_decoder_attention_path_matches_fused_path(tiny_model_fields):
    model = make_model(tiny_model_fields, decoder_depth=2)
    f_clean, _ = model.encode_clean(patterns(3))
    fused = model.decoder(f_clean)
    explicit, a_learn = model.decoder(f_clean, return_attention=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-5)
    assert a_learn.shape == (3, 8, 8)
    # Each query's attention sums to 1, so the mean attention received sums to 1 over the keys.
    torch.testing.assert_close(a_learn.sum(dim=(1, 2)), torch.ones(3))


def test_predict_shapes_dtype_and_determinism(tiny_model_fields):
    model = make_model(tiny_model_fields).eval()
    images = patterns(2).repeat(2, 1, 1, 1)  # images 0, 1 again as 2, 3
    out = model.predict(images)
    assert out["anomaly_map"].shape == (4, 64, 64) and out["score"].shape == (4,)
    assert out["anomaly_map"].dtype == torch.float32 and out["score"].dtype == torch.float32
    torch.testing.assert_close(out["anomaly_map"][:2], out["anomaly_map"][2:])
    torch.testing.assert_close(model.predict(images)["anomaly_map"], out["anomaly_map"], rtol=0, atol=0)
    torch.testing.assert_close(out["score"], out["anomaly_map"].flatten(1).amax(dim=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.predict(images)
    assert mixed["anomaly_map"].dtype == torch.float32 and mixed["score"].dtype == torch.float32


def test_pooled_max_score_and_smoothing(tiny_model_fields):
    images = patterns(2)
    raw = make_model(tiny_model_fields, smoothing_sigma=0.0).eval().predict(images)["anomaly_map"]
    pooled = make_model(tiny_model_fields, smoothing_sigma=0.0, score="pooled-max", score_pool=16).eval()
    expected = F.avg_pool2d(raw[:, None], 16, stride=1).flatten(1).amax(dim=1)
    torch.testing.assert_close(pooled.predict(images)["score"], expected)
    smooth = make_model(tiny_model_fields, smoothing_sigma=2.0).eval().predict(images)["anomaly_map"]
    assert smooth.std() < raw.std()  # smoothing lowers the spread of the map
    torch.testing.assert_close(smooth.mean(), raw.mean(), rtol=0.05, atol=0)


@pytest.mark.parametrize("warmup, step, eta", [(False, 0, 0.9), (False, 500, 0.9), (True, 0, 0.1),
                                                (True, 2, 0.25), (True, 500, 0.9)])
def test_update_ema_follows_formula(tiny_model_fields, warmup, step, eta):
    """eta = min(ema_decay, (1 + t) / (10 + t)) with the warm-up: 0.1 at the first step, 0.25 at the third."""
    model = make_model(tiny_model_fields, ema_decay=0.9, ema_warmup=warmup)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.decoder_ema.parameters()]
    model.update_ema(step)
    for old, ema, live in zip(before, model.decoder_ema.parameters(), model.decoder.parameters()):
        torch.testing.assert_close(ema, eta * old + (1 - eta) * live)
        assert not ema.requires_grad


def test_ema_warmup_makes_a_short_run_forget_the_initial_weights(tiny_model_fields):
    """After 500 steps at eta = 0.999 without warm-up, 61 % of the EMA is still the initial decoder;
    with the warm-up, under 1 %."""
    shares = {}
    for warmup in (False, True):
        model = make_model(tiny_model_fields, ema_warmup=warmup)
        share = 1.0
        for step in range(500):
            share *= model.ema_decay(step)
        shares[warmup] = share
    assert 0.60 < shares[False] < 0.61 and shares[True] < 0.01


def test_live_decoder_attention_without_ema(tiny_model_fields):
    model = make_model(tiny_model_fields, ema_decoder=False)
    assert model.decoder_ema is None
    f_clean, _ = model.encode_clean(patterns(2))
    torch.testing.assert_close(
        model.learned_attention(f_clean), model.decoder(f_clean, return_attention=True)[1]
    )
    model.update_ema(0)  # a no-op


def test_random_weights_are_reproducible_and_flagged(tiny_model_fields):
    with pytest.warns(UserWarning, match="RANDOM"):
        a, info = build_model(AGPNetConfig(**tiny_model_fields), "random")
    assert info == {"source": "random (requested)", "pretrained": False, "warning": info["warning"]}
    assert info["warning"]
    torch.manual_seed(123)  # the global RNG does not matter
    b = make_model(tiny_model_fields)
    assert a.encoder.fingerprint() == b.encoder.fingerprint()
    for p, q in zip(a.decoder.parameters(), b.decoder.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    c = make_model(tiny_model_fields, init_seed=1)
    assert a.encoder.fingerprint() != c.encoder.fingerprint()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"noise": "gaussian"}, "noise='gaussian'"),
        ({"blocks": (0, 2)}, "blocks"),
        ({"blocks": (1, 5)}, "the backbone has 2 blocks"),
        ({"decoder_heads": 3}, "decoder_heads=3"),
        ({"image_size": 60}, "image_size=60"),
        ({"backbone": "not_a_model"}, "not_a_model"),
        (
            {"backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8, "bogus": 1}},
            "bogus",
        ),
        (  # before: bypassed the patch-size check and crashed at the first forward pass
            {"backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8, "img_size": 60}},
            "img_size is set by the image_size field",
        ),
    ],
)
def test_bad_config_raises_one_line_error(tiny_model_fields, overrides, match):
    with pytest.raises(AgpnetError, match=match) as err:
        make_model(tiny_model_fields, **overrides)
    assert "\n" not in str(err.value)


def test_predict_map_is_higher_where_the_input_is_corrupted(tiny_model_fields):
    """After a short training on stripes, a noise patch scores higher than the rest of the image."""
    torch.manual_seed(0)
    model = make_model(tiny_model_fields, alpha_schedule="constant", mask_ratio_schedule="constant")
    train = patterns(16, seed=1)
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=3e-3)
    for step in range(60):
        loss = model.training_loss(train[(step % 4) * 4 : (step % 4) * 4 + 4], progress=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_ema(step)
    model.eval()
    clean = patterns(4, seed=2)
    corrupted = clean.clone()
    corrupted[:, :, 16:40, 16:40] = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    out_clean, out_bad = model.predict(clean), model.predict(corrupted)
    assert (out_bad["score"] > out_clean["score"]).all()
    inside = out_bad["anomaly_map"][:, 16:40, 16:40].mean(dim=(1, 2))
    outside = out_bad["anomaly_map"][:, 48:, 48:].mean(dim=(1, 2))
    assert (inside > outside).all()


def test_loss_targets_the_clean_features_per_token(tiny_model_fields):
    """(L_feat + L_img,feat) / 2, both against the CLEAN image's F_clean, squared error summed over
    channels and averaged over tokens. Feature noise off (alpha = beta = 0); the image perturbation
    replaced by a known one."""
    model = make_model(tiny_model_fields, alpha_max=0.0, beta=0.0)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    shifted = images + 0.5
    model.perturbation.perturb_image = lambda imgs, a_final, t, generator=None: (shifted, None)
    loss = model.training_loss(images, progress=1.0)
    with torch.no_grad():
        f_clean, _ = model.encode_clean(images)
        f_shifted, _ = model.encode_clean(shifted)
        per_token = [(model.decoder(f) - f_clean).pow(2).sum(-1).mean() for f in (f_clean, f_shifted)]
    torch.testing.assert_close(loss.detach(), (per_token[0] + per_token[1]) / 2)
    assert not torch.allclose(per_token[0], per_token[1])  # the two branches really differ
