"""Latents to pictures: the Stable-Diffusion VAE decoder (diffusers, from a local folder) and a fast linear
preview that needs nothing.

DiT's latent models sample 4-channel latents of the SD VAE (``stabilityai/sd-vae-ft-ema`` / ``-mse``) at
1/8 the image side, scaled by ``LATENT_SCALE`` = 0.18215 (DiT's sample.py: ``vae.decode(z / 0.18215)``).

* ``load_vae(path)`` loads ``diffusers.AutoencoderKL`` from a local folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``, what ``save_pretrained`` writes, e.g. a downloaded copy of
  stabilityai/sd-vae-ft-ema), or from the ``vae/`` folder of a diffusers DiTPipeline folder. Nothing is
  downloaded: ``local_files_only=True`` and HF_HUB_OFFLINE=1.
* ``decode(vae, z)`` divides by 0.18215, decodes in float32 (in batches) and returns uint8 images
  [n, H, W, 3] with the engine's rounding (``robuq.engine.to_uint8``).
* ``preview(z)`` is a linear map of each latent pixel to RGB, no VAE: the 4x3 matrix
  ``PREVIEW_RGB`` was fitted by least squares to SD v1.4 VAE decodings of the scaled latents by
  Keturn (2022), "Decoding latents to RGB without upscaling",
  https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204 (the same SD-v1 VAE
  DiT uses). It gives the colours and layout of the image at latent resolution (1/8 side), not detail.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .engine import to_uint8

__all__ = ["LATENT_SCALE", "PREVIEW_RGB", "VaeError", "decode", "load_vae", "preview", "vae_folder"]

#: DiT's latent scale: the diffusion model's latents are the VAE's latents x 0.18215
LATENT_SCALE = 0.18215

#: rows: latent channels 1..4; columns: R, G, B. rgb = latent (scaled, as sampled) @ PREVIEW_RGB, about
#: in [-1, 1] (module docstring: where the coefficients come from).
PREVIEW_RGB = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    dtype=np.float32,
)


class VaeError(Exception):
    """The VAE cannot be used: missing folder or files, diffusers or torch not installed, wrong latents."""


def preview(z: np.ndarray) -> np.ndarray:
    """Latents float32 [n, 4, h, w] (scaled, as the DiT samples them) -> uint8 RGB [n, h, w, 3] by the
    linear map PREVIEW_RGB, values clamped to [-1, 1] and rounded as ``to_uint8``."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 4 or z.shape[1] != PREVIEW_RGB.shape[0]:
        raise VaeError(f"the linear preview needs SD-VAE latents [n, 4, h, w], got shape {list(z.shape)}")
    rgb = np.einsum("nchw,cr->nrhw", z, PREVIEW_RGB, dtype=np.float32)
    return to_uint8(rgb)


def vae_folder(path: str | os.PathLike) -> Path:
    """The VAE folder a ``--vae`` argument means: a diffusers DiTPipeline folder's ``vae/``, or the folder
    itself."""
    p = Path(path)
    if p.is_dir() and not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file():
        return p / "vae"
    return p


def load_vae(path: str | os.PathLike) -> Any:
    """diffusers.AutoencoderKL from a local folder, in float32 eval mode, on the CPU. VaeError (naming the
    problem) if the folder, its files, diffusers or torch are missing."""
    p = vae_folder(path)
    if not p.exists():
        raise VaeError(
            f"VAE folder {p} not found. Give a local copy of the Stable-Diffusion VAE in diffusers layout "
            "(e.g. stabilityai/sd-vae-ft-ema: config.json + diffusion_pytorch_model.safetensors); "
            "nothing is downloaded"
        )
    if not p.is_dir():
        raise VaeError(f"--vae {p} is not a folder: give the folder holding config.json and the weights")
    if not (p / "config.json").is_file():
        raise VaeError(f"VAE folder {p} has no config.json (expected diffusers' AutoencoderKL layout)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch  # noqa: F401
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise VaeError(
            f"decoding with the VAE needs torch and diffusers ({e.name or e} is not installed): "
            "pip install 'robuq[vae]' (install a CPU torch first, see DEVELOPERS.md), or leave --vae out "
            "to write the latents and a linear preview"
        ) from None
    try:
        vae = AutoencoderKL.from_pretrained(
            str(p), local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VaeError(f"cannot load the VAE from {p}: {msg[:300]}") from None
    if getattr(vae.config, "latent_channels", None) != 4:
        raise VaeError(f"the VAE in {p} has {vae.config.latent_channels} latent channels, not 4 (SD's VAE)")
    return vae.eval()


def decode(vae: Any, z: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Latents float32 [n, 4, h, w] (scaled by 0.18215, as sampled) -> uint8 images [n, H, W, 3] through
    ``vae.decode(z / 0.18215)`` in float32, ``batch_size`` latents at a time."""
    import torch

    z = np.asarray(z, dtype=np.float32)
    want = getattr(vae.config, "latent_channels", 4)
    if z.ndim != 4 or z.shape[1] != want:
        raise VaeError(f"the VAE decodes latents [n, {want}, h, w], got shape {list(z.shape)}")
    out = []
    with torch.inference_mode():
        for i in range(0, z.shape[0], batch_size):
            zb = torch.from_numpy(np.ascontiguousarray(z[i : i + batch_size])) / LATENT_SCALE
            x = vae.decode(zb.to(vae.dtype)).sample.float().numpy()
            out.append(to_uint8(x))
    return np.concatenate(out)
