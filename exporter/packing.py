"""Weight-code packing of the .rq format (docs/rq-format.md), in numpy.

Codes are int8 [rows, cols]; packed rows are uint8 [rows, packed_cols(fmt, cols)]. The ternary layout is
the one robuq._C.pack_ternary implements (the tests compare them); this module has no dependency on the
C++ extension so the exporter runs with torch and numpy alone.
"""

from __future__ import annotations

import numpy as np

from robuq.quant.formats import WEIGHT_FORMATS, weight_format

#: weight formats the .rq format stores, and the code range of each (from robuq.quant.formats)
FORMATS = tuple(WEIGHT_FORMATS)
CODE_RANGE = {f.name: (f.code_min, f.code_max) for f in WEIGHT_FORMATS.values()}


def packed_cols(fmt: str, cols: int) -> int:
    """Bytes per packed row of `cols` codes."""
    return weight_format(fmt).packed_cols(cols)


def _check_codes(codes: np.ndarray, fmt: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [rows, cols], got shape {codes.shape}")
    if codes.dtype != np.int8:
        raise ValueError(f"codes must be int8, got {codes.dtype}")
    lo, hi = CODE_RANGE[fmt]
    if codes.size and (codes.min() < lo or codes.max() > hi):
        bad = np.argwhere((codes < lo) | (codes > hi))[0]
        raise ValueError(f"{fmt} code {int(codes[tuple(bad)])} at [{bad[0]}, {bad[1]}] is outside {lo}..{hi}")
    return codes


def pack_ternary(codes: np.ndarray) -> np.ndarray:
    """int8 {-1, 0, 1} [R, C] -> uint8 [R, ceil(C/4)]: weight 4j+i as code w+1 in bits 2i..2i+1 of byte j;
    padding weights are code 1 (weight 0)."""
    codes = _check_codes(codes, "ternary")
    rows, cols = codes.shape
    pc = packed_cols("ternary", cols)
    c = np.ones((rows, 4 * pc), dtype=np.uint8)  # padding: code 1
    c[:, :cols] = codes.astype(np.uint8) + np.uint8(1)  # -1 wraps to 255, +1 gives 0: exact
    c = c.reshape(rows, pc, 4)
    return c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)


def unpack_ternary(packed: np.ndarray, cols: int) -> np.ndarray:
    """Inverse of pack_ternary: uint8 [R, ceil(cols/4)] -> int8 [R, cols]. ValueError on code 3."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != packed_cols("ternary", cols):
        raise ValueError(f"ternary packed rows for {cols} columns must be uint8 [R, {(cols + 3) // 4}]")
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
    c = ((packed[..., None] >> shifts) & np.uint8(3)).reshape(packed.shape[0], -1)[:, :cols]
    if np.any(c == 3):
        r, k = np.argwhere(c == 3)[0]
        raise ValueError(f"invalid ternary code 3 at [{r}, {k}]")
    return (c.astype(np.int8) - np.int8(1)).astype(np.int8)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """int8 in -7..7 [R, C] -> uint8 [R, ceil(C/2)]: column 2j in the low nibble, 2j+1 in the high one,
    two's complement; padding nibbles 0."""
    codes = _check_codes(codes, "int4")
    rows, cols = codes.shape
    pc = packed_cols("int4", cols)
    n = np.zeros((rows, 2 * pc), dtype=np.uint8)
    n[:, :cols] = codes.astype(np.uint8) & np.uint8(0x0F)
    return n[:, 0::2] | (n[:, 1::2] << 4)


def unpack_int4(packed: np.ndarray, cols: int) -> np.ndarray:
    """Inverse of pack_int4: uint8 [R, ceil(cols/2)] -> int8 [R, cols]. ValueError on the code -8."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != packed_cols("int4", cols):
        raise ValueError(f"int4 packed rows for {cols} columns must be uint8 [R, {(cols + 1) // 2}]")
    n = np.stack([packed & np.uint8(0x0F), packed >> 4], axis=-1).reshape(packed.shape[0], -1)[:, :cols]
    c = (n.astype(np.int8) ^ np.int8(8)) - np.int8(8)  # sign-extend the nibble
    if np.any(c == -8):
        r, k = np.argwhere(c == -8)[0]
        raise ValueError(f"invalid int4 code -8 at [{r}, {k}]")
    return c.astype(np.int8)


def pack_weight(codes: np.ndarray, fmt: str) -> np.ndarray:
    """Pack int8 codes [R, C] in the named format ('ternary', 'int4' or 'int8')."""
    packed_cols(fmt, 0)  # raises on an unsupported format
    if fmt == "ternary":
        return pack_ternary(codes)
    if fmt == "int4":
        return pack_int4(codes)
    return _check_codes(codes, "int8").view(np.uint8).copy()


def unpack_weight(packed: np.ndarray, fmt: str, cols: int) -> np.ndarray:
    """Inverse of pack_weight: uint8 [R, packed_cols(fmt, cols)] -> int8 codes [R, cols]."""
    packed_cols(fmt, 0)
    if fmt == "ternary":
        return unpack_ternary(packed, cols)
    if fmt == "int4":
        return unpack_int4(packed, cols)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != cols:
        raise ValueError(f"int8 packed rows for {cols} columns must be uint8 [R, {cols}]")
    return _check_codes(packed.view(np.int8), "int8").copy()
