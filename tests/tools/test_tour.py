"""tools/tour.py --quick: every step trained, drawn and written; the committed tour's pictures
have the layout the code draws."""
import json
import os

import cv2
import pytest

from tests.conftest import ROOT
from tools import tour


def panels(path):
    """Panels in the picture's first row: the stretches between white gaps of 6+ columns."""
    rgb = cv2.imread(str(path))
    top = rgb[: min(rgb.shape[0], 60)]
    white = (top == 255).all(axis=(0, 2))
    runs, n = 0, 0
    for w in white:
        n = n + 1 if w else 0
        runs += n == 6
    return runs + 1


def test_quick_tour_writes_every_step_like_the_committed_one(tmp_path, capsys):
    out = tmp_path / "tour"
    # four of the eight steps (a view of each kind: features and saliency, pooling, upsampling,
    # a panoptic picture) keep this test near 30 s; the eight took a minute
    steps = ["classifier", "sppnet", "fcn", "panoptic"]
    assert tour.main(["--quick", "--output", str(out), "--only", *steps]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == steps
    page = (out / "README.md").read_text()
    for key, title, config, *_ in (s for s in tour.STEPS if s[0] in steps):
        assert f"## {title}" in page and config in page
        picture = cv2.imread(str(out / f"{key}_predictions.png"))
        assert picture is not None and picture.std() > 5 and panels(out / f"{key}_predictions.png") == tour.IMAGES
        assert f"({key}_predictions.png)" in page
    committed = os.path.join(ROOT, "docs", "tour")
    if not os.path.isdir(committed):
        pytest.skip("no committed tour")
    ours = {f for f in os.listdir(out) if f.endswith(".png")}
    theirs = {f for f in os.listdir(committed) if f.endswith(".png")}
    # a view that found nothing to draw (an untrained detector's empty saliency) may be missing
    # from a 2-iteration run; every picture both have is laid out alike
    assert {f"{k}_predictions.png" for k in steps} <= ours & theirs
    for name in sorted(ours & theirs):
        assert panels(out / name) == panels(os.path.join(committed, name)), name
    # the page links only pictures that exist
    committed_page = open(os.path.join(committed, "README.md"), encoding="utf-8").read()
    for name in theirs:
        assert f"({name})" in committed_page
