"""PNG plots of a bench report (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res in report["profiles"].items():
        pts = res.get("points") if isinstance(res, dict) else None
        if pts:
            x = [p["throughput_rps"] for p in pts]
            for ax, key in zip(axes, ("p50", "p95")):
                ax.plot(x, [p["latency_ms"][key] for p in pts], marker="o", label=name)
                for p in pts:
                    ax.annotate(
                        str(p["concurrency"]),
                        (p["throughput_rps"], p["latency_ms"][key]),
                        fontsize=7,
                        textcoords="offset points",
                        xytext=(3, 3),
                    )
        elif isinstance(res, dict) and res.get("throughput_rps"):
            for ax in axes:
                ax.axvline(
                    res["throughput_rps"],
                    linestyle="--",
                    color="gray",
                    label=f"{name} ({res['throughput_rps']:.0f} req/s)",
                )
    for ax, key in zip(axes, ("p50", "p95")):
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel(f"{key} latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['pipeline']}: latency vs throughput (labels: concurrency)")
    fig.tight_layout()
    path = out / "latency_vs_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    curves = report.get("cost_curves", {})
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        models = list(curves)
        batch = report["allocation"]["batch"]
        at1 = [curves[m]["seconds"][0] / curves[m]["batch_sizes"][0] * 1e3 for m in models]
        atb = [dict(zip(curves[m]["batch_sizes"], curves[m]["seconds"]))[batch] / batch * 1e3 for m in models]
        xs = range(len(models))
        width = 0.4
        axes[0].bar([x - width / 2 for x in xs], at1, width, label="batch 1")
        axes[0].bar([x + width / 2 for x in xs], atb, width, label=f"batch {batch}")
        axes[0].set_xticks(list(xs), [f"{m}\nx{report['allocation']['counts'].get(m, 1)}" for m in models], fontsize=8)
        axes[0].set_ylabel("ms of one core per request")
        axes[0].set_title("per-component time per request (xN: planned instances)")
        axes[0].legend(fontsize=8)
        for m in models:
            c = curves[m]
            axes[1].plot(
                c["batch_sizes"], [s / b * 1e3 for b, s in zip(c["batch_sizes"], c["seconds"])], marker="o", label=m
            )
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("batch size")
        axes[1].set_ylabel("ms per request")
        axes[1].set_title("cost curves (in-process)")
        axes[1].grid(True, alpha=0.3)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        path = out / "component_breakdown.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
