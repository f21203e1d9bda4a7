"""Test helper: small hand-made .rq files for the hostile-input tests (tests/test_hostile.py) and the fuzz
seed corpus (tests/fuzz/make_corpus.py): a full-precision file of any config written with the exporter's
container writer (numpy only), and byte-level edits of an existing file (a tensor's bytes, the metadata)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np

import robuq
from robuq.exporter.rq import TensorSpec, write_safetensors

ASSETS = os.path.join(os.path.dirname(robuq.__file__), "assets")
DIGITS = os.path.join(ASSETS, "digits-w158a2.rq")


def fp_config(**over) -> dict:
    c = dict(
        depth=1,
        hidden_size=8,
        patch_size=2,
        num_heads=2,
        mlp_ratio=4.0,
        input_size=4,
        in_channels=1,
        num_classes=2,
        learn_sigma=True,
        class_dropout_prob=0.1,
        space="pixel",
    )
    c.update(over)
    return c


def write_fp_rq(path, config: dict, seed: int = 0, scale: float = 0.02) -> str:
    """A full-precision .rq file of `config` with small random weights (written with the exporter's
    container writer, without torch)."""
    D, p, C = config["hidden_size"], config["patch_size"], config["in_channels"]
    T = (config["input_size"] // p) ** 2
    M = int(D * config["mlp_ratio"])
    cout = 2 * C if config["learn_sigma"] else C
    rows = config["num_classes"] + (1 if config["class_dropout_prob"] > 0 else 0)
    shapes = {
        "x_embedder.proj.weight": (D, C, p, p),
        "x_embedder.proj.bias": (D,),
        "pos_embed": (1, T, D),
        "y_embedder.embedding_table.weight": (rows, D),
    }
    linears = [("t_embedder.mlp.0", 256, D), ("t_embedder.mlp.2", D, D)]
    for i in range(config["depth"]):
        b = f"blocks.{i}."
        linears += [
            (b + "adaLN_modulation.1", D, 6 * D),
            (b + "attn.qkv", D, 3 * D),
            (b + "attn.proj", D, D),
            (b + "mlp.fc1", D, M),
            (b + "mlp.fc2", M, D),
        ]
    linears += [("final_layer.adaLN_modulation.1", D, 2 * D), ("final_layer.linear", D, p * p * cout)]
    for name, i, o in linears:
        shapes[name + ".weight"] = (o, i)
        shapes[name + ".bias"] = (o,)
    rng = np.random.default_rng(seed)
    specs = [TensorSpec(k, "F32", tuple(v)) for k, v in shapes.items()]
    arrays = ((rng.standard_normal(s.shape) * scale).astype(np.float32) for s in specs)
    meta = {
        "format": "robuq",
        "format_version": "1",
        "model_config": json.dumps(config),
        "quant_config": json.dumps({"attention_bits": None, "layers": {}}),
        "source": "tests/test_hostile.py",
    }
    write_safetensors(path, specs, arrays, meta)
    return str(path)


def rq_header(path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def poke_tensor(src, dst, name: str, data: bytes, at: int = 0) -> str:
    """A copy of src with `data` written into tensor `name` at byte `at`."""
    n, header = rq_header(src)
    raw = bytearray(open(src, "rb").read())
    begin = 8 + n + header[name]["data_offsets"][0] + at
    raw[begin : begin + len(data)] = data
    open(dst, "wb").write(bytes(raw))
    return str(dst)


def edit_metadata(src, dst, edit) -> str:
    """A copy of src with its metadata edited by edit(meta dict of parsed JSON fields) (same data)."""
    n, header = rq_header(src)
    raw = open(src, "rb").read()
    meta = header["__metadata__"]
    parsed = {k: json.loads(meta[k]) for k in ("model_config", "quant_config")}
    edit(parsed)
    for k, v in parsed.items():
        meta[k] = json.dumps(v)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 64)
    open(dst, "wb").write(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return str(dst)
