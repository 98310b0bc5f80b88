"""Drawing: training curves (OpenCV, no plotting library needed)."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _panel(series: dict[str, list[tuple[float, float]]], title: str, w: int = 560, h: int = 320) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 15, 30, 35
    cv2.putText(img, title, (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    pts = [p for s in series.values() for p in s if np.isfinite(p[1])]
    if not pts:
        cv2.putText(img, "no data", (w // 2 - 30, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        return img
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)

    def to_px(x, y):
        return (int(left + (x - x0) / (x1 - x0) * (w - left - right)),
                int(h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)))

    for label, (x, y) in {f"{y1:.3g}": (2, top + 5), f"{y0:.3g}": (2, h - bottom),
                          f"{x0:g}": (left, h - bottom + 18), f"{x1:g}": (w - right - 40, h - bottom + 18)}.items():
        cv2.putText(img, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    for i, (name, s) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)][::-1]
        poly = np.array([to_px(x, y) for x, y in s if np.isfinite(y)], np.int32)
        if len(poly) > 1:
            cv2.polylines(img, [poly], False, colour, 2, cv2.LINE_AA)
        elif len(poly) == 1:
            cv2.circle(img, tuple(int(v) for v in poly[0]), 3, colour, -1)
        # Legend in the title row, right of the title, clear of the axis labels.
        cv2.putText(img, name, (left + 150 + 110 * i, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1,
                    cv2.LINE_AA)
    return img


def plot_curves(metrics_path: str, out_png: str) -> None:
    """Loss curves (top) and evaluation metrics (bottom) from a metrics.jsonl file."""
    if not os.path.exists(metrics_path):
        return
    losses: dict[str, list] = {}
    evals: dict[str, list] = {}
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            it = rec.get("iter", 0)
            target = losses if "lr" in rec else evals
            for k, v in rec.items():
                if k in ("iter", "lr", "time") or not isinstance(v, (int, float)):
                    continue
                if target is losses and not k.startswith("loss"):
                    continue
                target.setdefault(k, []).append((it, float(v)))
    img = np.vstack([_panel(losses, "training loss"), _panel(evals, "evaluation")])
    tmp = out_png + ".tmp.png"
    cv2.imwrite(tmp, img)
    os.replace(tmp, out_png)
