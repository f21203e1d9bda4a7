"""The project's seeded Gaussian noise: a counter-based generator that the C++ engine reproduces exactly.

Sampling in PyTorch and in the engine must draw the same noise for the same seed, so neither uses its
library's RNG. Element i of stream (seed, key) is built from two 64-bit hashes (SplitMix64's finaliser)
of a counter, turned into a normal by Box-Muller in float64 and rounded to float32:

    base   = mix(seed * 0x9E3779B97F4A7C15 + key * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019)   (mod 2^64)
    x_j    = mix(base + j)                     j = 0, 1, 2, ...
    u_j    = ((x_j >> 11) + 0.5) / 2^53        in (0, 1)
    pair p: r = sqrt(-2 ln u_2p), th = 2 pi u_(2p+1); z_2p = r cos th, z_(2p+1) = r sin th

mix(z): z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31.
Keys used by the samplers: 0 for the initial latents, 1 + i for the noise added at sampling step i.
"""

from __future__ import annotations

import numpy as np

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLD, _KEY, _OFF = 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03, 0x632BE59BD9B4E019
_MASK = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def gaussian(seed: int, key: int, shape) -> np.ndarray:
    """Standard normal float32 array of `shape` for stream (seed, key); C order."""
    n = int(np.prod(shape, dtype=np.int64))
    if seed < 0 or key < 0:
        raise ValueError("seed and key must be non-negative")
    start = (seed * _GOLD + key * _KEY + _OFF) & _MASK
    with np.errstate(over="ignore"):
        base = _mix(np.array([start], dtype=np.uint64))[0]
        pairs = (n + 1) // 2
        x = _mix(base + np.arange(2 * pairs, dtype=np.uint64))
    u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))
    r = np.sqrt(-2.0 * np.log(u[0::2]))
    th = 2.0 * np.pi * u[1::2]
    z = np.empty(2 * pairs, dtype=np.float64)
    z[0::2], z[1::2] = r * np.cos(th), r * np.sin(th)
    return z[:n].astype(np.float32).reshape(shape)
