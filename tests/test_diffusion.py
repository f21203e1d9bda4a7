"""Gaussian diffusion (robuq.diffusion): schedule, respacing, the training loss and the samplers."""

import math

import numpy as np
import pytest
import torch
from tiny_dit import tiny_dit

from robuq import diffusion as D
from robuq import rng

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BASE = D.GaussianDiffusion.spaced(None)


# ------------------------------------------------------------------------------------------ schedule
def test_linear_schedule():
    b = D.linear_betas()
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == 1e-4 and b[-1] == 0.02
    assert np.allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=0, atol=1e-15)
    assert BASE.posterior_variance[0] == 0.0  # hence the clipped log variance
    assert BASE.posterior_log_variance_clipped[0] == BASE.posterior_log_variance_clipped[1]
    assert (BASE.timestep_map == np.arange(1000)).all()


def test_respacing_250():
    s = D.space_timesteps(1000, "250")
    assert len(s) == 250
    assert s[:6] == [0, 4, 8, 12, 16, 20]
    assert s[-1] == 999
    gaps = set(np.diff(s).tolist())
    assert gaps == {4, 5}  # a fractional stride (999 / 249) rounded, not exactly uniform
    assert D.space_timesteps(1000, 250) == s


def test_respacing_other_specs():
    assert D.space_timesteps(1000, "10") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert D.space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert D.space_timesteps(1000, "1000") == list(range(1000))
    # sections: 500 steps each; 2 from the first, 3 from the second
    assert D.space_timesteps(1000, [2, 3]) == [0, 499, 500, 750, 999]
    assert D.space_timesteps(1000, "2,3") == [0, 499, 500, 750, 999]
    with pytest.raises(ValueError, match="exactly"):
        D.space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="divide"):
        D.space_timesteps(10, "11")


@pytest.mark.parametrize("spec", ["250", "10", "ddim25", [3, 7]])
def test_spaced_betas_reproduce_alphas_cumprod(spec):
    d = D.GaussianDiffusion.spaced(spec)
    keep = D.space_timesteps(1000, spec)
    assert list(d.timestep_map) == keep
    assert d.betas.dtype == np.float64
    np.testing.assert_allclose(d.alphas_cumprod, BASE.alphas_cumprod[keep], rtol=1e-12, atol=0)
    # betas_0 = 1 - abar[0] / 1: equal to the base beta up to rounding (a port must recompute it so)
    assert math.isclose(d.betas[0], BASE.betas[0], rel_tol=1e-12)


def test_create_diffusion_is_cached():
    assert D.create_diffusion(250) is D.create_diffusion("250")
    assert D.create_diffusion(None).num_timesteps == 1000


def test_extract_rounds_from_float64():
    t = torch.tensor([0, 500, 999])
    v = D._extract(BASE.sqrt_recipm1_alphas_cumprod, t, 4)
    assert v.dtype == torch.float32 and v.shape == (3, 1, 1, 1)
    expect = torch.tensor(BASE.sqrt_recipm1_alphas_cumprod[[0, 500, 999]], dtype=torch.float64).float()
    assert torch.equal(v.reshape(-1), expect)


# ------------------------------------------------------------------------------------------ forward process
def test_q_sample_statistics():
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.full((n, 1, 2, 2), 0.5)
    for t in (0, 300, 999):
        tt = torch.full((n,), t)
        xt = BASE.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
        abar = BASE.alphas_cumprod[t]
        assert abs(xt.mean().item() - math.sqrt(abar) * 0.5) < 0.01
        assert abs(xt.std().item() - math.sqrt(1 - abar)) < 0.01 * max(1.0, math.sqrt(1 - abar))


