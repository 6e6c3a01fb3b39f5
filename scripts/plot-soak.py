#!/usr/bin/env python3
"""Plots the soak CSV (`cargo bench --bench gateway -- soak`) as an SVG, with no dependencies.

    python3 scripts/plot-soak.py target/soak.csv docs/soak.svg

Three panels over minutes: resident memory (KiB), open file descriptors and threads, and CPU
(% of one core).
"""
import csv
import sys

W, H, PAD_L, PAD_R, PAD_T, PANEL_H, GAP = 760, 0, 70, 20, 30, 150, 45


def panel(out, top, xs, series, title, unit):
    """One panel: `series` is [(label, values, colour)]."""
    left, width = PAD_L, W - PAD_L - PAD_R
    vals = [v for _, vs, _ in series for v in vs]
    lo, hi = 0.0, max(vals) if vals else 1.0
    hi = hi * 1.15 if hi > 0 else 1.0
    x_max = max(xs) if xs else 1.0

    def px(x):
        return left + width * (x / x_max if x_max else 0)

    def py(y):
        return top + PANEL_H - PANEL_H * (y - lo) / (hi - lo)

    out.append(f'<text x="{left}" y="{top - 8}" font-size="13" font-weight="bold">{title}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{width}" height="{PANEL_H}" fill="none" stroke="#999"/>')
    for i in range(5):
        y = lo + (hi - lo) * i / 4
        out.append(f'<line x1="{left}" x2="{left + width}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" font-size="10" text-anchor="end">{y:,.0f}{unit}</text>')
    for m in range(0, int(x_max) + 1, 10):
        out.append(f'<text x="{px(m):.1f}" y="{top + PANEL_H + 13}" font-size="10" text-anchor="middle">{m}</text>')
    for n, (label, vs, colour) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, vs))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        out.append(f'<text x="{left + 8}" y="{top + 16 + 14 * n}" font-size="11" fill="{colour}">{label}</text>')


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        rows = list(csv.DictReader(f))
    xs = [float(r["minute"]) for r in rows]
    col = lambda k: [float(r[k]) for r in rows]
    out = []
    top = PAD_T + 10
    panel(out, top, xs, [("RSS", col("rss_kib"), "#1f77b4")], "Resident memory (KiB)", "")
    top += PANEL_H + GAP
    panel(out, top, xs, [("file descriptors", col("fds"), "#2ca02c"), ("threads", col("threads"), "#9467bd")],
          "File descriptors and threads", "")
    top += PANEL_H + GAP
    panel(out, top, xs, [("CPU", col("cpu_percent"), "#d62728")], "CPU (% of one core)", "%")
    height = top + PANEL_H + 40
    out.append(f'<text x="{W / 2}" y="{height - 10}" font-size="11" text-anchor="middle">minutes at 1,000 points/s (history on)</text>')
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif">',
           f'<rect width="{W}" height="{height}" fill="white"/>'] + out + ["</svg>"]
    with open(dst, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
