"""Ratios, targets, the text table, the README performance section and the chart from robuq-bench results."""

from __future__ import annotations

import re
from pathlib import Path

BEGIN = "<!-- robuq-bench:begin -->"
END = "<!-- robuq-bench:end -->"

NAMES = {"torch": "PyTorch", "ort": "ORT", "ov": "OpenVINO"}
CONFIG_NAMES = {
    ("ort", "int8"): "int8 dynamic",
    ("ort", "int8-static"): "int8 static",
    ("ov", "default"): "default",
}


def label(runtime: str, config: str, tier: str | None = None) -> str:
    if runtime == "robuq":
        return f"robuq {config}" + (f" [{tier}]" if tier else "")
    return f"{NAMES.get(runtime, runtime)} {CONFIG_NAMES.get((runtime, config), config)}"


def _threads_all(res: dict) -> int:
    return res["settings"]["threads"]


def _key(r: dict) -> tuple:
    return (r["model"], r["runtime"], r["config"], r.get("tier"))


def forward_time(
    res: dict, model: str, runtime: str, config: str, threads: int, tier: str | None = None
) -> dict | None:
    """The forward row of (model, runtime, config) at `threads`; for the engine, of `tier` (default: the
    first tier measured, the machine's own)."""
    if runtime == "robuq" and tier is None:
        tiers = res["settings"].get("tiers") or [None]
        tier = tiers[0]
    for r in res["forward"]:
        if (r["model"], r["runtime"], r["config"], r["threads"]) == (model, runtime, config, threads):
            if runtime != "robuq" or r.get("tier") == tier:
                return r
    return None


def fastest_peer(res: dict, model: str) -> dict | None:
    """The fastest non-robuq row of a model at all threads (the runtime a user would pick instead)."""
    ta = _threads_all(res)
    peers = [
        r for r in res["forward"] if r["model"] == model and r["runtime"] != "robuq" and r["threads"] == ta
    ]
    return min(peers, key=lambda r: r["median_s"]) if peers else None


def forward_rows(res: dict) -> list[dict]:
    """One row per (model, runtime, config, tier) at all threads, with min / median / max and ratios."""
    ta = _threads_all(res)
    rows = []
    seen = set()
    for r in res["forward"]:
        if _key(r) in seen or r["threads"] != ta:
            continue
        seen.add(_key(r))
        times = r.get("times") or [r["median_s"]]
        row = {
            "model": r["model"],
            "runtime": r["runtime"],
            "config": r["config"],
            "tier": r.get("tier"),
            "label": label(r["runtime"], r["config"], r.get("tier")),
            "time": r["median_s"],
            "min": min(times),
            "max": max(times),
            "rss": r["peak_rss_mb"],
            "file": r["file_mb"],
            "profile": r.get("profile"),
        }
        t = forward_time(res, r["model"], "torch", "fp32", ta)
        row["vs_torch"] = t["median_s"] / r["median_s"] if t else None
        peer = fastest_peer(res, r["model"])
        row["vs_peer"] = peer["median_s"] / r["median_s"] if peer else None
        one = forward_time(res, r["model"], r["runtime"], r["config"], 1, r.get("tier"))
        row["scaling"] = one["median_s"] / r["median_s"] if one and ta > 1 else None
        row["time_1"] = one["median_s"] if one else None
        loads = [x.get("other_load") for x in (r, one) if x is not None and x.get("other_load") is not None]
        row["other"] = max(loads) if loads else None
        rows.append(row)
    return rows


def linear_rows(res: dict) -> list[dict]:
    rows = []
    torch = {(r["model"], r["layer"], r["threads"]): r for r in res["linears"] if r["side"] == "torch"}
    robuq = {(r["model"], r["layer"], r["threads"], r["bits"], r.get("tier")): r for r in res["linears"]}
    for r in res["linears"]:
        if r["side"] != "robuq":
            continue
        t = torch.get((r["model"], r["layer"], r["threads"]))
        a2 = robuq.get((r["model"], r["layer"], r["threads"], r["bits"], "avx2"))
        rows.append(
            {
                **r,
                "torch_gmacs": t["gmacs"] if t else None,
                "ratio": r["gmacs"] / t["gmacs"] if t else None,
                "vs_avx2": r["gmacs"] / a2["gmacs"] if a2 and r.get("tier") not in (None, "avx2") else None,
            }
        )
    return rows


