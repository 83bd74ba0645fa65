"""Write a run's results: results.json, table.md (the README's performance section) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def write(results: dict[str, Any], out: Path, *, readme: Path | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    written[0].write_text(json.dumps(results, indent=1, default=float) + "\n")
    written += plot(results, out)
    table = markdown(results, plots=[p.name for p in written[1:]], plot_dir=".")  # beside table.md
    (out / "table.md").write_text(table)
    written.append(out / "table.md")
    if readme is not None:
        brief = markdown(results, plots=[], brief=True) + (
            f"\nThis run in full (every phase it ran, the CPU split, the plots): "
            f"[{_relative(out, readme)}/table.md]({_relative(out, readme)}/table.md).\n"
        )
        if replace_section(readme, brief):
            written.append(readme)
        else:
            print(f"{readme}: missing, or without the {START} ... {END} markers; left unchanged")
    return written


def _relative(out: Path, readme: Path | None) -> str:
    base = readme.resolve().parent if readme is not None else Path.cwd()
    try:
        return str(out.resolve().relative_to(base))
    except ValueError:
        return str(out.resolve())


def replace_section(path: Path, content: str) -> bool:
    """Replace what lies between the bench markers in `path`; False (file untouched) without them."""
    if not path.is_file():
        return False
    text = path.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return False
    path.write_text(text[: start + len(START)] + "\n" + content.strip("\n") + "\n" + text[end:])
    return True


def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _processes(settings: dict[str, Any]) -> str:
    """The HTTP processes of seqserve and the floor, as recorded (runs before 2026-11-29 22:00 had one, unrecorded)."""
    count = settings.get("http_workers")
    if count is None:
        return ""
    plural = "" if count == 1 else "es"
    return f" seqserve and the floor: {count} HTTP process{plural} ({settings.get('http_workers_reason', '')})."


def markdown(results: dict[str, Any], *, plots: list[str], plot_dir: str = "docs/bench", brief: bool = False) -> str:
    """The run as Markdown; ``brief``: without the open loop, the request encodings and the CPU split (the
    README's section, which links the whole table)."""
    meta, summary = results["meta"], results.get("summary") or {}
    machine, versions, settings = meta["machine"], meta["versions"], meta["settings"]
    lines = [
        f"Recorded {meta['date']} on {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, no GPU; "
        f"seqserve {versions['seqserve']}, Python {versions['python']}, ONNX Runtime {versions['onnxruntime']}, "
        f"NumPy {versions['numpy']}. Load average (1, 5, 15 min) at start {meta['loadavg_at_start']}, "
        f"at end {meta['loadavg_at_end']}.",
        "",
        f"Reference model: 2-layer BiLSTM, 32 features, hidden 128, 5 classes (seed 0); one sequence per request, "
        f"lengths uniform in [10, 200] (seeded); limits `max_batch_size={settings['max_batch_size']}`, "
        f"`max_batch_tokens={settings['max_batch_tokens']}`. Phases of {settings['phase_seconds']:g} s after "
        f"{settings['warmup_seconds']:g} s of warm-up; closed loop best of {settings['rounds']} rounds."
        + _processes(settings),
        "",
    ]
    if not summary:
        return "\n".join(lines)
    lines += [
        f"- **ceiling** (same graph and runtime in-process, no HTTP, the best of: all sequences sorted by length "
        f"into the largest batches the limits allow, or cut 64 at a time by seqserve's planner; each run both as "
        f"one single-threaded batch per core and as one batch on all cores, the faster kept): "
        f"**{_f(summary['ceiling_seq_s'])} seq/s**; cut 64 at a time (what 64 requests in flight allow): "
        f"{_f(summary['ceiling_window_seq_s'])} seq/s; batch 1: {_f(summary['ceiling_single_seq_s'])} seq/s; "
        f"runtime CPU {summary['ceiling_runtime_cpu_ms_per_seq']:.2f} ms per sequence.",
        "- **floor**: the same server with `max_batch_size=1`.",
        "",
        "| closed loop | seqserve seq/s | / ceiling | / planner ceiling (64 in flight) | / floor | p50 ms | p99 ms "
        "| floor seq/s | floor p50 ms | floor p99 ms | p50 / floor p50 | other processes' CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["closed"]:
        lines.append(
            f"| c={r['concurrency']} | {_f(r['seqserve_seq_s'])} | {r['to_ceiling']:.2f} "
            f"| {r['to_ceiling_window']:.2f} "
            f"| {r['to_floor']:.2f} | {r['seqserve_p50_ms']:.1f} | {r['seqserve_p99_ms']:.1f} | {_f(r['floor_seq_s'])} "
            f"| {r['floor_p50_ms']:.1f} | {r['floor_p99_ms']:.1f} | {r['p50_to_floor']:.2f} "
            f"| {100 * r['other_processes_cpu_share']:.0f}% |"
        )
    ref = results["reference"]
    lines += (
        []
        if brief or not ref["open"]["seqserve"]
        else [
            "",
            f"Open loop (fixed offered rates; saturation = seqserve's best closed-loop rate, "
            f"{_f(ref['saturation_seq_s'])} seq/s; latency from each request's scheduled start):",
            "",
            "| offered seq/s | share of saturation | server | answered seq/s | p50 ms | p99 ms | p99 / p50 "
            "| errors or late |",
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
    )
    for name in ("seqserve", "floor"):
        for r in [] if brief else ref["open"][name]:
            ratio = r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else float("nan")
            lines.append(
                f"| {_f(r['level'])} | {r['fraction_of_saturation']:.2f} | {name} | {_f(r['throughput_seq_s'])} "
                f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {ratio:.2f} | {r['errors']} |"
            )
    protocols = {} if brief else ref.get("protocols") or {}
    if protocols:
        sizes = protocols.get("body_bytes_mean", {})
        low = protocols.get("low", {})
        top_c = protocols.get("concurrency", summary["closed"][-1]["concurrency"])
        lines += [
            "",
            f"Request encodings, seqserve, closed loop at c={top_c}"
            + (f" and c={low['concurrency']}" if low else "")
            + " (client CPU: the load generator's share of the "
            "machine; gRPC's server threads count as worker CPU, not loop):",
            "",
            f"| encoding | mean request bytes | c={top_c} seq/s | p50 ms | p99 ms | server loop CPU ms/seq "
            "| client CPU |" + (f" c={low['concurrency']} seq/s | p99 ms |" if low else ""),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if low else ""),
        ]
        for name, title in (
            ("v1_json", "HTTP `/predict` JSON"),
            ("v2_json", "HTTP V2 `/infer` JSON"),
            ("v2_binary", "HTTP V2 `/infer` binary tensor extension"),
            ("grpc", "gRPC `ModelInfer`, raw contents"),
        ):
            if name in protocols:
                r = protocols[name]
                line = (
                    f"| {title} | {_f(sizes.get(name, 0))} | {_f(r['throughput_seq_s'])} | {r['p50_ms']:.1f} "
                    f"| {r['p99_ms']:.1f} | {r['server_loop_cpu_ms_per_seq']:.3f} "
                    f"| {100 * r['client_cpu_share']:.1f}% |"
                )
                if low:
                    r_low = low.get(name)
                    line += f" {_f(r_low['throughput_seq_s'])} | {r_low['p99_ms']:.1f} |" if r_low else " | |"
                lines.append(line)
    top = summary["closed"][-1]
    lines += (
        []
        if brief
        else [
            "",
            f"Server CPU per sequence at c={top['concurrency']}: event loop (HTTP, parsing, validation, answers) "
            f"{top['seqserve_loop_cpu_ms_per_seq']:.3f} ms; batch worker and ONNX Runtime (padding, runtime) "
            f"{top['seqserve_worker_cpu_ms_per_seq']:.3f} ms. The load generator used "
            f"{100 * top['client_cpu_share']:.1f}% of the machine's CPU.",
        ]
    )
    if results.get("demos"):
        lines += [
            "",
            "Demo models (closed loop, one sequence per request; CPU outside the runtime: the server's CPU "
            "per request less the in-process runtime CPU of its sequence, from the 64-in-flight ceiling):",
            "",
            "| model | lengths | concurrency | seqserve req/s | ceiling seq/s | / ceiling | floor req/s "
            "| / floor | p50 ms | p99 ms | server CPU ms/req | outside the runtime ms/req |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, d in results["demos"].items():
            s, f, ceil = d["seqserve"], d["floor"], d["ceiling"]["sorted"]["throughput_seq_s"]
            cpu = s.get("server_cpu_ms_per_req", s["server_cpu_ms_per_seq"])
            outside = s.get("server_cpu_outside_runtime_ms_per_req")
            lines.append(
                f"| {name} | {d['lengths'][0]}-{d['lengths'][1]} | {int(s['level'])} | {_f(s['throughput_seq_s'])} "
                f"| {_f(ceil)} | {s['throughput_seq_s'] / ceil:.2f} | {_f(f['throughput_seq_s'])} "
                f"| {s['throughput_seq_s'] / max(f['throughput_seq_s'], 1e-9):.2f} | {s['p50_ms']:.1f} "
                f"| {s['p99_ms']:.1f} | {cpu:.3f} | {'' if outside is None else f'{outside:.3f}'} |"
            )
    scaling = results.get("scaling")
    if scaling:
        rows = scaling["rows"]
        lines += [
            "",
            f"HTTP worker processes (`--http-workers`), {scaling['model']}, closed loop at "
            f"c={scaling['concurrency']}, each count its own server, rounds alternating (best of):",
            "",
            "| sequences per request | HTTP processes | req/s | seq/s | / 1 process | p50 ms | p99 ms "
            "| server CPU ms/req | outside the runtime ms/req | server's share of the machine |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            one = next(
                o
                for o in rows
                if o["per_request"] == r["per_request"] and o["http_workers"] == min(x["http_workers"] for x in rows)
            )
            lines.append(
                f"| {r['per_request']} | {r['http_workers']} | {_f(r['throughput_req_s'])} "
                f"| {_f(r['throughput_seq_s'])} | {r['throughput_req_s'] / max(one['throughput_req_s'], 1e-9):.2f} "
                f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['server_cpu_ms_per_req']:.3f} "
                f"| {r['server_cpu_outside_runtime_ms_per_req']:.3f} | {r['server_cpu_share']:.2f} |"
            )
    lines += ["", "| target | value | met |", "| --- | ---: | :---: |"]
    for name, t in summary["targets"].items():
        lines.append(f"| {name} | {t['value']:.2f} | {'yes' if t['met'] else '**no**'} |")
    lines.append("")
    for name in plots:
        lines.append(f"![{name.removesuffix('.png').replace('_', ' ')}]({plot_dir}/{name})")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    summary = results.get("summary")
    if not summary:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'seqserve[bench]'): no plots")
        return []
    rows = summary["closed"]
    conc = [r["concurrency"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(conc, [r["seqserve_seq_s"] for r in rows], "o-", label="seqserve")
    ax.plot(conc, [r["floor_seq_s"] for r in rows], "s-", label="floor (max_batch_size=1)")
    ax.axhline(summary["ceiling_seq_s"], color="k", ls="--", label="ceiling (in-process, best batches)")
    ax.axhline(summary["ceiling_window_seq_s"], color="grey", ls=":", label="ceiling, 64 in flight")
    ax.set_xscale("log", base=2)
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("sequences / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput, reference BiLSTM, lengths 10-200")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [out / "throughput_vs_concurrency.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    ref = results["reference"]
    if not ref["open"]["seqserve"]:  # a run without the open loop (--targets)
        return paths
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, marker, color in (("seqserve", "o", "C0"), ("floor", "s", "C1")):
        runs = sorted(ref["open"][name], key=lambda r: r["level"])
        x = [r["level"] for r in runs]
        ax.plot(x, [r["p50_ms"] for r in runs], marker + "-", color=color, label=f"{name} p50")
        ax.plot(x, [r["p99_ms"] for r in runs], marker + "--", color=color, mfc="none", label=f"{name} p99")
    ax.axvline(ref["saturation_seq_s"], color="k", ls=":", label="seqserve saturation")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (sequences / s, open loop)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency vs offered load")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    paths.append(out / "latency_vs_load.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
