"""Ratios, targets, the text table, the README performance section and the chart from robuq-bench results."""

from __future__ import annotations

import re
from pathlib import Path

BEGIN = "<!-- robuq-bench:begin -->"
END = "<!-- robuq-bench:end -->"

BASELINES = (("torch", "fp32", "PyTorch fp32"), ("ort", "fp32", "ORT fp32"), ("ort", "int8", "ORT int8"))


def label(runtime: str, config: str) -> str:
    if runtime == "robuq":
        return f"robuq {config}"
    return {"torch": "PyTorch", "ort": "ORT"}[runtime] + f" {config}"


def _threads_all(res: dict) -> int:
    return res["settings"]["threads"]


def forward_time(res: dict, model: str, runtime: str, config: str, threads: int) -> dict | None:
    for r in res["forward"]:
        if (r["model"], r["runtime"], r["config"], r["threads"]) == (model, runtime, config, threads):
            return r
    return None


def forward_rows(res: dict) -> list[dict]:
    """One row per (model, runtime, config) at all threads, with its ratios."""
    ta = _threads_all(res)
    rows = []
    seen = set()
    for r in res["forward"]:
        key = (r["model"], r["runtime"], r["config"])
        if key in seen or r["threads"] != ta:
            continue
        seen.add(key)
        row = {
            "model": r["model"],
            "runtime": r["runtime"],
            "config": r["config"],
            "time": r["median_s"],
            "rss": r["peak_rss_mb"],
            "file": r["file_mb"],
            "other": r.get("other_load"),
            "tier": r.get("tier"),
            "profile": r.get("profile"),
            "min": r.get("min_s"),
            "max": r.get("max_s"),
        }
        for rt, cf, name in BASELINES:
            b = forward_time(res, r["model"], rt, cf, ta)
            row[name] = b["median_s"] / r["median_s"] if b else None
        one = forward_time(res, r["model"], r["runtime"], r["config"], 1)
        row["scaling"] = one["median_s"] / r["median_s"] if one and ta > 1 else None
        row["time_1"] = one["median_s"] if one else None
        loads = [x.get("other_load") for x in (r, one) if x is not None and x.get("other_load") is not None]
        row["other"] = max(loads) if loads else None
        rows.append(row)
    return rows


def linear_rows(res: dict) -> list[dict]:
    rows = []
    torch = {(r["model"], r["layer"], r["threads"]): r for r in res["linears"] if r["side"] == "torch"}
    for r in res["linears"]:
        if r["side"] != "robuq":
            continue
        t = torch.get((r["model"], r["layer"], r["threads"]))
        rows.append(
            {**r, "torch_gmacs": t["gmacs"] if t else None, "ratio": r["gmacs"] / t["gmacs"] if t else None}
        )
    return rows


def _default_tier(res: dict, tier: str | None) -> bool:
    """Rows of the engine's default tier (older results have no tier: they count as default)."""
    return tier is None or tier == res["machine"].get("tier", tier)


def tier_speedups(res: dict, model: str, threads: int) -> dict:
    """bits -> (G MAC/s of the machine's tier, of the avx2 tier) over the block linears of `model`, when the
    results hold both tiers (an AVX-512 machine)."""
    tier = res["machine"].get("tier")
    sums: dict = {}
    for r in res["linears"]:
        if r["side"] != "robuq" or r["model"] != model or r["threads"] != threads or not r.get("tier"):
            continue
        macs = r["tokens"] * r["in"] * r["out"]
        m, t = sums.setdefault((r["tier"], r["bits"]), [0.0, 0.0])
        sums[(r["tier"], r["bits"])] = [m + macs, t + r["median_s"]]
    out = {}
    for (tr, bits), (m, t) in sums.items():
        if tr == tier and tier != "avx2" and ("avx2", bits) in sums:
            m2, t2 = sums[("avx2", bits)]
            out[bits] = (m / t / 1e9, m2 / t2 / 1e9)
    return out


