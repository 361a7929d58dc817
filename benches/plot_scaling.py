#!/usr/bin/env python3
"""Draws docs/benchmarks/scaling.svg from docs/benchmarks/scaling.json.

The JSON holds figures measured by `gpufleet bench` (BENCHMARKS.md says
which command and run each comes from): for each series, points of
(nodes, wall seconds, CPU seconds, peak RSS MiB). Three panels, fleet size
on a log axis: wall time, CPU and memory. Standard library only.

    python3 benches/plot_scaling.py
"""

import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "docs", "benchmarks", "scaling.json")
OUT = os.path.join(HERE, "..", "docs", "benchmarks", "scaling.svg")

PANELS = [("wall", "wall time (s)"), ("cpu", "operator CPU (s)"), ("rss", "operator peak RSS (MiB)")]
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
DASHES = ["", "6,4", "2,3", "8,3,2,3", "1,2", "10,2"]
W, H = 300, 230  # one panel
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 40


def nice_max(v):
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def panel(x0, key, title, series, xmin, xmax):
    out = []
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    ymax = nice_max(max(p[key] for s in series for p in s["points"] if p.get(key) is not None))

    def px(n):
        return x0 + LEFT + pw * (math.log10(n) - math.log10(xmin)) / (math.log10(xmax) - math.log10(xmin))

    def py(v):
        return TOP + ph * (1 - v / ymax)

    out.append(f'<text x="{x0 + W / 2}" y="16" text-anchor="middle" font-weight="bold">{title}</text>')
    out.append(f'<rect x="{x0 + LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i in range(5):
        v = ymax * i / 4
        y = py(v)
        out.append(f'<line x1="{x0 + LEFT}" y1="{y:.1f}" x2="{x0 + LEFT + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 + LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    for n in (1000, 3000, 10000, 30000, 100000, 137500):
        if xmin <= n <= xmax:
            x = px(n)
            label = f"{n // 1000}k" if n < 100000 else f"{n / 1000:g}k"
            out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{TOP + ph + 14}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{x0 + LEFT + pw / 2}" y="{H - 6}" text-anchor="middle">nodes (log)</text>')
    for i, s in enumerate(series):
        pts = [(px(p["nodes"]), py(p[key])) for p in s["points"] if p.get(key) is not None]
        if not pts:
            continue
        colour, dash = COLOURS[i % len(COLOURS)], DASHES[i % len(DASHES)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
    return out


def main():
    with open(DATA) as f:
        data = json.load(f)
    series = data["series"]
    sizes = [p["nodes"] for s in series for p in s["points"]]
    xmin, xmax = min(sizes) / 1.3, max(sizes) * 1.3
    legend_h = 18 * len(series) + 10
    width, height = W * len(PANELS), H + legend_h + 20
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for i, (key, title) in enumerate(PANELS):
        body += panel(i * W, key, title, series, xmin, xmax)
    y = H + 14
    for i, s in enumerate(series):
        colour, dash = COLOURS[i % len(COLOURS)], DASHES[i % len(DASHES)]
        body.append(f'<line x1="20" y1="{y}" x2="50" y2="{y}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
        body.append(f'<text x="56" y="{y + 4}">{s["name"]}</text>')
        y += 18
    body.append(f'<text x="20" y="{y + 6}" fill="#555">{data["note"]}</text>')
    body.append("</svg>")
    with open(OUT, "w") as f:
        f.write("\n".join(body) + "\n")
    print(f"wrote {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
