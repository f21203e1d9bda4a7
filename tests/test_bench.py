"""robuq-bench's report side on synthetic results (no measurements): ratios, targets, text table, README
section (replaced in place between its markers), the PIL chart, and the ceilings on this CPU."""

import json

import pytest

from robuq import _C
from robuq.bench import cli, report


def fake_results():
    fwd = []
    for runtime, config, t2, t1, rss in (
        ("robuq", "W1.58A2", 1.0, 1.9, 350.0),
        ("robuq", "AMPN", 0.98, None, 351.0),
        ("torch", "fp32", 3.5, 6.8, 3100.0),
        ("ort", "fp32", 3.2, None, 2900.0),
        ("ort", "int8", 1.7, None, 900.0),
    ):
        for threads, t in ((2, t2), (1, t1)):
            if t is not None:
                fwd.append(
                    {
                        "model": "DiT-XL/2",
                        "runtime": runtime,
                        "config": config,
                        "threads": threads,
                        "median_s": t,
                        "times": [t],
                        "load_s": 1.0,
                        "peak_rss_mb": rss,
                        "file_mb": 260.0,
                    }
                )
    lin = []
    for side, g in (("robuq", 380.0), ("torch", 85.0)):
        for layer in ("attn.qkv", "mlp.fc2"):
            lin.append(
                {
                    "model": "DiT-XL/2",
                    "layer": layer,
                    "in": 1152,
                    "out": 3456,
                    "tokens": 512,
                    "bits": 2 if side == "robuq" else None,
                    "threads": 2,
                    "side": side,
                    "median_s": 0.01,
                    "gmacs": g,
                }
            )
    return {
        "format": "robuq-bench",
        "version": 1,
        "date": "2026-01-01 00:00 UTC",
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "features": ["avx2"],
            "os": "Linux",
            "robuq": "0.1.0",
            "memory_gb": 8,
            "git": "abc",
            "torch": "2",
            "onnxruntime": "1",
        },
        "load_before": [0.1, 0.1, 0.1],
        "load_after": [0.2, 0.1, 0.1],
        "settings": {
            "models": ["DiT-XL/2"],
            "configs": ["W1.58A2", "AMPN"],
            "warmup": 2,
            "repeats": 5,
            "threads": 2,
            "tokens": 512,
            "rank": 8,
            "seed": 0,
        },
        "ceilings": [
            {"kind": "fma_f32", "threads": 1, "gops": 51.0},
            {"kind": "fma_f32", "threads": 2, "gops": 101.0},
        ],
        "linears": lin,
        "forward": fwd,
    }


def test_ratios_and_targets():
    res = fake_results()
    rows = {(r["runtime"], r["config"]): r for r in report.forward_rows(res)}
    a2 = rows[("robuq", "W1.58A2")]
    assert a2["PyTorch fp32"] == pytest.approx(3.5) and a2["ORT int8"] == pytest.approx(1.7)
    assert a2["scaling"] == pytest.approx(1.9) and rows[("robuq", "AMPN")]["scaling"] is None
    met = {t["target"].split(" ")[0] + t["target"][-12:]: t["met"] for t in report.targets(res)}
    assert all(met.values()), met
    res["forward"][0]["peak_rss_mb"] = 450.0
    assert [t["met"] for t in report.targets(res) if "RSS" in t["target"]] == [False]


def test_text_readme_and_chart(tmp_path):
    res = fake_results()
    text = report.text_table(res)
    assert "Test CPU" in text and "robuq W1.58A2" in text and "Targets" in text
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n")
    report.update_readme(str(readme), res, png="docs/performance.png", json_path="docs/performance.json")
    first = readme.read_text()
    assert first.startswith("# Title\n\nintro\n") and first.count(report.BEGIN) == 1
    res["date"] = "2026-02-02 00:00 UTC"
    report.update_readme(str(readme), res, png="docs/performance.png", json_path="docs/performance.json")
    second = readme.read_text()
    assert second.count(report.BEGIN) == 1 and "2026-02-02" in second and "2026-01-01" not in second
    png = tmp_path / "chart.png"
    report.chart(res, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_from_json(tmp_path, capsys):
    src = tmp_path / "r.json"
    src.write_text(json.dumps(fake_results()))
    readme = tmp_path / "README.md"
    assert cli.main(["--from-json", str(src), "--readme", str(readme)]) == 0
    assert "## Performance" in readme.read_text() and "robuq-bench" in capsys.readouterr().out


@pytest.mark.skipif(not _C.tier_available("avx2"), reason="the ceilings need an AVX2 CPU")
def test_ceilings_run():
    for kind in _C.ceiling_kinds():
        assert _C.measure_ceiling(kind, 1, 0.01) > 1e8
    with pytest.raises(ValueError, match="unknown ceiling"):
        _C.measure_ceiling("nope", 1, 0.01)


def test_tier_rows_targets_and_breakdown():
    """On an AVX-512 machine the engine rows come for the default tier and the forced avx2 tier: the report
    names the tier, judges avx512 >= 2x avx2 over the block linears and A2 >= 1.3x A4, and shows the
    per-part breakdown of each engine row."""
    res = fake_results()
    res["machine"]["tier"] = "avx512"
    res["linears"] = [r for r in res["linears"] if r["side"] == "torch"]
    for tier, secs in (("avx512", 0.004), ("avx2", 0.009)):
        for layer, n_in, n_out in (("attn.qkv", 1152, 3456), ("mlp.fc2", 4608, 1152)):
            res["linears"].append(
                {
                    "model": "DiT-XL/2",
                    "layer": layer,
                    "in": n_in,
                    "out": n_out,
                    "tokens": 512,
                    "bits": 2,
                    "threads": 2,
                    "side": "robuq",
                    "tier": tier,
                    "median_s": secs,
                    "gmacs": 512 * n_in * n_out / secs / 1e9,
                }
            )
    parts = {"linears": 0.3, "hadamard_quantize": 0.1, "attention": 0.2, "elementwise": 0.05}
    parts |= {"float_linears": 0.01, "other": 0.04, "total": 0.7}
    for r in res["forward"]:
        if r["runtime"] == "robuq":
            r |= {"tier": "avx512", "profile": parts, "min_s": r["median_s"], "max_s": r["median_s"] * 1.1}
    a4 = {**res["forward"][0], "config": "W1.58A4", "median_s": 1.2}
    res["forward"].append(a4)
    got = {t["target"]: t for t in report.targets(res)}
    lin = got["block linears A2 >= 2x the avx2 tier (DiT-XL/2 shapes, 2 threads)"]
    assert lin["met"] and lin["measured"].startswith("2.25x")
    step = got["DiT-XL/2 step at A2 >= 1.3x faster than at A4 (2 threads)"]
    assert not step["met"] and step["measured"].startswith("1.20x")
    text = report.text_table(res)
    assert "robuq W1.58A2 (avx512)" in text and "hadamard_quantize" in text and "vpermb" not in text
    assert "| avx2 |" not in text and " avx2 " in text