def targets(res: dict) -> list[dict]:
    """The issue's targets, judged on DiT-XL/2 (the engine's first config) when it was measured."""
    out = []
    ta = _threads_all(res)
    model = "DiT-XL/2"
    lin = [
        r
        for r in linear_rows(res)
        if r["model"] == model
        and r["threads"] == ta
        and r["ratio"] is not None
        and _default_tier(res, r.get("tier"))
    ]
    if lin:
        worst = min(lin, key=lambda r: r["ratio"])
        out.append(
            {
                "target": f"block linears >= 3x torch.matmul fp32 ({model} shapes, {ta} threads)",
                "measured": f"min {worst['ratio']:.2f}x ({worst['layer']}, A{worst['bits']})",
                "met": worst["ratio"] >= 3.0,
            }
        )
    for bits, (g, g2) in sorted(tier_speedups(res, model, ta).items()):
        out.append(
            {
                "target": f"block linears A{bits} >= 2x the avx2 tier ({model} shapes, {ta} threads)",
                "measured": f"{g / g2:.2f}x ({g:.0f} vs {g2:.0f} G MAC/s, {res['machine'].get('tier')})",
                "met": g >= 2.0 * g2,
            }
        )
    a2 = forward_time(res, model, "robuq", "W1.58A2", ta)
    a4 = forward_time(res, model, "robuq", "W1.58A4", ta)
    if a2 and a4:
        r = a4["median_s"] / a2["median_s"]
        out.append(
            {
                "target": f"{model} step at A2 >= 1.3x faster than at A4 ({ta} threads)",
                "measured": f"{r:.2f}x ({a2['median_s']:.3f} s vs {a4['median_s']:.3f} s)",
                "met": r >= 1.3,
            }
        )
    configs = res["settings"].get("configs") or []
    if configs:
        cfg = configs[0]
        eng = forward_time(res, model, "robuq", cfg, ta)
        if eng:
            for rt, cf, name, goal in (
                ("torch", "fp32", "PyTorch fp32", 3.0),
                ("ort", "int8", "ORT int8", 1.5),
            ):
                b = forward_time(res, model, rt, cf, ta)
                if b:
                    ratio = b["median_s"] / eng["median_s"]
                    out.append(
                        {
                            "target": f"{model} CFG step (batch 2) >= {goal:g}x faster than {name}",
                            "measured": f"{ratio:.2f}x ({eng['median_s']:.3f} s vs "
                            f"{b['median_s']:.3f} s, {cfg})",
                            "met": ratio >= goal,
                        }
                    )
            one = forward_time(res, model, "robuq", cfg, 1)
            if one and ta > 1:
                s = one["median_s"] / eng["median_s"]
                out.append(
                    {
                        "target": f"{ta} threads >= 1.8x faster than 1 ({model}, {cfg})",
                        "measured": f"{s:.2f}x ({one['median_s']:.3f} s -> {eng['median_s']:.3f} s)",
                        "met": s >= 1.8,
                    }
                )
            out.append(
                {
                    "target": f"engine peak RSS {model} <= 400 MB",
                    "measured": f"{eng['peak_rss_mb']:.0f} MB ({cfg}, {ta} threads)",
                    "met": eng["peak_rss_mb"] <= 400,
                }
            )
    return out


