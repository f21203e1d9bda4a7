"""The amx tier (kernels/amx/): its ternary GEMM on AMX tiles against exact references, and the tier as a
whole.

* Ternary GEMM straight from the .rq layout: exact integer sums for every bit width 1..8, shapes with tails
  (in not a multiple of 4 or 64, out not a multiple of 16 or 32, T not a multiple of the 32-token block), on
  both schedules (weights up to 1 MiB decoded: token blocks; larger: output groups),
  garbage in padding positions, codes and weights at their extremes, and bit-identical results for 1, 2 and 3
  threads and for a token alone or in any batch.
* QLinear on the amx tier equals the avx2 tier bit for bit (exact integers, the shared epilogue), with a
  low-rank branch, a fused GELU, every bit width and 1 / 2 threads; whole DiT forwards and the shipped model's
  samples too.
* Tier machinery: amx is the default where the CPU and OS allow it; every lower tier can still be forced.

Skipped, with the reason, on CPUs, systems or builds without the amx tier.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from tier_cases import (
    assert_forward_matches_avx2,
    assert_fused_gelu_matches,
    assert_qlinear_matches_avx2,
    assert_shipped_samples_match_avx2,
    packed_with_garbage_padding,
    ternary_layer,
)

from robuq import _C

pytestmark = pytest.mark.skipif(
    not _C.tier_available("amx"),
    reason="the amx tier needs AMX-INT8 (Sapphire Rapids or later) enabled by the OS and the avx512 tier",
)


SHAPES = [
    (1, 1, 1),
    (5, 17, 3),
    (7, 96, 6),
    (9, 97, 193),  # k-block tail, output tail
    (13, 300, 129),
    (4, 33, 4608),
    (33, 191, 1152),  # one token past a 32-token block
    (64, 40, 1150),  # in not a multiple of 4
    (70, 16, 64),  # exactly one tile wide and deep
    (300, 520, 450),  # several token blocks
    # decoded weights over 1 MiB: the output-major schedule (output groups, k chunks, tails)
    (70, 1000, 1152),
    (45, 300, 4000),
    (200, 300, 4608),  # k in two chunks (the A rows of all tokens over 768 KiB)
]


@pytest.mark.parametrize("t,out,n_in", SHAPES)
def test_ternary_matmul_exact_all_bits(t, out, n_in):
    rng = np.random.default_rng(t * 131 + out * 7 + n_in)
    w, p = packed_with_garbage_padding(rng, out, n_in)
    for bits in range(1, 9):
        q = rng.integers(0, 2**bits, (t, n_in), dtype=np.uint8)
        q[0] = 2**bits - 1
        if t > 1:
            q[1] = 0
        want = q.astype(np.int64) @ w.astype(np.int64).T
        for threads in (1, 2):
            got = _C.ternary_matmul(q, p, n_in, bits, threads=threads, tier="amx")
            np.testing.assert_array_equal(got, want)


def test_ternary_matmul_extreme_weights_and_codes():
    """All weights +1 (or -1) and all codes 255: the largest sums a tile accumulates, of both signs."""
    n_in = 64 * 70 + 5
    for sign in (1, -1):
        w = np.full((35, n_in), sign, np.int8)
        p = _C.pack_ternary(w)
        for value in (0, 1, 255):
            q = np.full((17, n_in), value, np.uint8)
            want = q.astype(np.int64) @ w.astype(np.int64).T
            np.testing.assert_array_equal(_C.ternary_matmul(q, p, n_in, 8, tier="amx"), want)


@pytest.mark.parametrize("bits", [2, 4])
def test_ternary_matmul_thread_and_batch_invariance(bits):
    rng = np.random.default_rng(bits)
    n_in, out, t = 1152, 290 if bits == 2 else 1000, 203  # both schedules
    w, p = packed_with_garbage_padding(rng, out, n_in)
    q = rng.integers(0, 2**bits, (t, n_in), dtype=np.uint8)

    def mm(codes, threads):
        return _C.ternary_matmul(codes, p, n_in, bits, threads=threads, tier="amx")

    one = mm(q, 1)
    np.testing.assert_array_equal(one, q.astype(np.int64) @ w.astype(np.int64).T)
    np.testing.assert_array_equal(mm(q, 2), one)
    np.testing.assert_array_equal(mm(q, 3), one)
    np.testing.assert_array_equal(mm(q[57:58], 2)[0], one[57])
    np.testing.assert_array_equal(mm(q[5:18], 2), one[5:18])


@pytest.mark.parametrize(
    "n_in,out,bits,rank,hadamard",
    [
        (1152, 203, 2, 8, "full"),
        (4608, 50, 3, 0, "full"),
        (384, 97, 3, 0, "block"),
        (256, 33, 2, 0, "full"),
        (96, 37, 4, 4, "full"),
        (384, 40, 8, 0, "full"),  # 8 bits: the avx2 GEMM on the avx512 tier, AMX here
        (384, 520, 7, 8, "full"),  # 7 bits
        (1152, 1000, 2, 8, "full"),  # the output-major schedule (decoded weights over 1 MiB)
        (4608, 300, 4, 8, "full"),  # the same with k in several chunks
    ],
)
def test_qlinear_amx_equals_avx2(restore_tier, n_in, out, bits, rank, hadamard):
    """Hadamard + quantize, GEMM and epilogue of the amx tier give the avx2 tier's bits."""
    lin = ternary_layer(n_in, out, bits, rank, n_in + out + bits, hadamard)
    x = np.random.default_rng(bits).standard_t(3, (75, n_in)).astype(np.float32)
    assert_qlinear_matches_avx2("amx", lin, x)


@pytest.mark.parametrize("extreme", [False, True])
def test_fused_gelu_on_amx(restore_tier, extreme):
    assert_fused_gelu_matches("amx", extreme)


def test_tier_selection():
    """amx is the default where available; the environment variable forces it or any lower tier."""
    assert _C.cpu_features()["amx_int8"]
    code = "from robuq import _C; print(_C.active_tier())"
    env = {k: v for k, v in os.environ.items() if k != "ROBUQ_KERNEL_TIER"}

    def run(e):
        return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True)

    assert run(env).stdout.strip() == "amx"
    for forced in ("amx", "avx512", "avx2", "generic"):
        assert run({**env, "ROBUQ_KERNEL_TIER": forced}).stdout.strip() == forced


@pytest.mark.parametrize("name", ["a2", "mix", "h128", "latent"])
def test_whole_forward_amx_equals_avx2(restore_tier, tiny, name):
    """A whole DiT forward (every layer kind, Hadamard form and bit width of the tiny models, CFG batch) gives
    the same bits on the amx and avx2 tiers, for 1 and 2 threads."""
    assert_forward_matches_avx2("amx", tiny(name))


def test_shipped_model_samples_amx_equal_avx2(restore_tier):
    """The shipped W1.58A2 digits model samples the same pixels on both tiers (DDIM, CFG)."""
    assert_shipped_samples_match_avx2("amx")
