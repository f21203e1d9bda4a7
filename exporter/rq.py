"""The .rq container: a safetensors file with 64-byte aligned tensors (docs/rq-format.md).

Writer: ``write_safetensors`` streams arrays in a planned order (one layer in memory at a time) to a
temporary file beside the target and renames it into place only when complete. Reader: ``load_rq``
returns (metadata with its JSON values decoded, tensors as numpy arrays) after checking the container and
the layer entries against the tensors.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from robuq.cli import atomic_path as cli_atomic_path

from .errors import ExportError
from .packing import FORMATS, packed_cols

FORMAT = "robuq"
FORMAT_VERSION = "1"
ALIGN = 64
PAD_PREFIX = "__pad"  # names of the zero-filled U8 entries that keep the next tensor aligned
JSON_KEYS = ("model_config", "quant_config", "sampling")  # metadata values that are JSON objects
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "U8": np.dtype("u1"), "I32": np.dtype("<i4")}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the file: name, safetensors dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


# ---------------------------------------------------------------------------------------------- writing
def plan_container(specs: list[TensorSpec], metadata: dict[str, str]) -> tuple[bytes, list, int]:
    """Header and layout of a file holding `specs` in this order.

    Returns (the 8-byte length plus the space-padded JSON header, [(spec or padding bytes, offset)] in
    file order, total file size). Every tensor's absolute offset is a multiple of ALIGN: the header is
    padded so the data section starts aligned, and a zero-filled U8 entry named `__pad<i>` fills each gap
    (safetensors requires the data section to be covered without holes).
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    if any(n.startswith(PAD_PREFIX) or n == "__metadata__" for n in names):
        raise ValueError(f"tensor names may not start with {PAD_PREFIX!r} or be '__metadata__'")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("metadata must map strings to strings")
    header: dict = {"__metadata__": metadata}
    entries: list = []
    cursor = 0
    for spec in specs:
        gap = -cursor % ALIGN
        if gap:
            pad = f"{PAD_PREFIX}{len(entries)}"
            header[pad] = {"dtype": "U8", "shape": [gap], "data_offsets": [cursor, cursor + gap]}
            entries.append((gap, cursor))
            cursor += gap
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [cursor, cursor + spec.nbytes],
        }
        entries.append((spec, cursor))
        cursor += spec.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGN)
    head = struct.pack("<Q", len(text)) + text
    return head, entries, len(head) + cursor


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """robuq.cli.atomic_path (a temporary name renamed into place when the block succeeds, removed when it
    raises) after the checks that name a bad output path as an ExportError."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ExportError(f"output directory {directory} does not exist")
    if os.path.isdir(path):
        raise ExportError(f"output path {path} is a directory")
    with cli_atomic_path(path) as tmp:
        yield tmp


def write_safetensors(
    path: str | os.PathLike, specs: list[TensorSpec], arrays: Iterable[np.ndarray], metadata: dict[str, str]
) -> int:
    """Write the arrays (in the order of `specs`, each with exactly its dtype and shape) atomically.
    `arrays` may be a generator, so only one layer needs to be in memory. Returns the file size."""
    head, entries, total = plan_container(specs, metadata)
    it = iter(arrays)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(head)
        for item, _ in entries:
            if isinstance(item, int):
                f.write(bytes(item))
                continue
            try:
                arr = next(it)
            except StopIteration:
                raise ValueError(f"no array supplied for tensor {item.name}") from None
            want = DTYPES[item.dtype]
            arr = np.asarray(arr)
            if arr.dtype != want or arr.shape != item.shape:
                raise ValueError(
                    f"tensor {item.name}: planned {item.dtype} {list(item.shape)}, "
                    f"got {arr.dtype} {list(arr.shape)}"
                )
            f.write(np.ascontiguousarray(arr).data)
        if next(it, None) is not None:
            raise ValueError("more arrays supplied than planned tensors")
        if f.tell() != total:
            raise AssertionError(f"wrote {f.tell()} bytes, planned {total}")
    return total


# ---------------------------------------------------------------------------------------------- reading
def read_safetensors(
    path: str | os.PathLike, mmap: bool = True
) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """A numpy safetensors reader: (metadata, name -> array, padding entries left out). Arrays are
    read-only views of a memory map (mmap) or of one in-memory copy of the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100_000_000):
            raise ValueError(f"{path}: header length {n} exceeds the file")
        header = json.loads(f.read(n).decode())
    buf = np.memmap(path, dtype=np.uint8, mode="r") if mmap else np.fromfile(path, dtype=np.uint8)
    data = buf[8 + n :]
    metadata = header.pop("__metadata__", {}) or {}
    tensors: dict[str, np.ndarray] = {}
    cursor = 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = e["data_offsets"]
        if e["dtype"] not in DTYPES:
            raise ValueError(f"tensor {name}: dtype {e['dtype']} is not one of {sorted(DTYPES)}")
        dt = DTYPES[e["dtype"]]
        count = int(np.prod(e["shape"], dtype=np.int64))
        if begin != cursor or end - begin != count * dt.itemsize or end > data.size:
            raise ValueError(f"tensor {name}: bad data_offsets {[begin, end]}")
        cursor = end
        if not name.startswith(PAD_PREFIX):
            tensors[name] = data[begin:end].view(dt).reshape(e["shape"])
    if cursor != data.size:
        raise ValueError(f"{path}: {data.size - cursor} bytes after the last tensor")
    return metadata, tensors


