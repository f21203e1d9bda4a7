"""Gaussian diffusion as in ADM / improved DDPM / DiT: schedule, training loss, respacing and samplers.

The facts follow ``docs/dit.md``; the code is our own. The C++ engine ports the samplers and is
compared against this file at PSNR >= 40 dB, so every formula below states its evaluation order. The
complete porting notes are in docs/training.md ("Sampler arithmetic").

Schedule (float64 numpy arrays, index = timestep of *this* process):
    betas                  linear: np.linspace(1e-4, 0.02, 1000, dtype=float64)
    alphas                 1 - betas
    alphas_cumprod  (abar) np.cumprod(alphas)
    alphas_cumprod_prev    [1.0, abar[0], ..., abar[K-2]]
    sqrt_recip_alphas_cumprod    sqrt(1 / abar)
    sqrt_recipm1_alphas_cumprod  sqrt(1 / abar - 1)
    posterior_variance           betas * (1 - abar_prev) / (1 - abar)
    posterior_log_variance_clipped  log([posterior_variance[1], posterior_variance[1], ..., [K-1]])
    posterior_mean_coef1         betas * sqrt(abar_prev) / (1 - abar)
    posterior_mean_coef2         (1 - abar_prev) * sqrt(alphas) / (1 - abar)
    log_betas                    log(betas)

Every per-step scalar is taken from its float64 array and *then* rounded to float32 (``_extract``, the
ADM ``_extract_into_tensor``); all arithmetic on images is float32, in the order written.

Respacing (``space_timesteps``) keeps a subset of the 1000 steps; the spaced process recomputes
``betas_i = 1 - abar[t_i] / abar[t_(i-1)]`` (``abar[t_(-1)] = 1``) in float64 and rebuilds every array
above from those betas; the model is always called with the ORIGINAL timestep values
(``timestep_map[i] = t_i``).

Noise (``robuq.rng.gaussian``): key 0 gives x_T; key ``1 + i`` the noise added at sampling step ``i``
(``i = 0`` at the largest t). No noise is added at the last step (t = 0), and its key is never drawn.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import rng

__all__ = [
    "NUM_TIMESTEPS",
    "GaussianDiffusion",
    "approx_standard_normal_cdf",
    "create_diffusion",
    "discretized_gaussian_log_likelihood",
    "linear_betas",
    "normal_kl",
    "sample",
    "sample_classes",
    "space_timesteps",
    "to_uint8",
]

NUM_TIMESTEPS = 1000
SAMPLERS = ("ddpm", "ddim")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[int, int, tuple], "np.ndarray | torch.Tensor"]


# ---------------------------------------------------------------------------------------------------------
# Schedule and respacing
# ---------------------------------------------------------------------------------------------------------


def linear_betas(num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """The linear schedule of DDPM / DiT, float64 [T]: scale = 1000 / T,
    ``np.linspace(scale * 1e-4, scale * 0.02, T)`` (for T = 1000: 1e-4 .. 0.02)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """The timesteps kept by respacing, ascending (ADM ``space_timesteps`` semantics).

    ``section_counts``:
      * ``"ddimN"``: the even stride s = the smallest integer with ``len(range(0, T, s)) == N``;
        keeps ``range(0, T, s)``. ValueError when no stride gives exactly N.
      * ``"N"`` or ``"N1,N2,..."`` or a list of ints (an int is one section): T is cut into
        ``len(sections)`` consecutive sections, the first ``T % len`` of them one step longer; in a section of
        ``size`` steps starting at ``start`` with count c, ``stride = (size - 1) / (c - 1)`` (float64; 1 when
        c <= 1), and the kept steps are ``start + round(cur)`` with ``cur = 0.0`` and ``cur += stride`` after
        each step (a running float64 sum, NOT ``j * stride``; ``round`` is Python's: half to even).
        "250" of 1000: 0, 4, 8, ..., 995, 999. ValueError when a section is shorter than its count.
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            desired = int(spec[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}"
            )
        try:
            section_counts = [int(s) for s in spec.split(",")]
        except ValueError:
            raise ValueError(f"bad respacing {spec!r}: use 'N', 'N1,N2,...' or 'ddimN'") from None
    counts = [int(c) for c in section_counts]
    if not counts or any(c < 0 for c in counts):
        raise ValueError(f"bad section counts {counts}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    steps: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def _extract(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] taken in float64, then cast to float32, shaped [N, 1, ..., 1] (ndim dims) on t's device."""
    out = torch.from_numpy(arr).to(t.device)[t].float()
    return out.reshape(out.shape + (1,) * (ndim - 1))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim except the batch: [N, ...] -> [N]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats:
    0.5 * (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 * exp(-logvar2))."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF: 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood (nats, per element) of data x in [-1, 1] discretised to 256 bins of width 2/255
    under N(means, exp(log_scales)^2); the edge bins extend to -inf / +inf. CDF values floored at 1e-12."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


