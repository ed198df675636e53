"""AGPNet model: encoder taps and CLS attention, decoder, predict, EMA, weights handling."""

import logging
import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

import agpnet.model.agpnet as agpnet_module
from agpnet.errors import AgpnetError
from agpnet.model import AGPNetConfig, build_model
from agpnet.model.encoder import cls_attention


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
        torch.testing.assert_close(cls_attention(block, x, encoder.num_prefix_tokens), expected)
        rows.append(expected)
        x = block(x)
    _, a_prior = encoder(images, with_attention=True)
    h, w = encoder.grid
    torch.testing.assert_close(a_prior, torch.stack(rows).mean(dim=(0, 2)).view(2, h, w))


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


def test_update_ema_follows_formula(tiny_model_fields):
    model = make_model(tiny_model_fields, ema_decay=0.9)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.decoder_ema.parameters()]
    model.update_ema()
    for old, ema, live in zip(before, model.decoder_ema.parameters(), model.decoder.parameters()):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * live)
        assert not ema.requires_grad


def test_live_decoder_attention_without_ema(tiny_model_fields):
    model = make_model(tiny_model_fields, ema_decoder=False)
    assert model.decoder_ema is None
    f_clean, _ = model.encode_clean(patterns(2))
    torch.testing.assert_close(
        model.learned_attention(f_clean), model.decoder(f_clean, return_attention=True)[1]
    )
    model.update_ema()  # a no-op


def test_hub_failure_falls_back_to_random_loudly(tiny_model_fields, monkeypatch, caplog):
    create = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no route to the hub")
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(agpnet_module, "hub_unavailable_reason", lambda name: None)  # the quick check passes
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="could not be downloaded"):
        model, info = build_model(AGPNetConfig(**tiny_model_fields), "hub")
    assert info["pretrained"] is False
    assert info["source"] == "random (hub download failed: no route to the hub)"
    assert "RANDOM" in info["warning"] and model.weights_info == info and model.weights == "random"
    assert "!!!!" in caplog.text and "no route to the hub" in caplog.text
    # The fallback encoder is the reproducible random one.
    assert model.encoder.fingerprint() == make_model(tiny_model_fields).encoder.fingerprint()


def test_unreachable_hub_falls_back_without_trying_the_download(tiny_model_fields, monkeypatch):
    create = timm.create_model

    def no_download(name, pretrained=False, **kwargs):
        assert not pretrained, "the download must not be attempted when the hub is known to be unreachable"
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_download)
    monkeypatch.setattr(agpnet_module, "hub_unavailable_reason", lambda name: "huggingface.co is not reachable")
    with pytest.warns(UserWarning, match="could not be downloaded"):
        _, info = build_model(AGPNetConfig(**tiny_model_fields), "hub")
    assert info["source"] == "random (hub download failed: huggingface.co is not reachable)"


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


def test_weights_file(tiny_model_fields, tmp_path):
    source = make_model(tiny_model_fields, init_seed=5)
    path = tmp_path / "encoder.pth"
    torch.save(source.encoder.vit.state_dict(), path)
    model, info = build_model(AGPNetConfig(**tiny_model_fields), path)
    assert info == {"source": f"file:{path.resolve()}", "pretrained": True, "warning": None}
    assert model.encoder.fingerprint() == source.encoder.fingerprint() and model.weights == str(
        path.resolve()
    )
    with pytest.raises(AgpnetError, match="missing.pth: weights file not found"):
        build_model(AGPNetConfig(**tiny_model_fields), tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(AgpnetError, match="bad.pth: not loadable"):
        build_model(AGPNetConfig(**tiny_model_fields), tmp_path / "bad.pth")


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
        model.update_ema()
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
    model.perturb_image = lambda imgs, a_final, progress, generator=None: (shifted, None)
    loss = model.training_loss(images, progress=1.0)
    with torch.no_grad():
        f_clean, _ = model.encode_clean(images)
        f_shifted, _ = model.encode_clean(shifted)
        per_token = [(model.decoder(f) - f_clean).pow(2).sum(-1).mean() for f in (f_clean, f_shifted)]
    torch.testing.assert_close(loss.detach(), (per_token[0] + per_token[1]) / 2)
    assert not torch.allclose(per_token[0], per_token[1])  # the two branches really differ