def layer_tensor_specs(name: str, entry: dict, bias: bool) -> list[TensorSpec]:
    """The tensors of one quantized layer, in file order."""
    out, inf, rank = entry["out_features"], entry["in_features"], entry["rank"]
    specs = [
        TensorSpec(f"{name}.weight_packed", "U8", (out, packed_cols(entry["weight"], inf))),
        TensorSpec(f"{name}.weight_scale", "F32", (out,)),
        TensorSpec(f"{name}.weight_sum", "I32", (out,)),
    ]
    if bias:
        specs.append(TensorSpec(f"{name}.bias", "F32", (out,)))
    if rank:
        specs.append(TensorSpec(f"{name}.lowrank_down.weight", "F16", (rank, inf)))
        specs.append(TensorSpec(f"{name}.lowrank_up.weight", "F16", (out, rank)))
    return specs


def load_rq(path: str | os.PathLike, mmap: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a .rq file: (metadata with model_config / quant_config / sampling decoded from JSON, tensors).

    Checks the format name and version, and that every quantized layer has its tensors with the right
    dtypes and shapes. Raises ValueError otherwise.
    """
    raw, tensors = read_safetensors(path, mmap=mmap)
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not a .rq file (metadata format {raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: .rq format version {raw.get('format_version')!r}, this reader reads 1")
    meta: dict[str, Any] = {k: json.loads(v) if k in JSON_KEYS else v for k, v in raw.items()}
    for key in JSON_KEYS:
        if not isinstance(meta.get(key), dict):
            raise ValueError(f"{path}: metadata {key!r} missing or not a JSON object")
    for lname, entry in meta["quant_config"].get("layers", {}).items():
        if entry.get("weight") not in FORMATS:
            raise ValueError(f"layer {lname}: weight format {entry.get('weight')!r} is not one of {FORMATS}")
        for spec in layer_tensor_specs(lname, entry, bias=f"{lname}.bias" in tensors):
            t = tensors.get(spec.name)
            if t is None:
                raise ValueError(f"layer {lname}: tensor {spec.name} is missing")
            if t.dtype != DTYPES[spec.dtype] or t.shape != spec.shape:
                raise ValueError(
                    f"tensor {spec.name}: expected {spec.dtype} {list(spec.shape)}, "
                    f"got {t.dtype} {list(t.shape)}"
                )
    return meta, tensors