def _target(text: str, measured: str, met: bool) -> dict:
    return {"target": text, "measured": measured, "met": met}


def targets(res: dict) -> list[dict]:
    """Issue 20's targets, judged on what was measured (the engine's first config and first tier)."""
    out = []
    ta = _threads_all(res)
    configs = res["settings"].get("configs") or []
    cfg = configs[0] if configs else None
    for model, goal in (("DiT-XL/2", 2.0), ("DiT-B/2", 1.5), ("DiT-S/2", 1.5)):
        eng = forward_time(res, model, "robuq", cfg, ta) if cfg else None
        peer = fastest_peer(res, model)
        if eng and peer:
            ratio = peer["median_s"] / eng["median_s"]
            out.append(
                _target(
                    f"{model} CFG step >= {goal:g}x faster than the fastest peer",
                    f"{ratio:.2f}x ({eng['median_s']:.3f} s vs {label(peer['runtime'], peer['config'])} "
                    f"{peer['median_s']:.3f} s)",
                    ratio >= goal,
                )
            )
    model = "DiT-XL/2"
    eng = forward_time(res, model, "robuq", cfg, ta) if cfg else None
    if eng:
        b = forward_time(res, model, "torch", "fp32", ta)
        if b:
            ratio = b["median_s"] / eng["median_s"]
            out.append(
                _target(f"{model} CFG step >= 5x faster than PyTorch fp32", f"{ratio:.2f}x", ratio >= 5.0)
            )
    first = (res["settings"].get("tiers") or [None])[0]
    lin = [
        r
        for r in linear_rows(res)
        if r["model"] == model and r["threads"] == ta and r["vs_avx2"] is not None and r.get("tier") == first
    ]
    if lin:
        worst = min(lin, key=lambda r: r["vs_avx2"])
        out.append(
            _target(
                f"block linears >= 2x the avx2 tier's G MAC/s ({model}, T = {worst['tokens']}, {ta} threads)",
                f"min {worst['vs_avx2']:.2f}x ({worst['layer']}, A{worst['bits']})",
                worst["vs_avx2"] >= 2.0,
            )
        )
    a2, a4 = (
        forward_time(res, model, "robuq", "W1.58A2", ta),
        forward_time(res, model, "robuq", "W1.58A4", ta),
    )
    if a2 and a4:
        ratio = a4["median_s"] / a2["median_s"]
        out.append(
            _target(
                f"{model} step at A2 >= 1.3x faster than at A4",
                f"{ratio:.2f}x ({a2['median_s']:.3f} s vs {a4['median_s']:.3f} s)",
                ratio >= 1.3,
            )
        )
    if eng:
        one = forward_time(res, model, "robuq", cfg, 1)
        if one and ta > 1:
            sc = one["median_s"] / eng["median_s"]
            out.append(
                _target(
                    f"{ta} threads >= 1.8x faster than 1 ({model}, {cfg})",
                    f"{sc:.2f}x ({one['median_s']:.3f} s -> {eng['median_s']:.3f} s)",
                    sc >= 1.8,
                )
            )
        times = eng.get("times") or []
        if len(times) >= 3:
            spread = max(times) / min(times) - 1
            out.append(
                _target(
                    f"{ta}-thread max within 15 % of its min ({model}, {cfg}, {len(times)} runs)",
                    f"+{100 * spread:.1f} % ({min(times):.3f} .. {max(times):.3f} s)",
                    spread <= 0.15,
                )
            )
        out.append(
            _target(
                f"engine peak RSS {model} <= 400 MB",
                f"{eng['peak_rss_mb']:.0f} MB ({cfg}, {ta} threads)",
                eng["peak_rss_mb"] <= 400,
            )
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
    feats = m.get("vector") or m["features"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("torch", "onnxruntime", "openvino", "nncf") if m.get(k))
    return (
        f"{m['cpu']}, {m['cores']} cores ({', '.join(feats)}), {m.get('memory_gb', '?')} GB, "
        f"{m['os']}; {res['date']}{load}; robuq {m['robuq']} ({m.get('git') or 'no git'}), {versions}"
    )


def sections(res: dict, markdown: bool) -> list[tuple[str, str]]:
    ta = _threads_all(res)
    s = res["settings"]
    out = []
    rows = []
    for r in forward_rows(res):
        rows.append(
            [r["model"], r["label"], f"{r['time']:.3f}", f"{r['min']:.3f}", f"{r['max']:.3f}"]
            + [_f(r["vs_torch"], ".2f"), _f(r["vs_peer"], ".2f")]
            + [_f(r["time_1"], ".3f"), _f(r["scaling"], ".2f"), f"{r['rss']:.0f}", f"{r['file']:.1f}"]
            + [_f(None if r["other"] is None else 100 * r["other"], ".0f")]
        )
    if rows:
        head = [
            "model",
            "runtime",
            f"median {ta}T (s)",
            "min",
            "max",
            "x vs PyTorch fp32",
            "x vs fastest peer",
        ]
        head += ["time 1T (s)", f"1T/{ta}T", "peak RSS (MB)", "file (MB)", "others' CPU %"]
        models = list(dict.fromkeys(r["model"] for r in res["forward"]))
        peers = []
        for m in models:
            p = fastest_peer(res, m)
            if p:
                peers.append(f"{m}: {label(p['runtime'], p['config'])} {p['median_s']:.3f} s")
        body = _table(head, rows, markdown)
        if peers:
            body += "\n\nFastest peer: " + "; ".join(peers) + "."
        skipped = res.get("skipped") or []
        if skipped:
            body += (
                "\n\nNot measured: "
                + "; ".join(
                    f"{x['baseline']}{' (' + x['model'] + ')' if x.get('model') else ''}: {x['reason']}"
                    for x in skipped
                )
                + "."
            )
        out.append(
            (
                f"Whole forward, batch 2 (one CFG step), median / min / max of {s['repeats']} after "
                f"{s['warmup']} warm-up",
                body,
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
                _f(r["vs_avx2"], ".2f"),
            ]
        )
    if rows:
        head = ["model", "layer", "in->out", "bits", "tier", "threads", "robuq G MAC/s", "torch G MAC/s"]
        head += ["x torch", "x avx2 tier"]
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
            rows.append(
                [r["model"], r["label"]] + [f"{p.get(k, 0.0):.3f}" for k in parts] + [f"{p['total']:.3f}"]
            )
    if rows:
        out.append(
            (
                f"Where a forward's time goes (seconds, one profiled forward, {ta} threads; Engine.profile)",
                _table(["model", "runtime"] + list(parts) + ["total"], rows, markdown),
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
        "tl4_step": "4-weight vpermi2b step + fold (multiply-adds; rejected)",
        "fma_add_zmm": "fp32 fma + add zmm interleaved (additions; K x K step)",
        "xor_add_zmm": "fp32 xor + add zmm (additions; old K x K step)",
        "amx_tdpbusd": "AMX tdpbusd, 4 tiles (u8 x s8 multiply-adds)",
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


# The README keeps one section per machine kind we run on: the main one (between BEGIN and END) for CPUs
# with the avx512 tier, and one for AVX2-only CPUs, so a run on one kind never erases the other's figures.
AVX2_BEGIN = "<!-- robuq-bench:avx2-machine:begin -->"
AVX2_END = "<!-- robuq-bench:avx2-machine:end -->"
AMX_BEGIN = "<!-- robuq-bench:amx-machine:begin -->"
AMX_END = "<!-- robuq-bench:amx-machine:end -->"


def machine_kind(res: dict) -> str:
    """'amx' when the run measured the engine's amx tier (an Intel CPU with AMX-INT8), 'avx512' when it
    measured the avx512 tier (an AVX-512 CPU without AMX), else 'avx2'."""
    tiers = res["settings"].get("tiers")
    if tiers is not None:
        return "amx" if "amx" in tiers else "avx512" if "avx512" in tiers else "avx2"
    feats = set(res["machine"].get("vector") or res["machine"].get("features") or [])
    if "amx_int8" in feats:
        return "amx"
    return "avx512" if {"avx512f", "avx512bw", "avx512vl", "avx512vbmi"} <= feats else "avx2"


def _markers(kind: str) -> tuple[str, str]:
    return {"avx2": (AVX2_BEGIN, AVX2_END), "amx": (AMX_BEGIN, AMX_END)}.get(kind, (BEGIN, END))


def readme_section(res: dict, png: str | None = None, json_path: str | None = None) -> str:
    s = res["settings"]
    kind = machine_kind(res)
    if kind == "avx2":
        begin, end, sub = AVX2_BEGIN, AVX2_END, "####"
        heading = f"### Machine kind: AVX2 + FMA only (no AVX-512), {res['date'][:10]}"
    elif kind == "amx":
        begin, end, sub = AMX_BEGIN, AMX_END, "####"
        heading = f"### Machine kind: Intel Xeon with AVX-512 and AMX (amx tier), {res['date'][:10]}"
    else:
        begin, end, heading, sub = BEGIN, END, "## Performance", "###"
    lines = [begin, heading, ""]
    lines.append(
        f"Measured by `robuq-bench` in one run on: {machine_line(res)}. Latent DiT at 256x256 (256 "
        f"tokens); the engine runs random `.rq` files from `robuq-export --random` (low-rank rank "
        f"{s['rank']}) on its kernel tier (in brackets); every peer runs the same random weights: PyTorch "
        "eager (fp32, and bf16 where the CPU has AVX512_BF16), onnxruntime on our fp32 ONNX export and its "
        "int8 versions (dynamic; static QDQ with per-channel weights and u8 activations calibrated on "
        f"{s.get('calib', 8)} random inputs), OpenVINO on the same ONNX at its default precision (bf16 on "
        "AVX512_BF16 CPUs), at f32, and int8 after NNCF post-training quantization (same calibration "
        "inputs). \"x vs fastest peer\" divides the fastest peer's time by the row's. Peak RSS is the "
        'VmHWM of a process that only loads and runs that one model. "others\' CPU %": the share of the '
        "machine that other processes used during the timed runs (median; a run during which they took "
        "more than 15% is repeated, up to twice the repeat count)."
    )
    for title, body in sections(res, markdown=True):
        lines += ["", f"{sub} {title}", "", body]
    if any(not t["met"] for t in targets(res)):
        lines += [
            "",
            "Targets marked NO: the measured gap, the profile behind it and what limits each target on this "
            'machine kind are in docs/performance.md ("What limits it").',
        ]
    if png:
        lines += ["", f"![whole-forward times]({png})"]
    src = json_path or "results.json"
    lines += [
        "",
        f"Regenerate: `robuq-bench --json {src}{' --png ' + png if png else ''} --readme README.md` "
        f"(measures again; `--quick`, `--models S/2` to limit it) or `robuq-bench --from-json {src} "
        "--readme README.md` (this section from the saved results).",
        end,
    ]
    return "\n".join(lines)


def update_readme(path: str, res: dict, png: str | None = None, json_path: str | None = None) -> None:
    """Replaces the text between the robuq-bench markers of the measured machine's kind (the main section for
    AVX-512 CPUs without AMX, the amx-machine one for Intel CPUs with AMX, the avx2-machine one for AVX2-only
    CPUs); a missing section goes right after the main one (or at the end)."""
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    section = readme_section(res, png=png, json_path=json_path)
    begin, end = _markers(machine_kind(res))
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    elif begin != BEGIN and END in text:
        i = text.index(END) + len(END)
        text = text[:i] + "\n\n" + section + text[i:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    p.write_text(text)


# ----------------------------------------------------------------------------------------------- chart
COLORS = {"torch": (160, 160, 160), "ort": (115, 115, 115), "ov": (70, 70, 70), "robuq": (40, 110, 200)}


def chart(res: dict, path: str) -> None:
    """Horizontal bars of the all-thread whole-forward times, one group per model, each bar labelled with its
    time and its speed-up over PyTorch fp32 (PIL; no matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = forward_rows(res)
    models = list(dict.fromkeys(r["model"] for r in rows))
    font = ImageFont.load_default()
    row_h, gap, left, width, right = 20, 28, 230, 1000, 230
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
            key = r["runtime"] if r["runtime"] in COLORS else "ort"
            w = max(1, int(width * r["time"] / slowest))
            d.rectangle([left, y, left + w, y + row_h - 4], fill=COLORS[key])
            d.text((20, y + 3), r["label"], fill="black", font=font)
            vs = r.get("vs_torch")
            txt = f"{r['time']:.3f} s" + (
                f"  ({vs:.2f}x vs PyTorch)" if vs and r["runtime"] != "torch" else ""
            )
            d.text((left + w + 6, y + 3), txt, fill="black", font=font)
            y += row_h
        y += 8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
