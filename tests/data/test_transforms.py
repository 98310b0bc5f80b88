import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detseg.data.coco import CocoDataset
from detseg.data.transforms import (
    Augment,
    ResizeShortestEdge,
    collate,
    default_augmentations,
    eval_transform,
    train_transform,
)


def random_sample(rng, h, w, n):
    masks = np.zeros((n, h, w), np.uint8)
    boxes = []
    for i in range(n):
        x0, y0 = rng.integers(0, w - 4), rng.integers(0, h - 4)
        x1, y1 = rng.integers(x0 + 3, w + 1), rng.integers(y0 + 3, h + 1)
        masks[i, y0:y1, x0:x1] = 1
        boxes.append([x0, y0, x1, y1])
    return {"image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.arange(n) % 3,
            "ignore_boxes": np.zeros((0, 4), np.float32), "masks": masks,
            "ignore_mask": np.zeros((h, w), np.uint8)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(24, 90), w=st.integers(24, 90),
       n=st.integers(0, 6))
def test_kept_boxes_inside_image_and_match_mask_extent(seed, h, w, n):
    sample = random_sample(np.random.default_rng(seed), h, w, n)
    sample["labels"] = np.arange(n)  # distinct labels to follow each instance
    t = train_transform([32, 48, 64], 96)
    t.reseed(seed)
    s = t(sample)
    H, W = s["image"].shape[:2]
    assert len(s["boxes"]) == len(s["labels"]) == len(s["masks"])
    # The same random draws on boxes alone (albumentations geometry, no masks) keep the same
    # instances in the same order, at nearly the same place: masks and boxes stayed in step.
    t.reseed(seed)
    box_only = t({**sample, "masks": None, "ignore_mask": None})
    common = np.intersect1d(box_only["labels"], s["labels"])
    assert len(common) >= min(len(s["labels"]), len(box_only["labels"])) - 1
    for label in common:
        a = s["boxes"][s["labels"] == label][0]
        b = box_only["boxes"][box_only["labels"] == label][0]
        assert np.abs(a - b).max() <= 2.5, (a, b)
    assert s["masks"].shape[1:] == (H, W)
    for box, mask in zip(s["boxes"], s["masks"]):
        assert 0 <= box[0] < box[2] <= W and 0 <= box[1] < box[3] <= H
        ys, xs = np.nonzero(mask)
        assert len(xs), "a kept instance must keep some mask"
        extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert np.abs(extent - box).max() <= 1.0 + 1e-4, (extent, box)


def test_vanishing_instances_are_dropped_with_their_masks():
    rng = np.random.default_rng(0)
    s = random_sample(rng, 60, 60, 0)
    s["boxes"] = np.array([[0, 0, 10, 10], [30, 30, 50, 50]], np.float32)
    s["labels"] = np.array([1, 2])
    s["masks"] = np.zeros((2, 60, 60), np.uint8)
    s["masks"][0, :10, :10] = 1
    s["masks"][1, 30:50, 30:50] = 1
    # Shift everything 20 px left and up: the first object leaves the image.
    import albumentations as A
    aug = Augment([A.Affine(translate_px={"x": -20, "y": -20}, p=1.0)])
    out = aug(s)
    assert out["labels"].tolist() == [2]
    np.testing.assert_allclose(out["boxes"], [[10, 10, 30, 30]])
    assert out["masks"].shape == (1, 60, 60) and out["masks"][0, 10:30, 10:30].all()


def test_resize_shortest_edge_with_max_size():
    s = random_sample(np.random.default_rng(1), 100, 300, 1)
    out = ResizeShortestEdge(50, 120)(s)
    assert out["image"].shape[:2] == (40, 120)  # capped by the long side
    np.testing.assert_allclose(out["boxes"], s["boxes"] * 0.4, atol=1e-4)
    out = eval_transform(200, 1000)(s)
    assert out["image"].shape[:2] == (200, 600) and out["masks"].shape == (1, 200, 600)


