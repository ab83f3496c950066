"""The chart of ``bench/real_use.py --report ... --chart PNG``: every case's median for
each server, as speed relative to llama-server (1.0 = level, more = faster), with the
figure itself written on each bar.

Times and rates point the same way on the chart: a time is drawn as llama-server's time
over the server's (half the time reads 2.0), a rate as the server's over llama-server's.
matplotlib is a bench-only dependency (``pip install matplotlib``); nothing in the server
imports this module.
"""

from __future__ import annotations

from pathlib import Path

# Colours per server, in the order the tables list them; others take the cycle's next.
COLOURS = {
    "picolm-server": "#2b7bba",
    "picolm-server (old)": "#9cc3e4",
    "llama-server": "#888888",
    "llama-cpp-python": "#e0a458",
}


def relative_speed(value: float, base: float, unit: str) -> float:
    """How many times faster than the baseline: times are inverted, rates divided."""
    if unit == "s":
        return base / value
    return value / base


def label(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.0f} tok/s"


def draw_chart(
    figures: list[tuple[str, str, dict[str, float]]], path: Path, baseline: str, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    rows = [(name, unit, values) for name, unit, values in figures if baseline in values]
    if not rows:
        raise SystemExit(f"no case has figures for {baseline}: nothing to chart")
    servers: list[str] = []
    for _, _, values in rows:
        servers += [s for s in values if s not in servers]
    servers.sort(key=lambda s: list(COLOURS).index(s) if s in COLOURS else len(COLOURS))
    height = 0.8 / len(servers)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) * len(servers) + 1.6))
    for offset, server in enumerate(servers):
        ys, xs, texts = [], [], []
        for index, (_, unit, values) in enumerate(rows):
            if server not in values:
                continue
            ys.append(index + (offset - (len(servers) - 1) / 2) * height)
            xs.append(relative_speed(values[server], values[baseline], unit))
            texts.append(label(values[server], unit))
        bars = ax.barh(ys, xs, height=height * 0.95, label=server, color=COLOURS.get(server))
        for bar, text, x in zip(bars, texts, xs, strict=True):
            ax.text(
                bar.get_width() + 0.02,
                bar.get_y() + bar.get_height() / 2,
                f"{x:.2f}x  ({text})",
                va="center",
                fontsize=7,
            )
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([name for name, _, _ in rows])
    ax.invert_yaxis()
    longest = max(relative_speed(v[s], v[baseline], unit) for _, unit, v in rows for s in v)
    ax.set_xlim(0, longest * 1.35)
    ax.set_xlabel(f"speed relative to {baseline} (more is faster; medians)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
