"""AMPN: the dynamic program against brute force, and the allocation plumbing."""

import itertools

import numpy as np
import pytest

from robuq import ampn, quant


def brute_force(sens, budget, weights, candidates):
    n = sens.shape[0]
    w = np.ones(n, dtype=np.int64) if weights is None else np.asarray(weights)
    best = np.inf
    for combo in itertools.product(range(len(candidates)), repeat=n):
        bits = np.array([candidates[j] for j in combo])
        if (bits * w).sum() <= budget * w.sum() + 1e-9:
            best = min(best, sum(sens[i, j] for i, j in enumerate(combo)))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    # sensitivities shrink with bits, as measured ones do, plus noise so the order is not forced
    sens = np.sort(rng.exponential(1.0, (n, 4)), axis=1)[:, ::-1] + rng.normal(0, 0.05, (n, 4))
    weights = None if seed % 2 else rng.integers(1, 5, n)
    budget = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 4.0]))
    bits = ampn.allocate_bits(sens, budget, weights)
    w = np.ones(n) if weights is None else weights
    assert ampn.average_bits(bits, w) <= budget + 1e-9
    got = sum(sens[i, ampn.CANDIDATES.index(b)] for i, b in enumerate(bits))
    assert np.isclose(got, brute_force(sens, budget, weights, ampn.CANDIDATES))


def test_mac_weighting_spends_bits_where_cheap():
    # equal sensitivities: the MAC-weighted budget favours the cheap layer (proj: D*D vs fc1: 4*D*D)
    names = ["blocks.0.attn.proj", "blocks.0.mlp.fc1"]
    macs = [ampn.layer_macs(n, 64) for n in names]
    assert macs == [64 * 64, 4 * 64 * 64]
    sens = np.array([[4.0, 2.0, 1.0, 0.0], [4.0, 2.0, 1.0, 0.0]])
    bits = ampn.allocate_bits(sens, 2.0, macs)
    assert bits[0] > bits[1] and ampn.average_bits(bits, macs) <= 2.0
    assert ampn.allocate_bits(sens, 2.0) == [2, 2]


def test_errors_and_apply():
    with pytest.raises(ValueError, match="below the smallest"):
        ampn.allocate_bits(np.zeros((3, 4)), 0.5)
    with pytest.raises(ValueError, match="columns"):
        ampn.allocate_bits(np.zeros((3, 3)), 2.0)
    with pytest.raises(ValueError, match="block linear"):
        ampn.layer_macs("blocks.0.adaLN_modulation.1", 64)
    cfg = quant.preset(1, act_bits=4)
    names = cfg.block_linears()
    out = ampn.apply_allocation(cfg, names, [1, 2, 3, 4])
    assert [out.layers[n].act_bits for n in names] == [1, 2, 3, 4]
    assert out.layers["blocks.0.adaLN_modulation.1"].act_bits == 4