def _f(v, fmt: str, none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def fmt(r):
        return "  ".join(
            str(x).rjust(n) if i else str(x).ljust(n) for i, (x, n) in enumerate(zip(r, w, strict=True))
        )

    return "\n".join([fmt(header), "  ".join("-" * n for n in w)] + [fmt(r) for r in rows])


def machine_line(res: dict) -> str:
    m = res["machine"]
    lb, la = res.get("load_before"), res.get("load_after")
    load = ""
    if lb:
        load = f"; load average {lb[0]:.2f} before the run" + (f", {la[0]:.2f} after" if la else "")
    return (
        f"{m['cpu']}, {m['cores']} cores ({', '.join(m['features'])}), {m.get('memory_gb', '?')} GB, "
        f"{m['os']}; {res['date']}{load}; robuq {m['robuq']} ({m.get('git') or 'no git'}), torch "
        f"{m.get('torch')}, onnxruntime {m.get('onnxruntime')}"
    )


def sections(res: dict, markdown: bool) -> list[tuple[str, str]]:
    ta = _threads_all(res)
    s = res["settings"]
    out = []
    rows = []
    for r in forward_rows(res):
        name = label(r["runtime"], r["config"])
        if r["tier"] and "@" not in r["config"]:
            name += f" ({r['tier']})"
        spread = f"{r['time']:.3f}"
        if r["min"] is not None and r["max"] is not None:
            spread += f" [{r['min']:.3f}-{r['max']:.3f}]"
        rows.append(
            [r["model"], name, spread]
            + [_f(r[name], ".2f") for _, _, name in BASELINES]
            + [_f(r["time_1"], ".3f"), _f(r["scaling"], ".2f"), f"{r['rss']:.0f}", f"{r['file']:.1f}"]
            + [_f(None if r["other"] is None else 100 * r["other"], ".0f")]
        )
    if rows:
        head = ["model", "runtime", f"time {ta}T (s) [min-max]"] + [f"x vs {n}" for _, _, n in BASELINES]
        head += ["time 1T (s)", f"1T/{ta}T", "peak RSS (MB)", "file (MB)", "others' CPU %"]
        out.append(
            (
                f"Whole forward, batch 2 (one CFG step), median of {s['repeats']} after "
                f"{s['warmup']} warm-up",
                _table(head, rows, markdown),
            )
        )
    rows = []
    for r in linear_rows(res):
        rows.append(
            [
                r["model"],
                r["layer"],
                f"{r['in']}->{r['out']}",
                f"A{r['bits']}",
                r.get("tier") or "-",
                str(r["threads"]),
                f"{r['gmacs']:.0f}",
                _f(r["torch_gmacs"], ".0f"),
                _f(r["ratio"], ".2f"),
            ]
        )
    if rows:
        head = ["model", "layer", "in->out", "bits", "tier", "threads"]
        head += ["robuq G MAC/s", "torch G MAC/s", "ratio"]
        out.append(
            (
                f"Block linears, T = {s['tokens']} tokens: robuq._C.QLinear (W1.58, full Hadamard + "
                "per-token quantize + GEMM + epilogue) vs torch.matmul fp32",
                _table(head, rows, markdown),
            )
        )
    parts = ("linears", "hadamard_quantize", "attention", "elementwise", "float_linears", "other")
    rows = []
    for r in forward_rows(res):
        p = r.get("profile")
        if r["runtime"] == "robuq" and p:
            name = r["config"] + (f" ({r['tier']})" if r["tier"] and "@" not in r["config"] else "")
            rows.append([r["model"], name] + [f"{p.get(k, 0.0):.3f}" for k in parts] + [f"{p['total']:.3f}"])
    if rows:
        out.append(
            (
                f"Where a forward's time goes (seconds, one profiled forward, {ta} threads; Engine.profile)",
                _table(["model", "config"] + list(parts) + ["total"], rows, markdown),
            )
        )
    rows = []
    names = {
        "fma_f32": "fp32 FMA (multiply-adds)",
        "maddubs": "int8 vpmaddubsw (u8 x s8 multiply-adds)",
        "pshufb": "vpshufb 16-entry lookups",
        "vpermb": "vpermb 64-entry lookups (zmm)",
        "vpermi2b": "vpermi2b 128-entry lookups (zmm)",
        "vpdpbusd_zmm": "vpdpbusd zmm (u8 x s8 multiply-adds)",
        "vpdpbusd_ymm": "vpdpbusd ymm (u8 x s8 multiply-adds)",
        "pshufb_zmm": "vpshufb zmm 16-entry lookups",
        "tl3_step": "ternary micro-kernel step (multiply-adds)",
    }
    by = {(c["kind"], c["threads"]): c["gops"] for c in res["ceilings"]}
    for kind in dict.fromkeys(c["kind"] for c in res["ceilings"]):
        rows.append([names.get(kind, kind), f"{by.get((kind, 1), 0):.0f}", _f(by.get((kind, ta)), ".0f")])
    if rows:
        out.append(
            (
                "Instruction ceilings (G per second)",
                _table(["loop", "1 core", f"{ta} threads"], rows, markdown),
            )
        )
    tg = targets(res)
    if tg:
        rows = [[t["target"], t["measured"], "yes" if t["met"] else "NO"] for t in tg]
        out.append(("Targets", _table(["target", "measured", "met"], rows, markdown)))
    return out


def text_table(res: dict) -> str:
    parts = [f"robuq-bench: {machine_line(res)}"]
    for title, body in sections(res, markdown=False):
        parts += ["", title, body]
    return "\n".join(parts)


def readme_section(res: dict, png: str | None = None, json_path: str | None = None) -> str:
    s = res["settings"]
    lines = [BEGIN, "## Performance", ""]
    lines.append(
        f"Measured by `robuq-bench` in one run on: {machine_line(res)}. Latent DiT at 256x256 (256 "
        f"tokens); the engine runs random `.rq` files from `robuq-export --random` (low-rank rank "
        f"{s['rank']}); PyTorch is fp32 eager and onnxruntime runs the fp32 ONNX export of the same "
        "weights and its `quantize_dynamic` int8 version. Peak RSS is the VmHWM of a process that only "
        'loads and runs that one model. "others\' CPU %": the share of the machine that other processes '
        "used during the timed runs (median; a run during which they took more than 15% is repeated, up to "
        "twice the repeat count)."
    )
    for title, body in sections(res, markdown=True):
        lines += ["", f"### {title}", "", body]
    if png:
        lines += ["", f"![whole-forward times]({png})"]
    src = json_path or "results.json"
    lines += [
        "",
        f"Regenerate: `robuq-bench --json {src}{' --png ' + png if png else ''} --readme README.md` "
        f"(measures again; `--quick`, `--models S/2` to limit it) or `robuq-bench --from-json {src} "
        "--readme README.md` (this section from the saved results).",
        END,
    ]
    return "\n".join(lines)


def update_readme(path: str, res: dict, png: str | None = None, json_path: str | None = None) -> None:
    """Replaces the text between the robuq-bench markers (appends the section when there are none)."""
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    section = readme_section(res, png=png, json_path=json_path)
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    p.write_text(text)


# ----------------------------------------------------------------------------------------------- chart
COLORS = {"torch": (150, 150, 150), "ort": (110, 110, 110), "ort-int8": (70, 70, 70), "robuq": (40, 110, 200)}


def chart(res: dict, path: str) -> None:
    """Horizontal bars of the all-thread whole-forward times, one group per model, each bar labelled with its
    time and its speed-up over PyTorch fp32 (PIL; no matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = forward_rows(res)
    models = list(dict.fromkeys(r["model"] for r in rows))
    font = ImageFont.load_default()
    row_h, gap, left, width, right = 20, 28, 170, 1000, 230
    height = 50 + sum(gap + row_h * sum(1 for r in rows if r["model"] == m) for m in models) + 20
    img = Image.new("RGB", (left + width + right, height), "white")
    d = ImageDraw.Draw(img)
    d.text(
        (10, 10),
        f"Whole forward, batch 2, {_threads_all(res)} threads ({res['machine']['cpu']}, "
        f"{res['date']}): seconds, bar length relative to the model's slowest",
        fill="black",
        font=font,
    )
    y = 40
    for m in models:
        group = [r for r in rows if r["model"] == m]
        slowest = max(r["time"] for r in group)
        d.text((10, y + 6), m, fill="black", font=font)
        y += gap - 8
        for r in group:
            key = "ort-int8" if (r["runtime"], r["config"]) == ("ort", "int8") else r["runtime"]
            w = max(1, int(width * r["time"] / slowest))
            d.rectangle([left, y, left + w, y + row_h - 4], fill=COLORS[key])
            d.text((20, y + 3), label(r["runtime"], r["config"]), fill="black", font=font)
            vs = r.get("PyTorch fp32")
            txt = f"{r['time']:.3f} s" + (
                f"  ({vs:.2f}x vs PyTorch)" if vs and r["runtime"] != "torch" else ""
            )
            d.text((left + w + 6, y + 3), txt, fill="black", font=font)
            y += row_h
        y += 8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