def test_collate_pads_to_32_and_keeps_sizes(shapes_data):
    ds = CocoDataset(shapes_data["val"]["ann_file"], shapes_data["val"]["image_dir"],
                     with_semantic=True, transform=eval_transform(100, 150))
    batch = collate([ds[0], ds[1], None])
    assert batch["num_skipped"] == 1
    B, _, H, W = batch["images"].shape
    assert B == 2 and H % 32 == 0 and W % 32 == 0
    for i, (h, w) in enumerate(batch["image_sizes"]):
        assert torch.equal(batch["images"][i, :, :h, :w], ds[i]["image"])
        assert (batch["images"][i, :, h:, :] == 0).all()
        assert (batch["semantic"][i, h:, :] == 255).all() and (batch["semantic"][i, :, w:] == 255).all()
    assert batch["orig_sizes"][0] == ds[0]["orig_size"]
    assert default_augmentations()  # the preset is non-empty


def test_proposals_ride_along_with_augmentation_and_resize(shapes_data):
    import numpy as np

    from detseg.data.coco import CocoDataset
    from detseg.data.transforms import eval_transform, train_transform
    split = shapes_data["train"]
    plain = CocoDataset(split["ann_file"], split["image_dir"])
    img_id = plain.ids[0]
    info = plain.coco.imgs[img_id]
    h, w = info["height"], info["width"]
    gt = plain.load_annotations(img_id, h, w)["boxes"]
    props = {i: np.zeros((0, 4), np.float32) for i in plain.ids}
    props[img_id] = np.concatenate([gt, [[0, 0, w / 2, h / 2]]]).astype(np.float32)
    # Eval: a pure resize scales proposals exactly like the ground truth.
    ds = CocoDataset(split["ann_file"], split["image_dir"], proposals=props,
                     transform=eval_transform(64, 200))
    item = ds[0]
    n = len(item["boxes"])
    np.testing.assert_allclose(item["proposals"][:n].numpy(), item["boxes"].numpy(), atol=1e-4)
    # Train: flips and affine moves proposals with the image; each gt-copy proposal stays on its box.
    ds = CocoDataset(split["ann_file"], split["image_dir"], proposals=props,
                     transform=train_transform([64], 200))
    for seed in range(5):
        ds.transform.reseed(seed)
        item = ds[0]
        hh, ww = item["image"].shape[1:]
        p = item["proposals"]
        assert (p[:, 0] >= 0).all() and (p[:, 2] <= ww).all() and (p[:, 3] <= hh).all()
        from torchvision.ops import box_iou
        if len(item["boxes"]) and len(p):
            assert (box_iou(item["boxes"], p).max(1).values > 0.7).all()


def test_flip_preset_only_mirrors_image_masks_and_boxes_together():
    rng = np.random.default_rng(3)
    sample = random_sample(rng, 40, 60, 3)
    t = train_transform([40], 1000, augment="flip")
    flipped = kept = 0
    for seed in range(20):
        t.reseed(seed)
        s = t({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in sample.items()})
        if np.array_equal(s["image"], sample["image"]):
            np.testing.assert_array_equal(s["masks"], sample["masks"])
            np.testing.assert_allclose(s["boxes"], sample["boxes"])
            kept += 1
        else:  # nothing but a mirror: no colour, scale or shift change
            np.testing.assert_array_equal(s["image"], sample["image"][:, ::-1])
            np.testing.assert_array_equal(s["masks"], sample["masks"][:, :, ::-1])
            b = sample["boxes"]
            mirrored = np.stack([60 - b[:, 2], b[:, 1], 60 - b[:, 0], b[:, 3]], 1)
            np.testing.assert_allclose(s["boxes"], mirrored)
            flipped += 1
    assert flipped >= 4 and kept >= 4
    with pytest.raises(ValueError, match="augment"):
        train_transform([40], 1000, augment="heavy")
