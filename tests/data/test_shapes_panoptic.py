"""The panoptic shapes variant in the COCO panoptic format: written, read back identical, checked
by the panoptic checks, scored against itself and against perturbed predictions."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from detseg.data import shapes
from detseg.data.panoptic_format import check_image, id_to_rgb, load_panoptic, read_segment_png
from detseg.data.shapes_panoptic import STUFF, render_panoptic
from detseg.evaluation.panoptic_quality import pq_compute
from tests.conftest import call_tool


@pytest.fixture(scope="module")
def pan(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pan") / "shapes_pan")
    assert call_tool("make_shapes", ["--out", root, "--panoptic", "--num-train", "3", "--num-val", "4",
                                     "--seed", "3"]) == 0
    return shapes.split_paths(root)


def test_every_pixel_is_a_thing_or_one_of_the_stuff_regions():
    image, ids, segments, things = render_panoptic(0, "train", 5)
    assert image.shape[:2] == ids.shape and (ids > 0).all()  # no void in the generated data
    cats = [s["category_id"] for s in segments]
    assert cats[:len(things)] == [shapes.VOCABULARY[shapes.CLASSES[t["label"]]] for t in things]
    assert set(cats[len(things):]) <= set(STUFF.values()) and len(cats) - len(things) >= 2
    for s in segments:
        assert s["area"] == int((ids == s["id"]).sum())
    again = render_panoptic(0, "train", 5)
    assert (again[0] == image).all() and (again[1] == ids).all()  # deterministic


def test_written_dataset_reads_back_identical_and_passes_the_checks(pan):
    data = load_panoptic(pan["val"]["panoptic_json"])
    assert sorted(data.stuff_ids) == sorted(STUFF.values())
    assert sorted(data.thing_ids) == sorted(shapes.CATEGORY_IDS)
    assert len(data.images) == 4
    for i, entry in enumerate(data.images):
        image, ids, segments, _ = render_panoptic(3, "val", i)
        assert (read_segment_png(entry.png) == ids).all()
        assert entry.segments == segments
        photo = cv2.imread(os.path.join(pan["val"]["image_dir"], entry.file_name))[..., ::-1]
        assert (photo == image).all()
        assert check_image(entry, data.categories) == []
    # the things' instances file lists the same images, one annotation per thing segment
    inst = json.load(open(pan["val"]["ann_file"]))
    things = sum(1 for e in data.images for s in e.segments if s["category_id"] in data.thing_ids)
    assert len(inst["annotations"]) == things and len(inst["images"]) == 4


def test_ground_truth_scored_against_itself_is_pq_one_and_a_perturbed_copy_is_not(pan, tmp_path):
    out = pq_compute(pan["val"]["panoptic_json"], pan["val"]["panoptic_json"])
    for name in ("All", "Things", "Stuff"):
        assert out[name]["pq"] == 1.0 and out[name]["n"] > 0
    # every image's first thing merged into its sky segment: that thing becomes a false negative
    data = load_panoptic(pan["val"]["panoptic_json"])
    (tmp_path / "pred").mkdir()
    annotations = []
    for e in data.images:
        ids = read_segment_png(e.png)
        first, sky = e.segments[0], next(s for s in e.segments if s["category_id"] == STUFF["sky"])
        ids[ids == first["id"]] = sky["id"]
        cv2.imwrite(str(tmp_path / "pred" / os.path.basename(e.png)), id_to_rgb(ids)[..., ::-1])
        annotations.append({"image_id": e.image_id, "file_name": os.path.basename(e.png),
                            "segments_info": [s for s in e.segments if s["id"] != first["id"]]})
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": annotations}))
    out = pq_compute(pan["val"]["panoptic_json"], str(tmp_path / "pred.json"))
    assert out["Things"]["rq"] < 1.0 and out["Things"]["sq"] == 1.0  # the rest still exact
    assert out["All"]["pq"] < 1.0


def test_dataset_with_panoptic_ground_truth_trains_stuff_and_one_things_class(pan):
    from detseg.data.coco import CocoDataset
    from detseg.data.transforms import train_transform
    split = pan["val"]
    ds = CocoDataset(split["ann_file"], split["image_dir"], with_semantic=True,
                     panoptic=(split["panoptic_json"], None))
    assert ds.stuff_names == ["sky", "ground", "water"] and ds.num_stuff == 3
    assert ds.semantic_names == ["things", "sky", "ground", "water"]
    assert ds.label_map()["stuff_cat_ids"] == [STUFF[n] for n in ("sky", "ground", "water")]
    data = load_panoptic(split["panoptic_json"])
    for i, entry in enumerate(data.images):
        item = ds[i]
        ids = read_segment_png(entry.png)
        sem = item["semantic"].numpy()
        for seg in entry.segments:
            want = 0 if seg["category_id"] in data.thing_ids else ds.stuff_cat_ids.index(seg["category_id"]) + 1
            assert (sem[ids == seg["id"]] == want).all()
        assert len(item["labels"]) == sum(s["category_id"] in data.thing_ids for s in entry.segments)
    counts = ds.pixel_counts()
    assert len(counts) == 4 and sum(counts) == sum(e.height * e.width for e in data.images)
    # flipped and rescaled with the image: the map still lines up with the instance masks
    ds.transform = train_transform([96], 200, "flip")
    for seed in range(3):
        ds.transform.reseed(seed)
        item = ds[0]
        sem, masks = item["semantic"], item["masks"].bool()
        assert sem.shape == item["image"].shape[1:] and set(sem.unique().tolist()) <= {0, 1, 2, 3}
        inside = masks.any(0)
        assert (sem[inside] == 0).float().mean() > 0.95  # thing pixels (nearest-neighbour edges aside)


def test_panoptic_evaluator_scores_ground_truth_as_one(pan):
    from detseg.data.coco import CocoDataset
    from detseg.evaluation.panoptic_quality import PanopticEvaluator
    from detseg.structures import Batch
    split = pan["val"]
    ds = CocoDataset(split["ann_file"], split["image_dir"], panoptic=(split["panoptic_json"], None))
    ev = PanopticEvaluator(ds)
    things = {c: k for k, c in enumerate(ds.cat_ids)}
    stuff = {c: k for k, c in enumerate(ds.stuff_cat_ids)}
    for entry in load_panoptic(split["panoptic_json"]).images:
        # the segments as the model gives them: thing labels index the classes, stuff the stuff
        segs = [{"id": s["id"], "isthing": s["category_id"] in things,
                 "label": things.get(s["category_id"], stuff.get(s["category_id"]))} for s in entry.segments]
        ids = torch.from_numpy(read_segment_png(entry.png))
        ev.process(Batch(images=torch.zeros(1, 3, 32, 32, dtype=torch.uint8), image_ids=[entry.image_id]),
                   [(ids, segs)])
    out = ev.evaluate()
    assert out["PQ"] == out["PQ_th"] == out["PQ_st"] == 1.0 and out["per_class_PQ"]["sky"] == 1.0


def test_the_checks_name_each_problem(pan, tmp_path):
    data = load_panoptic(pan["train"]["panoptic_json"])
    entry = data.images[0]
    ids = read_segment_png(entry.png)
    ids[0, 0] = 999
    extra = dict(entry.segments[0], id=77)
    unknown = dict(entry.segments[1], category_id=4242)
    entry.segments = [extra, unknown, *entry.segments[2:]]
    problems = check_image(entry, data.categories, ids)
    kinds = {(p.kind, p.ann_id) for p in problems}
    assert {("id_not_listed", 1), ("id_not_listed", 999), ("empty_segment", 77),
            ("unknown_category", entry.segments[1]["id"])} <= kinds
    owner = [s["id"] for s in entry.segments if s["id"] == int(read_segment_png(entry.png)[0, 0])]
    assert all(("area_mismatch", i) in kinds for i in owner)  # the segment that lost pixel (0, 0)
    assert all(p.image_id == entry.image_id and p.file == os.path.basename(entry.png) for p in problems)
    problems = check_image(entry, data.categories, ids[:, :-3])
    assert any(p.kind == "png_size_mismatch" and "the image" in p.detail for p in problems)
    with pytest.raises(ValueError, match="annotations\\[0\\]"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"images": [], "annotations": [{"image_id": 5}], "categories": []}))
        load_panoptic(str(bad))


def test_dataset_doctor_reads_a_panoptic_file(pan, tmp_path, capsys):
    from tools import check_data
    assert check_data.main([pan["val"]["panoptic_json"], pan["val"]["image_dir"]]) == 0
    out = capsys.readouterr().out
    assert "0 problem(s)" in out and "sky (stuff):" in out and "circle (thing):" in out
    # a copy whose first segment lost its entry: one named problem, exit 1
    data = json.load(open(pan["val"]["panoptic_json"]))
    dropped = data["annotations"][0]["segments_info"].pop(0)
    bad = tmp_path / "panoptic_val.json"
    bad.write_text(json.dumps(data))
    assert check_data.main([str(bad), pan["val"]["image_dir"], "--png-dir", pan["val"]["panoptic_dir"]]) == 1
    out = capsys.readouterr().out
    assert f"PNG id {dropped['id']}" in out and "id_not_listed" in out and "1 problem(s)" in out
    assert check_data.main([str(bad), pan["val"]["image_dir"], "--fix", "drop"]) == 2


def _perturbed(entry, kind: str):
    """A void-free prediction of ``entry``: its ids map and segments, changed as ``kind`` says."""
    ids = read_segment_png(entry.png)
    segments = [dict(s) for s in entry.segments]
    things = [s for s in segments if s["category_id"] in shapes.CATEGORY_IDS]
    if kind == "merged" and things:  # the first thing swallowed by the sky (or another stuff)
        into = next(s for s in segments if s["category_id"] not in shapes.CATEGORY_IDS)
        ids[ids == things[0]["id"]] = into["id"]
        segments.remove(things[0])
    elif kind == "relabelled":  # every thing called the next shape class: FP and FN each
        order = sorted(shapes.CATEGORY_IDS)
        for s in things:
            s["category_id"] = order[(order.index(s["category_id"]) + 1) % len(order)]
    elif kind == "shifted":  # the whole map moved (wrapping round: no void), IoUs below 1
        ids = np.roll(ids, (3, -4), axis=(0, 1))
    elif kind == "split" and things:  # the largest thing cut in two at its middle column
        big = max(things, key=lambda s: s["area"])
        ys, xs = np.nonzero(ids == big["id"])
        new = max(s["id"] for s in segments) + 1
        ids[(ids == big["id"]) & (np.arange(ids.shape[1])[None] > np.median(xs))] = new
        segments.append({"id": new, "category_id": big["category_id"]})
    present = set(np.unique(ids).tolist())
    return ids, [s for s in segments if s["id"] in present]


@pytest.mark.parametrize("kind", ["identity", "merged", "relabelled", "shifted", "split"])
def test_pq_matches_torchmetrics_on_perturbed_predictions(pan, kind):
    """torchmetrics' PanopticQuality (an independent implementation of the same definition) gives
    the same PQ, SQ and RQ on predictions without void pixels and ground truth without crowd
    regions: where it departs from the COCO reference, which detseg follows, are void in the
    prediction, crowd, and a stuff class predicted as several segments (it joins them)."""
    tm = pytest.importorskip("torchmetrics.detection")
    from detseg.evaluation.panoptic_quality import PQStats, pq_image
    data = load_panoptic(pan["val"]["panoptic_json"])
    things, stuff = set(data.thing_ids), set(data.stuff_ids)
    metric = tm.PanopticQuality(things=things, stuffs=stuff, return_sq_and_rq=True)
    ours = PQStats()

    def colours(ids, segments):  # (category id, segment id) per pixel, as torchmetrics takes them
        cat = dict((s["id"], s["category_id"]) for s in segments)
        return torch.stack([torch.from_numpy(np.vectorize(cat.get)(ids)), torch.from_numpy(ids)], -1)[None]

    for entry in data.images[:2]:  # torchmetrics loops over segment pairs in Python: two images
        gt = read_segment_png(entry.png)
        pred, segments = (gt, entry.segments) if kind == "identity" else _perturbed(entry, kind)
        ours.add(pq_image(gt, entry.segments, pred, segments, data.categories))
        metric.update(colours(pred, segments).long(), colours(gt, entry.segments).long())
    pq, sq, rq = metric.compute().tolist()
    mean, _ = ours.average(data.categories)
    # torchmetrics sums in float32
    assert (mean["pq"], mean["sq"], mean["rq"]) == pytest.approx((pq, sq, rq), rel=1e-6)
    assert (mean["pq"] == 1.0) == (kind == "identity")
