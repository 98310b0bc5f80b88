"""Drawing with OpenCV (no plotting library needed): training curves, and predictions (boxes,
class names and scores, mask overlays, semantic colour maps with a legend)."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np

from .utils import atomic_path

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _panel(series: dict[str, list[tuple[float, float]]], title: str, w: int = 560,
           h: int = 320) -> np.ndarray:
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

    ticks = {f"{y1:.3g}": (2, top + 5), f"{y0:.3g}": (2, h - bottom),
             f"{x0:g}": (left, h - bottom + 18), f"{x1:g}": (w - right - 40, h - bottom + 18)}
    for label, (x, y) in ticks.items():
        cv2.putText(img, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    for i, (name, s) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)][::-1]
        poly = np.array([to_px(x, y) for x, y in s if np.isfinite(y)], np.int32)
        if len(poly) > 1:
            cv2.polylines(img, [poly], False, colour, 2, cv2.LINE_AA)
        elif len(poly) == 1:
            cv2.circle(img, tuple(int(v) for v in poly[0]), 3, colour, -1)
        # Legend stacked in the plot's top-right corner, clear of the title and axis labels.
        if i < 12:
            cv2.putText(img, name[:18], (w - right - 130, top + 16 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                        colour, 1, cv2.LINE_AA)
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
                if k == "val_loss":  # beside the training loss: over-fitting shows as a gap
                    losses.setdefault(k, []).append((it, float(v)))
                    continue
                if target is losses and not k.startswith("loss"):
                    continue
                target.setdefault(k, []).append((it, float(v)))
    write_png(out_png, np.vstack([_panel(losses, "loss (training, validation)"),
                                  _panel(evals, "evaluation")]))


def write_png(path: str, bgr: np.ndarray) -> None:
    """``cv2.imwrite`` all or nothing (``utils.atomic_path``); OSError when it cannot."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, bgr):
            raise OSError(f"could not write {path}")


# --------------------------------------------------------------------------- diagnostics