# ---------------------------------------------------------------------------------------------------------
# The process
# ---------------------------------------------------------------------------------------------------------


class GaussianDiffusion:
    """A (possibly respaced) Gaussian diffusion with epsilon prediction.

    ``t`` arguments of the methods index THIS process (0 .. num_timesteps-1); the model is called with
    ``timestep_map[t]``, the original step values (identity for the unspaced process).

    Model output convention: [N, C, ...] (eps; fixed "large" variance ``[posterior_variance[1],
    betas[1:]]`` as DiT with learn_sigma False) or [N, 2C, ...] (eps, then v in [-1, 1] for the learned
    range: ``frac = (v + 1) / 2``,
    ``log_var = frac * log(beta_t) + (1 - frac) * posterior_log_variance_clipped_t``).
    """

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int] | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        tm = np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map)
        if tm.shape != betas.shape:
            raise ValueError("timestep_map must have one entry per step")
        self.timestep_map = tm.astype(np.int64)

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # the posterior variance is 0 at t = 0: the log is clipped by repeating the value at t = 1
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:]) if len(pv) > 1 else pv)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = np.log(betas)
        # fixed "large" variance (learn_sigma False, as DiT): [posterior_variance[1], betas[1:]]
        large = np.append(pv[1], betas[1:]) if len(pv) > 1 else betas
        self.fixed_large_log_variance = np.log(large)

    # ------------------------------------------------------------------ construction
    @classmethod
    def spaced(
        cls, section_counts: str | int | Sequence[int] | None = None, num_timesteps: int = NUM_TIMESTEPS
    ) -> GaussianDiffusion:
        """The linear-schedule process respaced to ``section_counts`` (None or "": all steps)."""
        base = linear_betas(num_timesteps)
        if section_counts is None or section_counts == "":
            return cls(base)
        keep = space_timesteps(num_timesteps, section_counts)
        abar = np.cumprod(1.0 - base)
        new_betas, last = [], 1.0
        for i in keep:
            new_betas.append(1.0 - abar[i] / last)
            last = abar[i]
        return cls(np.array(new_betas, dtype=np.float64), keep)

    # ------------------------------------------------------------------ forward process
    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t = f32(sqrt(abar_t)) * x_0 + f32(sqrt(1 - abar_t)) * noise."""
        if noise is None:
            noise = torch.randn_like(x_start)
        nd = x_start.ndim
        return (
            _extract(self.sqrt_alphas_cumprod, t, nd) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, nd) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0): mean = coef1_t * x_0 + coef2_t * x_t, variance, clipped log variance."""
        nd = x_t.ndim
        mean = (
            _extract(self.posterior_mean_coef1, t, nd) * x_start
            + _extract(self.posterior_mean_coef2, t, nd) * x_t
        )
        var = _extract(self.posterior_variance, t, nd).expand_as(x_t)
        log_var = _extract(self.posterior_log_variance_clipped, t, nd).expand_as(x_t)
        return mean, var, log_var

    # ------------------------------------------------------------------ reverse process
    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The original timestep values (int64) the model is called with for process steps t."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    def p_mean_variance(
        self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool
    ):
        """The model's Gaussian p(x_{t-1} | x_t) from its raw output. Returns a dict with ``mean``,
        ``log_variance``, ``pred_xstart`` and ``eps``. Order (float32):

        1. eps, v = output[:, :C], output[:, C:]   (learned range; only eps for [N, C] outputs)
        2. min_log = f32(posterior_log_variance_clipped[t]); max_log = f32(log(betas)[t])
           frac = (v + 1) / 2; log_var = frac * max_log + (1 - frac) * min_log
           (fixed variance: log_var = f32(log([posterior_variance[1], betas[1:]])[t]))
        3. pred_x0 = f32(sqrt(1/abar_t)) * x - f32(sqrt(1/abar_t - 1)) * eps;  clamp to [-1, 1] if clip
        4. mean = f32(coef1_t) * pred_x0 + f32(coef2_t) * x
        """
        c = x.shape[1]
        nd = x.ndim
        if model_output.shape[1] == 2 * c:
            eps, v = model_output[:, :c], model_output[:, c:]
            min_log = _extract(self.posterior_log_variance_clipped, t, nd)
            max_log = _extract(self.log_betas, t, nd)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        elif model_output.shape[1] == c:
            eps = model_output
            log_var = _extract(self.fixed_large_log_variance, t, nd).expand_as(x)
        else:
            raise ValueError(f"model output has {model_output.shape[1]} channels for {c}-channel input")
        pred_xstart = (
            _extract(self.sqrt_recip_alphas_cumprod, t, nd) * x
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, nd) * eps
        )
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "log_variance": log_var, "pred_xstart": pred_xstart, "eps": eps}

    def ddpm_step(
        self,
        model_output: torch.Tensor,
        x: torch.Tensor,
        t: int,
        noise: torch.Tensor | None,
        clip_denoised: bool,
    ) -> torch.Tensor:
        """One ancestral step: x_{t-1} = mean + exp(0.5 * log_var) * noise (t > 0); mean at t = 0."""
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = self.p_mean_variance(model_output, x, tt, clip_denoised)
        if t == 0:
            return out["mean"]
        return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise

    def ddim_step(
        self,
        model_output: torch.Tensor,
        x: torch.Tensor,
        t: int,
        noise: torch.Tensor | None,
        clip_denoised: bool,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """One DDIM step (learned variance ignored). Order (float32), after p_mean_variance's pred_x0:

        eps' = (f32(sqrt(1/abar_t)) * x - pred_x0) / f32(sqrt(1/abar_t - 1))
        a = f32(abar_t), ap = f32(abar_prev_t)
        sigma = eta * sqrt((1 - ap) / (1 - a)) * sqrt(1 - a / ap)
        x_prev = pred_x0 * sqrt(ap) + sqrt(1 - ap - sigma^2) * eps'   (+ sigma * noise when t > 0 and eta > 0)
        """
        nd = x.ndim
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = self.p_mean_variance(model_output, x, tt, clip_denoised)
        x0 = out["pred_xstart"]
        eps = (_extract(self.sqrt_recip_alphas_cumprod, tt, nd) * x - x0) / _extract(
            self.sqrt_recipm1_alphas_cumprod, tt, nd
        )
        a = _extract(self.alphas_cumprod, tt, nd)
        ap = _extract(self.alphas_cumprod_prev, tt, nd)
        sigma = eta * torch.sqrt((1 - ap) / (1 - a)) * torch.sqrt(1 - a / ap)
        mean = x0 * torch.sqrt(ap) + torch.sqrt(1 - ap - sigma**2) * eps
        if t == 0 or eta == 0:
            return mean
        return mean + sigma * noise

    def sample_loop(
        self,
        model_fn: ModelFn,
        x_T: torch.Tensor,
        seed: int,
        sampler: str = "ddpm",
        eta: float = 0.0,
        clip_denoised: bool = False,
        progress: bool = False,
        noise_fn: NoiseFn | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from x_T. Step i (i = 0 .. K-1) is process step t = K-1-i; the model
        sees ``timestep_map[t]``; step i's noise is ``noise_fn(seed, 1 + i, x.shape)`` (drawn only when
        used)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
        if sampler == "ddim":
            self.check_ddim_eta(eta)
        noise_fn = noise_fn or rng.gaussian
        x = x_T
        n = x.shape[0]
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"{sampler} x{self.num_timesteps}")
        for i, t in enumerate(steps):
            tm = torch.full((n,), int(self.timestep_map[t]), dtype=torch.long, device=x.device)
            out = model_fn(x, tm)
            need_noise = t > 0 and (sampler == "ddpm" or eta != 0)
            z = _as_tensor(noise_fn(seed, 1 + i, tuple(x.shape)), x) if need_noise else None
            if sampler == "ddpm":
                x = self.ddpm_step(out, x, t, z, clip_denoised)
            else:
                x = self.ddim_step(out, x, t, z, clip_denoised, eta)
            if not bool(torch.isfinite(x).all()):
                raise FloatingPointError(
                    f"the sample is not finite after step {i + 1} of {self.num_timesteps} (t = "
                    f"{int(self.timestep_map[t])}): the model's values overflow float32"
                )
        return x

    def check_ddim_eta(self, eta: float) -> None:
        """DDIM's step variance sigma^2 = eta^2 (1 - ap) / (1 - a) (1 - a / ap) must leave 1 - ap - sigma^2
        >= 0 (the direction term's square root is real; float32 as in ddim_step): always for eta in [0, 1],
        up to a schedule-dependent margin above 1. ValueError naming the first step where it fails."""
        if not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta must be finite and >= 0, got {eta}")
        a = torch.tensor(self.alphas_cumprod, dtype=torch.float32)
        ap = torch.tensor(self.alphas_cumprod_prev, dtype=torch.float32)
        sigma = eta * torch.sqrt((1 - ap) / (1 - a)) * torch.sqrt(1 - a / ap)
        bad = torch.nonzero(1 - ap - sigma * sigma < 0).flatten()
        if len(bad):
            t = int(bad.max())  # the first step the sampler takes (it runs t from high to low)
            raise ValueError(
                f"eta {eta:g} makes DDIM's variance larger than 1 - alpha_bar_prev at step "
                f"{self.num_timesteps - t} of {self.num_timesteps} (0..1 is always valid)"
            )

    # ------------------------------------------------------------------ training
    def vb_terms_bpd(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The variational-bound term per sample [N], in bits per dimension: KL(q(x_{t-1}|x_t,x_0) ||
        p(x_{t-1}|x_t)) averaged over elements / ln 2 for t > 0; the discretised Gaussian decoder NLL of
        x_0 (log scale 0.5 * log_var) averaged / ln 2 at t = 0. p is built with clip_denoised False."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = _mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model_fn: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses [N] for epsilon prediction: ``mse`` = mean((noise - eps)^2); with a learned
        range (2C output channels) ``vb`` = vb_terms_bpd computed with eps DETACHED (the frozen mean of
        improved DDPM, so vb trains only the variance) and ``loss = mse + vb``; with C output channels
        ``loss = mse``. ``output`` is the raw model output (for distillation)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        output = model_fn(x_t, self.model_t(t))
        c = x_start.shape[1]
        terms: dict[str, torch.Tensor] = {"output": output, "x_t": x_t}
        if output.shape[1] == 2 * c:
            eps, v = output[:, :c], output[:, c:]
            frozen = torch.cat([eps.detach(), v], dim=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t)
        elif output.shape[1] == c:
            eps = output
        else:
            raise ValueError(f"model output has {output.shape[1]} channels for {c}-channel input")
        terms["mse"] = _mean_flat((noise - eps) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms


@functools.lru_cache(maxsize=32)
def _cached(spec: str, num_timesteps: int) -> GaussianDiffusion:
    return GaussianDiffusion.spaced(spec, num_timesteps)


def create_diffusion(steps: str | int | None = None, num_timesteps: int = NUM_TIMESTEPS) -> GaussianDiffusion:
    """The linear-schedule process, respaced to ``steps`` ("250", "ddim25", 50, ...; None: all steps).
    Cached per (steps, num_timesteps); the returned object is not modified by any method."""
    spec = "" if steps is None else str(steps)
    return _cached(spec, num_timesteps)


def _as_tensor(a, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(a)
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(f"noise_fn returned shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    return t.to(device=like.device, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Sampling entry points
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    seed: int,
    steps: str | int = 250,
    sampler: str = "ddpm",
    eta: float = 0.0,
    clip_denoised: bool = False,
    progress: bool = False,
    noise_fn: NoiseFn | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw x_0 [shape] float32 with ``model_fn(x [N, C, H, W] f32, t [N] int64 original steps)``.

    x_T = noise_fn(seed, 0, shape); step i adds noise_fn(seed, 1 + i, shape) (default robuq.rng.gaussian).
    ``steps``: a respacing spec for ``space_timesteps`` (an int n means "n": the rounded fractional
    stride; "ddimN" gives the even stride). ``sampler``: "ddpm" (ancestral, learned variance) or "ddim"
    (``eta`` 0: deterministic).
    """
    noise_fn = noise_fn or rng.gaussian
    shape = tuple(int(s) for s in shape)
    diffusion = create_diffusion(steps)
    x = _as_tensor(noise_fn(seed, 0, shape), torch.empty(shape, device=device))
    return diffusion.sample_loop(model_fn, x, seed, sampler, eta, clip_denoised, progress, noise_fn).float()


def _half_duplicated(noise_fn: NoiseFn) -> NoiseFn:
    """Draw noise for the first half of the batch and repeat it for the second (CFG batches)."""

    def fn(seed: int, key: int, shape: tuple) -> torch.Tensor:
        half = torch.as_tensor(noise_fn(seed, key, (shape[0] // 2, *shape[1:])))
        return torch.cat([half, half], dim=0)

    return fn


@torch.no_grad()
def sample_classes(
    model,
    classes: Sequence[int] | torch.Tensor,
    steps: str | int = 250,
    cfg_scale: float = 1.0,
    seed: int = 0,
    sampler: str = "ddpm",
    cfg_mode: str = "dit",
    clip_denoised: bool = False,
    eta: float = 0.0,
    progress: bool = False,
    noise_fn: NoiseFn | None = None,
) -> torch.Tensor:
    """Class-conditional samples [n, C, H, W] float32 from a DiT (``robuq.models.DiT``, quantized or not).

    cfg_scale == 1: the model is called on the batch of n with labels ``classes``. Otherwise the batch is
    [x; x] with labels [classes; null] and ``model.forward_with_cfg(x, t, y, cfg_scale, mode=cfg_mode)``;
    x_T and the noise of every step are drawn for the n samples (shape [n, C, H, W], the same stream as
    without CFG) and duplicated for the second half; the conditional (first) half is returned.
    The model runs in eval mode (no label dropout); its mode is restored afterwards.
    """
    noise_fn = noise_fn or rng.gaussian
    cfg = model.config
    device = next(model.parameters()).device
    y = torch.as_tensor(classes, dtype=torch.long).reshape(-1).to(device)
    n = y.shape[0]
    if n == 0:
        raise ValueError("no classes given")
    if int(y.min()) < 0 or int(y.max()) >= cfg.num_classes:
        raise ValueError(f"class ids must be in 0..{cfg.num_classes - 1}")
    shape = (n, cfg.in_channels, cfg.input_size, cfg.input_size)
    was_training = model.training
    model.eval()
    try:
        if cfg_scale != 1:
            y2 = torch.cat([y, torch.full_like(y, cfg.num_classes)])

            def model_fn(x, t):
                return model.forward_with_cfg(x, t, y2, cfg_scale, mode=cfg_mode)

            fn = _half_duplicated(noise_fn)
            x = sample(
                model_fn, (2 * n, *shape[1:]), seed, steps, sampler, eta, clip_denoised, progress, fn, device
            )
            return x[:n]

        def model_fn(x, t):
            return model(x, t, y)

        return sample(model_fn, shape, seed, steps, sampler, eta, clip_denoised, progress, noise_fn, device)
    finally:
        model.train(was_training)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] -> uint8 numpy [N, H, W, C]: round((clamp(x, -1, 1) + 1) * 127.5)
    (float32, round half to even)."""
    x = torch.as_tensor(x).detach().float().cpu().clamp(-1, 1)
    u = torch.round((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return u.permute(0, 2, 3, 1).contiguous().numpy()
