"""Seed corpora for the libFuzzer harnesses (scripts/fuzz.sh runs this; nothing binary is committed).

  python tests/fuzz/make_corpus.py OUT_DIR

OUT_DIR/loader: valid .rq files: tiny random models (depth 1-2, hidden 32, 4x4 inputs: every quantized
form the format has, pixel and latent, with and without the null class and low-rank branches), small
enough for the harness to run their forward pass, plus the shipped python/robuq/assets/*.rq, plus the
hostile cases of issue 14 (tests/test_hostile.py): valid files whose forward is beyond the budget (a huge
input with large patches and MLP, 65,536 tokens), act_bits 0, a non-zero padding byte, a huge finite
weight scale.
OUT_DIR/metadata: the metadata of each of those files as fuzz_rq_metadata reads it: the JSON texts of
model_config, quant_config, sampling and source separated by NUL bytes.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

from robuq.exporter.cli import main as export_main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from rq_hostile import DIGITS, edit_metadata, fp_config, poke_tensor, rq_header, write_fp_rq  # noqa: E402

TINY = ["--depth", "1", "--hidden-size", "32", "--num-heads", "2", "--input-size", "4", "--in-channels", "1"]
VARIANTS = {
    "tiny-a2-full": ["--bits", "W1.58A2", "--num-classes", "3"],
    "tiny-a3-block-r2": ["--bits", "W1.58A3", "--hadamard", "block", "--rank", "2", "--num-classes", "3"],
    "tiny-a4-minmax-none": ["--bits", "W1.58A4", "--clip", "minmax", "--hadamard", "none"]
    + ["--num-classes", "2"],
    "tiny-a1-ternary-adaln": ["--bits", "W1.58A1", "--adaln", "ternary", "--num-classes", "3"],
    "tiny-a16": ["--bits", "W1.58A16", "--num-classes", "3", "--no-clip-denoised", "--cfg-mode", "all"],
    "tiny-fp": ["--fp", "--num-classes", "3"],
    "tiny-depth2-ampn": ["--bits", "W1.58A2", "--ampn", "--num-classes", "3", "--depth", "2"],
}


def metadata_text(path: Path) -> bytes:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    fields = ["model_config", "quant_config"] + [k for k in ("sampling", "source") if k in meta]
    return b"\0".join(meta[k].encode() for k in fields)


def hostile_seeds(loader: Path) -> list[Path]:
    """The issue-14 cases (tests/test_hostile.py) as seeds: each loads or is refused with FormatError."""
    big = fp_config(input_size=4096, patch_size=64, hidden_size=4, mlp_ratio=64.0)
    seeds = [
        write_fp_rq(loader / "hostile-huge-forward.rq", big),
        write_fp_rq(
            loader / "hostile-65536-tokens.rq", fp_config(input_size=512, hidden_size=4, num_heads=1)
        ),
    ]

    def act_bits_zero(m):
        m["quant_config"]["layers"]["blocks.0.attn.qkv"]["act_bits"] = 0

    seeds.append(edit_metadata(DIGITS, loader / "hostile-act-bits-0.rq", act_bits_zero))
    _, header = rq_header(DIGITS)
    pad = next(k for k in header if k.startswith("__pad"))
    seeds.append(poke_tensor(DIGITS, loader / "hostile-pad-nonzero.rq", pad, b"\x01"))
    name = "blocks.0.mlp.fc2.weight_scale"
    scale = struct.pack("<f", 3e38) * header[name]["shape"][0]
    seeds.append(poke_tensor(DIGITS, loader / "hostile-scale-3e38.rq", name, scale))
    return [Path(p) for p in seeds]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    loader, meta = out / "loader", out / "metadata"
    loader.mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    files = []
    for name, extra in VARIANTS.items():
        path = loader / f"{name}.rq"
        # --depth given twice: argparse keeps the last one
        rc = export_main(["--random", "DiT-S/2", *TINY, *extra, "-o", str(path), "-q"])
        if rc not in (0, None):
            print(f"make_corpus: exporting {name} failed", file=sys.stderr)
            return 1
        files.append(path)
    for asset in sorted((ROOT / "python" / "robuq" / "assets").glob("*.rq")):
        shutil.copyfile(asset, loader / asset.name)
        files.append(loader / asset.name)
    files += hostile_seeds(loader)
    for path in files:
        (meta / f"{path.stem}.txt").write_bytes(metadata_text(path))
    print(f"make_corpus: {len(files)} .rq seeds in {loader}, {len(files)} metadata seeds in {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
