"""robuq-bench's report side on synthetic results (no measurements): ratios, targets, text table, README
section (replaced in place between its markers), the PIL chart, and the ceilings on this CPU."""

import json

import pytest

from robuq import _C
from robuq.bench import cli, report


def fake_results():
    fwd = []
    for runtime, config, tier, t2, t1, rss in (
        ("robuq", "W1.58A2", "avx512", 0.30, 0.57, 350.0),
        ("robuq", "W1.58A4", "avx512", 0.42, None, 351.0),
        ("robuq", "W1.58A2", "avx2", 0.90, None, 352.0),
        ("torch", "fp32", None, 3.5, 6.8, 3100.0),
        ("ort", "fp32", None, 3.2, None, 2900.0),
        ("ort", "int8", None, 1.0, None, 900.0),
        ("ov", "int8", None, 0.7, None, 800.0),
    ):
        for threads, t in ((2, t2), (1, t1)):
            if t is not None:
                row = {
                    "model": "DiT-XL/2",
                    "runtime": runtime,
                    "config": config,
                    "threads": threads,
                    "median_s": t,
                    "times": [t * 0.97, t, t * 1.05],
                    "load_s": 1.0,
                    "peak_rss_mb": rss,
                    "file_mb": 260.0,
                }
                if tier:
                    row["tier"] = tier
                fwd.append(row)
    lin = []
    for side, tier, g in (("robuq", "avx512", 800.0), ("robuq", "avx2", 380.0), ("torch", None, 85.0)):
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
                    "tier": tier,
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
            "features": ["avx2", "avx512f"],
            "vector": ["avx2", "avx512f", "avx512_vnni"],
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
            "configs": ["W1.58A2", "W1.58A4"],
            "tiers": ["avx512", "avx2"],
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
    rows = {r["label"]: r for r in report.forward_rows(res)}
    a2 = rows["robuq W1.58A2 [avx512]"]
    assert a2["vs_torch"] == pytest.approx(3.5 / 0.3) and a2["vs_peer"] == pytest.approx(0.7 / 0.3)
    assert a2["scaling"] == pytest.approx(1.9) and rows["robuq W1.58A4 [avx512]"]["scaling"] is None
    assert (a2["min"], a2["max"]) == (pytest.approx(0.291), pytest.approx(0.315))
    assert report.fastest_peer(res, "DiT-XL/2")["runtime"] == "ov"
    assert rows["robuq W1.58A2 [avx2]"]["vs_peer"] == pytest.approx(0.7 / 0.9)
    tg = {t["target"]: t for t in report.targets(res)}
    assert all(t["met"] for t in tg.values()), tg
    assert any("fastest peer" in k for k in tg) and any("avx2 tier" in k for k in tg)
    assert any("A2 >= 1.3x" in k for k in tg) and any("within 15 %" in k for k in tg)
    lin = [r for r in report.linear_rows(res) if r["tier"] == "avx512"]
    assert lin and all(r["vs_avx2"] == pytest.approx(800 / 380) for r in lin)
    res["forward"][0]["peak_rss_mb"] = 450.0
    assert [t["met"] for t in report.targets(res) if "RSS" in t["target"]] == [False]
    res["forward"][0]["times"] = [0.2, 0.3, 0.4]
    assert [t["met"] for t in report.targets(res) if "within 15 %" in t["target"]] == [False]
    # the README section points to the measured limits only when a target is unmet
    assert "What limits it" in report.readme_section(res)
    assert "What limits it" not in report.readme_section(fake_results())


