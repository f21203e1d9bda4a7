"""The weight formats, defined once (Python side): QAT configs, the exporter's packing and the loaders'
checks all read this table, so a format that a `.rq` file cannot store is refused when the config is
built, not after training. The C++ loader checks the same three names (docs/rq-format.md).

=========  ======  ===========  =================  ===========================================
name       bits    code range   codes per byte     packed layout (docs/rq-format.md)
=========  ======  ===========  =================  ===========================================
ternary    1.58    -1 .. 1      4                  2 bits per weight, code w + 1
int4       4       -7 .. 7      2                  two's complement nibbles, low nibble first
int8       8       -127 .. 127  1                  int8 bytes
=========  ======  ===========  =================  ===========================================

Every format is symmetric per output channel: w ~ scale[row] * code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WEIGHT_FORMATS", "WeightFormat", "weight_format"]


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: int | None  # None: ternary (log2 3 = 1.58 bits)
    code_min: int
    code_max: int
    codes_per_byte: int

    def packed_cols(self, cols: int) -> int:
        """Bytes of one packed row of ``cols`` codes."""
        return -(-cols // self.codes_per_byte)


#: name -> format, in the order the docs list them
WEIGHT_FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("ternary", None, -1, 1, 4),
        WeightFormat("int4", 4, -7, 7, 2),
        WeightFormat("int8", 8, -127, 127, 1),
    )
}


def weight_format(name: str) -> WeightFormat:
    """The format called ``name``; ValueError naming the ones the .rq format stores otherwise."""
    f = WEIGHT_FORMATS.get(name) if isinstance(name, str) else None
    if f is None:
        raise ValueError(
            f"unsupported weight format {name!r} (the .rq format stores {', '.join(WEIGHT_FORMATS)})"
        )
    return f