def test_posterior_matches_float64():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    xt = torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([1, 400, 999])
    mean, var, logv = BASE.q_posterior_mean_variance(x0, xt, t)
    tn = t.numpy()
    ab, abp, b = BASE.alphas_cumprod[tn], BASE.alphas_cumprod_prev[tn], BASE.betas[tn]
    c1 = (np.sqrt(abp) * b / (1 - ab))[:, None, None, None]
    c2 = (np.sqrt(1 - b) * (1 - abp) / (1 - ab))[:, None, None, None]
    ref = c1 * x0.double().numpy() + c2 * xt.double().numpy()
    np.testing.assert_allclose(mean.numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var[:, 0, 0, 0].numpy(), b * (1 - abp) / (1 - ab), rtol=1e-6)


# ------------------------------------------------------------------------------------------ the loss
def _batch(n=8, seed=0, t=None):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(n, 2, 4, 4, generator=g) * 2 - 1).clamp(-0.99, 0.99)
    noise = torch.randn(x0.shape, generator=g)
    if t is None:
        t = torch.randint(0, 1000, (n,), generator=g)
    return x0, noise, t


def test_vb_nonnegative():
    x0, noise, _ = _batch(64)
    t = torch.cat([torch.zeros(8, dtype=torch.long), torch.randint(1, 1000, (56,))])
    xt = BASE.q_sample(x0, t, noise)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        out = torch.cat([torch.randn(x0.shape, generator=g), torch.rand(x0.shape, generator=g) * 2 - 1], 1)
        vb = BASE.vb_terms_bpd(out, x0, xt, t)
        assert vb.shape == (64,) and (vb >= 0).all()


def test_vb_zero_for_true_posterior():
    # eps = the true noise makes pred_x0 = x0, so the model's mean is the posterior mean; v = -1 puts its
    # log variance at the clipped posterior one: the KL is 0 for every t > 0
    t = torch.tensor([1, 2, 10, 100, 500, 998, 999])
    x0, noise, _ = _batch(len(t), t=t)
    xt = BASE.q_sample(x0, t, noise)
    out = torch.cat([noise, -torch.ones_like(noise)], 1)
    vb = BASE.vb_terms_bpd(out, x0, xt, t)
    assert vb.abs().max() < 1e-4, vb
    # any other variance costs bits (at large t, beta_t and the posterior variance nearly coincide)
    worse = BASE.vb_terms_bpd(torch.cat([noise, torch.ones_like(noise)], 1), x0, xt, t)
    assert (worse[:4] > vb[:4] + 1e-5).all()
    # via the training loss: mse 0, vb 0, loss 0
    terms = BASE.training_losses(lambda x, tt: out, x0, t, noise)
    assert terms["mse"].abs().max() == 0 and terms["loss"].abs().max() < 1e-4


def test_decoder_nll_at_t0():
    t = torch.zeros(4, dtype=torch.long)
    x0, noise, _ = _batch(4, t=t)
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid
    xt = BASE.q_sample(x0, t, noise)
    out = torch.cat([noise, -torch.ones_like(noise)], 1)
    nll = BASE.vb_terms_bpd(out, x0, xt, t)
    # std sqrt(posterior_variance[1]) ~ 0.0072 vs half a bin 1/255: a fraction of a bit, and >= 0
    assert (nll >= 0).all() and (nll < 2).all()
    # reference: -log2 of the Gaussian mass of the bin, computed in float64 with the exact CDF
    std = math.exp(0.5 * BASE.posterior_log_variance_clipped[0])
    x = x0.double()
    lo = torch.where(x < -0.999, torch.full_like(x, -math.inf), x - 1 / 255)
    hi = torch.where(x > 0.999, torch.full_like(x, math.inf), x + 1 / 255)
    mean = x  # pred_x0 = x0 and coef1[0] = 1, coef2[0] = 0

    def cdf(v):
        return 0.5 * (1 + torch.erf((v - mean) / (std * math.sqrt(2))))

    ref = -(torch.log2(cdf(hi) - cdf(lo))).mean(dim=(1, 2, 3))
    assert torch.allclose(nll.double(), ref, atol=2e-3)