def _text_strip(text: str, width: int, height: int, scale: float = 0.4) -> np.ndarray:
    img = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(img, text[: max(1, width // 7)], (2, height // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), 1, cv2.LINE_AA)
    return img


def draw_confusion(matrix, labels: list[str], title: str = "confusion (rows: truth, columns: prediction)",
                   cell: int = 0) -> np.ndarray:
    """A confusion matrix as a BGR image: cells shaded by their share of the row, counts written
    in them (up to 30 classes), class names along both axes."""
    m = np.asarray(matrix, dtype=np.float64)
    n = len(labels)
    cell = cell or max(14, min(48, 640 // max(n, 1)))
    name_w = 110
    size = name_w + n * cell + 10
    (title_w, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    img = np.full((size + 30, max(size, title_w + 10), 3), 255, np.uint8)
    cv2.putText(img, title, (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    top = 30 + name_w
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    for i in range(n):
        y = top + i * cell
        strip = _text_strip(labels[i], name_w, cell)
        img[y:y + cell, :name_w] = strip
        img[30:30 + name_w, name_w + i * cell:name_w + (i + 1) * cell] = np.rot90(strip)[:, :cell]
        for j in range(n):
            x = name_w + j * cell
            shade = int(255 - 200 * share[i, j])
            colour = (shade, shade, 255) if i != j else (shade, 255, shade)  # BGR: red off, green on
            cv2.rectangle(img, (x, y), (x + cell - 1, y + cell - 1), colour, -1)
            if n <= 30 and m[i, j]:
                cv2.putText(img, f"{int(m[i, j])}", (x + 2, y + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX,
                            0.33, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def write_diagnostics(metrics: dict, folder: str) -> list[str]:
    """PNG figures of every ``*diagnostics`` entry of ``metrics`` into ``folder``; returns their
    paths. Detection: ``confusion.png``, ``pr_curves.png`` (precision against recall at IoU 0.5),
    ``f1_threshold.png`` (F1 against score threshold); semantic: ``semantic_confusion.png``;
    classification: ``classification_confusion.png``.
    A head's name prefixes the files when the model has several."""
    written = []
    for key, diag in metrics.items():
        if not key.endswith("diagnostics") or not isinstance(diag, dict):
            continue
        prefix = key[: -len("diagnostics")]
        os.makedirs(folder, exist_ok=True)
        figures = {}
        if "pr_curves" in diag:
            curves = diag["pr_curves"]
            figures["confusion.png"] = draw_confusion(
                diag["confusion"], diag["labels"],
                f"boxes at IoU 0.5, score >= {diag['score_threshold']:g} (rows: truth, columns: prediction)")
            figures["pr_curves.png"] = _panel(
                {n: list(zip(c["recall"], c["precision"])) for n, c in curves.items()},
                "precision (y) against recall (x), IoU 0.5")
            figures["f1_threshold.png"] = _panel(
                {n: [(s, 2 * p * r / max(p + r, 1e-12)) for s, p, r in
                     zip(c["scores"], c["precision"], c["recall"])] for n, c in curves.items()},
                "F1 (y) against score threshold (x)")
        elif diag.get("kind") == "classification":
            figures["classification_confusion.png"] = draw_confusion(
                diag["confusion"], diag["labels"], "images (rows: truth, columns: prediction)")
        else:
            figures["semantic_confusion.png"] = draw_confusion(diag["confusion"], diag["labels"],
                                                               "pixels (rows: truth, columns: prediction)")
        for name, img in figures.items():
            path = os.path.join(folder, prefix + name)
            write_png(path, img)
            written.append(path)
    return written


# --------------------------------------------------------------------------- predictions


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (uint8 ``[n, 3]``), the same for the same ``n`` every time."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 179, np.full(n, 200), np.full(n, 230)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def _label(img: np.ndarray, text: str, x: int, y: int, colour) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    y = max(th + base, y)
    cv2.rectangle(img, (x, y - th - base), (x + tw + 2, y), tuple(int(c) for c in colour), -1)
    cv2.putText(img, text, (x + 1, y - base // 2 - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)


def draw_instances(image: np.ndarray, instances, class_names: list[str], alpha: float = 0.45,
                   scores: bool = True) -> np.ndarray:
    """Boxes with class name (and score), and translucent mask overlays, on a copy of ``image``.

    Args:
        image: ``np.ndarray[H, W, 3]`` RGB uint8; instances: ``Instances`` in its pixels (masks
            ``[N, H, W]`` when present).
        scores: write each score after its class name (ground truth has none to show).
    """
    out = image.copy()
    colours = palette(len(class_names))
    masks = instances.masks.numpy().astype(bool) if instances.masks is not None else None
    order = np.argsort(instances.scores.numpy())  # highest score drawn last, on top
    for i in order:
        c = colours[int(instances.labels[i])]
        if masks is not None:
            m = masks[i]
            out[m] = (out[m] * (1 - alpha) + c * alpha).astype(np.uint8)
    for i in order:
        c = colours[int(instances.labels[i])]
        x0, y0, x1, y1 = (int(round(v)) for v in instances.boxes[i].tolist())
        cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(v) for v in c), 2)
        name = class_names[int(instances.labels[i])]
        _label(out, f"{name} {float(instances.scores[i]):.2f}" if scores else name, x0, y0, c)
    return out


def draw_semantic(image: np.ndarray, semantic: np.ndarray, class_names: list[str],
                  alpha: float = 0.5) -> np.ndarray:
    """Colour map of a semantic map (0 background, k + 1 class k) over ``image``, with a legend of
    the classes present."""
    out = image.copy()
    colours = palette(len(class_names))
    present = [int(v) for v in np.unique(semantic) if 0 < v <= len(class_names)]
    for v in present:
        m = semantic == v
        out[m] = (out[m] * (1 - alpha) + colours[v - 1] * alpha).astype(np.uint8)
    for row, v in enumerate(present):
        _label(out, class_names[v - 1], 4, 18 + 20 * row, colours[v - 1])
    return out


def draw_classes(image: np.ndarray, scores, class_names: list[str], k: int = 5) -> np.ndarray:
    """The ``k`` most likely classes of ``scores`` (``Tensor[K]`` probabilities) written on a copy
    of ``image``, best first, each with its probability; a small image is enlarged first so
    that the text stays readable."""
    out = image.copy()
    if min(out.shape[:2]) < 160:
        f = 160 / min(out.shape[:2])
        out = cv2.resize(out, (round(out.shape[1] * f), round(out.shape[0] * f)), interpolation=cv2.INTER_NEAREST)
    colours = palette(len(class_names))
    values, idx = scores.float().topk(min(k, len(class_names)))
    for row, (v, i) in enumerate(zip(values.tolist(), idx.tolist())):
        _label(out, f"{class_names[i]} {v:.2f}", 4, 18 + 20 * row, colours[i])
    return out


def draw_panoptic(image: np.ndarray, ids: np.ndarray, segments: list[dict],
                  alpha: float = 0.45) -> np.ndarray:
    """A panoptic segmentation over a copy of ``image``: each stuff segment tinted in its class's
    colour with its name once, each thing outlined in its class's colour and labelled with its
    name and segment id.

    Args:
        image: ``np.ndarray[H, W, 3]`` RGB uint8; ids: ``[H, W]`` segment ids (0: none);
        segments: dicts with ``id``, ``isthing``, ``label`` and ``name`` (``Predictor`` results).
    """
    out = image.copy()
    things = sorted({s["label"] for s in segments if s["isthing"]})
    colours = palette(max([*things, 0]) + 1 + 8)
    stuff_colours = colours[::-1]  # stuff labels count from the other end, apart from things'
    legend = []
    for seg in segments:
        m = ids == seg["id"]
        if seg["isthing"] or not m.any():
            continue
        c = stuff_colours[seg["label"] % len(stuff_colours)]
        out[m] = (out[m] * (1 - alpha) + c * alpha).astype(np.uint8)
        legend.append((seg.get("name", f"stuff {seg['label']}"), c))
    for seg in segments:
        if not seg["isthing"]:
            continue
        m = (ids == seg["id"]).astype(np.uint8)
        c = tuple(int(v) for v in colours[seg["label"] % len(colours)])
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, c, 2)
        ys, xs = np.nonzero(m)
        if len(xs):
            _label(out, f"{seg.get('name', seg['label'])} #{seg['id']}", int(xs.min()), int(ys.min()), c)
    for row, (name, c) in enumerate(legend):
        _label(out, name, 4, 18 + 20 * row, c)
    return out


def draw_prediction(image: np.ndarray, result: dict, class_names: list[str]) -> np.ndarray:
    """Everything a ``Predictor`` returned for one image, drawn on a copy of it (a panoptic
    model's result as its panoptic segmentation)."""
    if "panoptic" in result:
        ids, segments = result["panoptic"]
        return draw_panoptic(image, np.asarray(ids), segments)
    out = image
    if "classes" in result:
        out = draw_classes(out, result["classes"], class_names)
    if "semantic" in result:
        out = draw_semantic(out, result["semantic"].numpy(), class_names)
    if "instances" in result:
        out = draw_instances(out, result["instances"], class_names)
    return out if out is not image else image.copy()
