"""Test helper: int8 weight codes -> the .rq packed layouts, written from docs/rq-format.md (not from the
exporter), shared by the engine-kernel and CUDA host tests."""

import numpy as np

from robuq import _C


def pack_codes(codes: np.ndarray, fmt: str) -> np.ndarray:
    """int8 codes [out, in] -> packed uint8 [out, packed_cols] for fmt "ternary" | "int4" | "int8"."""
    if fmt == "ternary":
        return _C.pack_ternary(codes)
    if fmt == "int4":  # two's-complement nibbles, even column in the low nibble, odd count padded with 0
        q = codes.astype(np.int16)
        if q.shape[1] % 2:
            q = np.concatenate([q, np.zeros((q.shape[0], 1), np.int16)], axis=1)
        nib = (q & 15).astype(np.uint8)
        return np.ascontiguousarray(nib[:, 0::2] | (nib[:, 1::2] << 4))
    assert fmt == "int8", fmt
    return np.ascontiguousarray(codes.astype(np.int8).view(np.uint8))