def test_vb_uses_frozen_mean():
    x0, noise, t = _batch(6)
    out = torch.cat([torch.randn_like(x0), torch.zeros_like(x0)], 1).requires_grad_(True)
    terms = BASE.training_losses(lambda x, tt: out, x0, t, noise)
    terms["vb"].sum().backward()
    c = x0.shape[1]
    assert out.grad[:, :c].abs().max() == 0  # eps gets no gradient from vb
    assert out.grad[:, c:].abs().max() > 0
    out.grad = None
    terms = BASE.training_losses(lambda x, tt: out, x0, t, noise)
    terms["loss"].sum().backward()
    assert out.grad[:, :c].abs().max() > 0


def test_learn_sigma_false_is_plain_mse():
    x0, noise, t = _batch(6)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    terms = BASE.training_losses(lambda x, tt: eps, x0, t, noise)
    assert "vb" not in terms
    assert torch.equal(terms["loss"], terms["mse"])
    assert torch.allclose(terms["mse"], ((noise - eps) ** 2).mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="channels"):
        BASE.training_losses(lambda x, tt: torch.zeros(6, 3, 4, 4), x0, t, noise)


def test_training_losses_call_model_with_original_steps():
    d = D.create_diffusion(10)
    seen = []

    def model(x, tt):
        seen.append(tt.clone())
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    x0, noise, _ = _batch(3)
    d.training_losses(model, x0, torch.tensor([0, 5, 9]), noise)
    assert seen[0].tolist() == [0, 555, 999]


# ------------------------------------------------------------------------------------------ samplers
def oracle(point: torch.Tensor, learn_sigma: bool = True, v: float = 0.0):
    """The exact eps for data concentrated on one point, using the ORIGINAL timestep's abar."""
    abar = torch.from_numpy(BASE.alphas_cumprod)

    def fn(x, t):
        a = abar[t].float().view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * point) / (1 - a).sqrt()
        return torch.cat([eps, torch.full_like(eps, v)], 1) if learn_sigma else eps

    return fn


@pytest.mark.parametrize(
    "sampler,steps,learn_sigma", [("ddpm", 50, True), ("ddpm", 25, False), ("ddim", "ddim20", True)]
)
def test_oracle_sampling_converges(sampler, steps, learn_sigma):
    point = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8
    x = D.sample(oracle(point, learn_sigma), (3, 2, 4, 4), seed=1, steps=steps, sampler=sampler)
    assert x.dtype == torch.float32 and x.shape == (3, 2, 4, 4)
    assert (x - point).abs().max() < 1e-3


def test_sampling_deterministic_and_keys():
    point = torch.zeros(1, 1, 4, 4)
    keys = []

    def noise_fn(seed, key, shape):
        keys.append(key)
        return rng.gaussian(seed, key, shape)

    fn = oracle(point, v=0.3)
    a = D.sample(lambda x, t: fn(x, t) + 0.1 * x.mean(), (2, 1, 4, 4), seed=7, steps=10, noise_fn=noise_fn)
    assert keys == list(range(10))  # x_T, then steps 0..8; no noise at t = 0
    b = D.sample(lambda x, t: fn(x, t) + 0.1 * x.mean(), (2, 1, 4, 4), seed=7, steps=10)
    c = D.sample(lambda x, t: fn(x, t) + 0.1 * x.mean(), (2, 1, 4, 4), seed=8, steps=10)
    assert torch.equal(a, b) and not torch.equal(a, c)
    keys.clear()
    D.sample(fn, (2, 1, 4, 4), seed=7, steps=10, sampler="ddim", noise_fn=noise_fn)
    assert keys == [0]  # DDIM with eta 0 draws only x_T
    keys.clear()
    D.sample(fn, (2, 1, 4, 4), seed=7, steps=10, sampler="ddim", eta=1.0, noise_fn=noise_fn)
    assert keys == list(range(10))


def test_first_model_input_is_key0_noise():
    seen = []

    def fn(x, t):
        seen.append((x.clone(), t.clone()))
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    D.sample(fn, (2, 1, 4, 4), seed=3, steps="250")
    assert torch.equal(seen[0][0], torch.from_numpy(rng.gaussian(3, 0, (2, 1, 4, 4))))
    assert [s[1][0].item() for s in seen[:3]] == [999, 995, 991] and seen[-1][1][0].item() == 0


