"""The CUDA kernels as compiled: ptxas's resource report must show no local-memory spills in any kernel
(a spill in the GEMM or the fused Hadamard-quantize pass costs more than the kernel itself), for every
target architecture (sm_80 and sm_90).

The report is the one the CMake build wrote (kernels/cuda/ptxas_report.sh, the compiler launcher of the
CUDA sources) when robuq._C was built with the CUDA backend and the report is newer than its source;
otherwise, when nvcc is on this machine, the test compiles the kernel sources itself with -Xptxas -v.
Skipped, with the reason, only when there is no nvcc at all.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from robuq import _C

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SOURCES = ["hadamard_quant.cu", "qgemm.cu", "ops.cu"]
#: kernels that must be in the report, for every architecture: the per-layer hot paths
HOT_KERNELS = ["hadamard_quantize_kernel", "qgemm_kernel", "attention_kernel", "layernorm_modulate_kernel"]
ARCHS = ("sm_80", "sm_90")

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
PROPS = re.compile(r"Function properties for (\S+)")
SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_report(text: str) -> dict[tuple[str, str], tuple[int, int, int]]:
    """ptxas -v output -> {(mangled function, arch): (stack frame, spill stores, spill loads)}."""
    out: dict[tuple[str, str], tuple[int, int, int]] = {}
    arch = None
    func = None
    for line in text.splitlines():
        if m := ENTRY.search(line):
            arch = m.group(2)
        elif m := PROPS.search(line):
            func = m.group(1)
        elif (m := SPILL.search(line)) and func is not None and arch is not None:
            out[(func, arch)] = tuple(int(v) for v in m.groups())
            func = None
    return out


def spills(report: dict) -> list[str]:
    return [
        f"{f} ({a}): {st} bytes spill stores, {ld} bytes spill loads"
        for (f, a), (_, st, ld) in report.items()
        if st or ld
    ]


def test_parser_sees_spills():
    """The parser itself: a report with a spill is flagged, one without is not."""
    text = (
        "ptxas info    : Compiling entry function '_Z12qgemm_kernelILi0EEvPKh' for 'sm_80'\n"
        "ptxas info    : Function properties for _Z12qgemm_kernelILi0EEvPKh\n"
        "    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 0 barriers, 504 bytes cmem[0]\n"
        "ptxas info    : Compiling entry function '_Z6kernelv' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z6kernelv\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    )
    r = parse_report(text)
    assert r[("_Z12qgemm_kernelILi0EEvPKh", "sm_80")] == (24, 8, 12)
    assert r[("_Z6kernelv", "sm_90")] == (0, 0, 0)
    assert spills(r) == ["_Z12qgemm_kernelILi0EEvPKh (sm_80): 8 bytes spill stores, 12 bytes spill loads"]


def find_nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def build_reports() -> dict[str, str] | None:
    """The CMake build's reports of the kernel sources, if present and newer than every source they
    depend on (the .cu file and the headers of kernels/cuda)."""
    info = _C.cuda_build_info()
    if not info["compiled"]:
        return None
    rdir = Path(info["report_dir"])
    headers = max(p.stat().st_mtime for p in (ROOT / "kernels" / "cuda").glob("*.h*"))
    out = {}
    for src in KERNEL_SOURCES:
        rep = rdir / f"{src}.o.txt"
        s = ROOT / "kernels" / "cuda" / src
        if not rep.is_file() or rep.stat().st_mtime < max(s.stat().st_mtime, headers):
            return None
        out[src] = rep.read_text()
    return out


def compile_reports(nvcc: str, tmp: Path) -> dict[str, str]:
    """ptxas reports of the kernel sources compiled here, one cubin per architecture (about a minute)."""
    out = {}
    for src in KERNEL_SOURCES:
        text = ""
        for a in ARCHS:
            cmd = [nvcc, "-std=c++17", "-O3", "--fmad=false", "-Xptxas=-v", "-cubin", "-arch", a]
            cmd += ["-I", str(ROOT / "kernels" / "cuda"), "-I", str(ROOT / "kernels" / "include")]
            cmd += [str(ROOT / "kernels" / "cuda" / src)]
            cmd += ["-o", str(tmp / f"{src}.{a}.cubin")]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"nvcc failed on {src} for {a}:\n{res.stderr[-3000:]}"
            text += res.stderr + res.stdout
        out[src] = text
    return out


def test_no_spills_in_cuda_kernels(tmp_path):
    reports = build_reports()
    if reports is None:
        nvcc = find_nvcc()
        if nvcc is None:
            pytest.skip("nvcc is not installed: the CUDA kernels cannot be compiled on this machine")
        reports = compile_reports(nvcc, tmp_path)
    merged: dict = {}
    for text in reports.values():
        merged.update(parse_report(text))
    assert merged, "the ptxas report lists no kernels (was -Xptxas=-v dropped from the CUDA flags?)"
    for k in HOT_KERNELS:
        for a in ARCHS:
            assert any(k in f and arch == a for f, arch in merged), f"{k} is missing from the {a} report"
    bad = spills(merged)
    assert not bad, "local-memory spills:\n" + "\n".join(bad)
