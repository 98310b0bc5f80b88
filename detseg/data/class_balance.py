"""How balanced a dataset's classes are: instances per class and the imbalance ratio, for the
dataset doctor (``tools/check_data.py``) to report, with what to try when the ratio is large."""
from __future__ import annotations

import json

# From this ratio on (most / fewest instances) the doctor suggests a sampler: LVIS calls a class
# rare below a tenth of the frequent ones' images, and a plain sampler then shows it rarely.
LARGE_RATIO = 10.0


def class_histogram(ann_file: str) -> dict[str, int]:
    """Instances per category name of a COCO annotation file (crowd regions left out; a category
    with none is listed with 0)."""
    with open(ann_file, encoding="utf-8") as f:
        data = json.load(f)
    names = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories", []) if isinstance(c, dict)}
    counts = {name: 0 for name in names.values()}
    for a in data.get("annotations", []):
        if isinstance(a, dict) and a.get("category_id") in names and not a.get("iscrowd", 0):
            counts[names[a["category_id"]]] += 1
    return counts


def imbalance_ratio(counts: dict[str, int]) -> float:
    """Most instances over fewest among the classes that have any (1.0 with fewer than two)."""
    present = [n for n in counts.values() if n > 0]
    return max(present) / min(present) if len(present) >= 2 else 1.0


def format_balance(counts: dict[str, int]) -> str:
    """The histogram (most frequent first, with a bar), the ratio, and advice when it is large."""
    if not counts:
        return "no categories"
    total = max(1, sum(counts.values()))
    width = max(len(n) for n in counts)
    most = max(counts.values()) or 1
    lines = [f"{name.ljust(width)}  {n:>7}  {100 * n / total:5.1f}%  {'#' * max(n > 0, round(30 * n / most))}"
             for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    ratio = imbalance_ratio(counts)
    empty = sorted(n for n, c in counts.items() if c == 0)
    lines.append(f"imbalance ratio {ratio:.1f} (most / fewest instances)")
    if empty:
        lines.append(f"no instances at all: {', '.join(empty)}")
    if ratio >= LARGE_RATIO:
        lines.append("large: rare classes are seldom seen in training; try data.sampler=repeat_factor "
                     "(LVIS's repeat-factor sampling: images holding rare classes repeat), sqrt_frequency "
                     "or class_aware; with masks, data.copy_paste.prob=0.5 (rare objects pasted into other "
                     "images); or a loss for the long tail, model.heads.<head>.loss.kind=seesaw (region and "
                     "image classifiers) or loss.class_weight=effective")
    return "\n".join(lines)