def test_ddpm_step_formula():
    # one step written out in the documented order, float32
    d = D.create_diffusion(10)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 4, 4, generator=g)
    out = torch.randn(2, 2, 4, 4, generator=g)
    out[:, 1:] = out[:, 1:].clamp(-1, 1)
    z = torch.randn(2, 1, 4, 4, generator=g)
    t = 6

    def f(a):
        return torch.tensor(float(a[t]), dtype=torch.float32)

    eps, v = out[:, :1], out[:, 1:]
    frac = (v + 1) / 2
    log_var = frac * f(np.log(d.betas)) + (1 - frac) * f(d.posterior_log_variance_clipped)
    x0 = f(d.sqrt_recip_alphas_cumprod) * x - f(d.sqrt_recipm1_alphas_cumprod) * eps
    mean = f(d.posterior_mean_coef1) * x0 + f(d.posterior_mean_coef2) * x
    ref = mean + torch.exp(0.5 * log_var) * z
    assert torch.equal(d.ddpm_step(out, x, t, z, False), ref)


def _tiny_model(seed=0):
    return tiny_dit(seed, depth=1, hidden_size=64, num_heads=2, input_size=8, in_channels=1, num_classes=3)


def test_sample_classes_cfg_sees_same_noise():
    model = _tiny_model()
    # identical class and null embeddings: cond == uncond, so any guidance scale gives the unguided sample
    with torch.no_grad():
        model.y_embedder.embedding_table.weight.copy_(
            model.y_embedder.embedding_table.weight[:1].expand(4, -1)
        )
    plain = D.sample_classes(model, [0, 2], steps=5, cfg_scale=1.0, seed=4)
    for mode in ("dit", "all"):
        guided = D.sample_classes(model, [0, 2], steps=5, cfg_scale=4.0, seed=4, cfg_mode=mode)
        assert guided.shape == (2, 1, 8, 8)
        # equal up to float rounding of batch-size-dependent matmul blocking
        torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)
    assert not model.training


def test_sample_classes_guidance_changes_samples():
    model = _tiny_model(1)
    a = D.sample_classes(model, [1], steps=5, cfg_scale=1.0, seed=0, sampler="ddim")
    b = D.sample_classes(model, [1], steps=5, cfg_scale=3.0, seed=0, sampler="ddim")
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="class ids"):
        D.sample_classes(model, [3], steps=2)


def test_to_uint8():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, 0.5, 1 / 255]).reshape(1, 1, 1, 7)
    u = D.to_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (1, 1, 7, 1)
    assert u.reshape(-1).tolist() == [0, 0, 128, 255, 255, 191, 128]
    assert D.to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)


def test_reference_sampler_refuses_eta_beyond_the_real_variance_and_non_finite_samples():
    """As the engine (engine/diffusion.cpp check_ddim_eta, NonFiniteError): DDIM's eta may exceed 1 only
    by the schedule's margin (ddim10: ~1.00043), and a sample that stops being finite is an error naming
    the step, never an all-NaN image."""
    from robuq import diffusion as D

    d = D.create_diffusion("ddim10")
    x = torch.zeros(1, 1, 4, 4)

    def model(x, t):
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    d.sample_loop(model, x, 0, "ddim", eta=1.0004)
    for eta, msg in ((1.0005, "step 9 of 10"), (1.5, "step 1 of 10"), (-0.1, ">= 0"), (float("nan"), ">= 0")):
        with pytest.raises(ValueError, match=msg):
            d.sample_loop(model, x, 0, "ddim", eta=eta)

    def overflow(x, t):
        return torch.full((x.shape[0], 2, *x.shape[2:]), 3e38)

    for sampler in ("ddpm", "ddim"):
        with pytest.raises(FloatingPointError, match="not finite after step 1 of 10"):
            d.sample_loop(overflow, x, 0, sampler)