def test_text_readme_and_chart(tmp_path):
    res = fake_results()
    text = report.text_table(res)
    assert "Test CPU" in text and "robuq W1.58A2 [avx512]" in text and "Targets" in text
    assert "Fastest peer: DiT-XL/2: OpenVINO int8 0.700 s" in text and "avx512_vnni" in text
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n")
    report.update_readme(str(readme), res, png="docs/performance.png", json_path="docs/performance.json")
    first = readme.read_text()
    assert first.startswith("# Title\n\nintro\n") and first.count(report.BEGIN) == 1
    res["date"] = "2026-02-02 00:00 UTC"
    report.update_readme(str(readme), res, png="docs/performance.png", json_path="docs/performance.json")
    second = readme.read_text()
    assert second.count(report.BEGIN) == 1 and "2026-02-02" in second and "2026-01-01" not in second
    # A run on an AVX2-only machine rewrites only that machine kind's section, and leaves the main one.
    res["settings"]["tiers"] = ["avx2"]
    res["date"] = "2026-03-03 00:00 UTC"
    report.update_readme(str(readme), res)
    third = readme.read_text()
    assert third.startswith(second.rstrip("\n")) and third.count(report.AVX2_BEGIN) == 1
    assert "### Machine kind: AVX2 + FMA only (no AVX-512), 2026-03-03" in third and "#### Targets" in third
    res["date"] = "2026-04-04 00:00 UTC"
    report.update_readme(str(readme), res)
    fourth = readme.read_text()
    assert fourth.count(report.AVX2_BEGIN) == 1 and "2026-04-04" in fourth and "2026-03-03" not in fourth
    assert fourth.split(report.AVX2_BEGIN)[0] == third.split(report.AVX2_BEGIN)[0]
    # An AMX machine's run gets its own section, right after the main one, and touches no other.
    res["settings"]["tiers"] = ["amx", "avx512", "avx2"]
    res["date"] = "2026-05-05 00:00 UTC"
    report.update_readme(str(readme), res)
    fifth = readme.read_text()
    assert fifth.count(report.AMX_BEGIN) == 1 and "AMX (amx tier), 2026-05-05" in fifth
    assert fifth.index(report.END) < fifth.index(report.AMX_BEGIN) < fifth.index(report.AVX2_BEGIN)
    main_part = fourth.split(report.END)[0] + report.END
    assert fifth.split(report.AMX_BEGIN)[0].rstrip("\n") == main_part
    assert fifth.split(report.AMX_END)[1] == fourth.split(report.END)[1]
    png = tmp_path / "chart.png"
    report.chart(res, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_names_exit_2_before_measuring(tmp_path, capsys):
    """Unknown models, configs, baselines, parts or tiers: one error line naming the known ones, exit 2."""
    from robuq.bench.cli import main

    for argv, want in [
        (["--baselines", "torch-fp32"], "--baselines: unknown torch-fp32 (known: torch, torch-bf16, ort"),
        (["--models", "S/9"], "--models: unknown DiT-S/9"),
        (["--configs", "W1.58A5"], "--configs: unknown W1.58A5"),
        (["--skip", "ceiling"], "--skip: unknown ceiling"),
        (["--tiers", "neon"], "--tiers: unknown neon"),
    ]:
        assert main([*argv, "--workdir", str(tmp_path / "w")]) == 2, argv
        assert want in capsys.readouterr().err, argv
    assert not (tmp_path / "w").exists()


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


def test_tier_rows_and_breakdown():
    """Engine rows carry their tier in the label, and each engine row's per-part breakdown (Engine.profile)
    is shown."""
    res = fake_results()
    parts = {"linears": 0.3, "hadamard_quantize": 0.1, "attention": 0.2, "elementwise": 0.05}
    parts |= {"float_linears": 0.01, "other": 0.04, "total": 0.7}
    for r in res["forward"]:
        if r["runtime"] == "robuq":
            r["profile"] = parts
    text = report.text_table(res)
    assert "robuq W1.58A2 [avx512]" in text and "robuq W1.58A2 [avx2]" in text
    assert "Where a forward's time goes" in text and "hadamard_quantize" in text
    lin = {t["target"]: t for t in report.targets(res)}
    assert any(k.startswith("block linears >= 2x the avx2 tier") and v["measured"].startswith("min 2.11x")
               for k, v in lin.items())  # fmt: skip
