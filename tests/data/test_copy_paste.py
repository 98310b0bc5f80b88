"""Copy-paste augmentation: boxes follow the masks, covered objects shrink or go, and the classes
pasted follow the rarity setting."""
import numpy as np
import pytest

from detseg.data.copy_paste import class_probabilities, mask_box, paste


def square_sample(h=40, w=40):
    """One 20 x 20 object at (10..30, 10..30) on a blank image."""
    masks = np.zeros((1, h, w), dtype=np.uint8)
    masks[0, 10:30, 10:30] = 1
    return {"image": np.zeros((h, w, 3), dtype=np.uint8), "boxes": np.asarray([[10, 10, 30, 30]], np.float32),
            "labels": np.asarray([0]), "masks": masks, "ignore_mask": np.zeros((h, w), np.uint8)}


def test_a_pasted_object_gets_its_mask_box_and_covers_the_one_below():
    s = square_sample()
    patch = np.full((12, 8, 3), 200, dtype=np.uint8)
    mask = np.ones((12, 8), dtype=np.uint8)
    mask[:, :2] = 0  # the patch's left two columns are not object
    out = paste(s, patch, mask, label=2, at=(5, 20))
    assert out["labels"].tolist() == [0, 2]
    # the pasted box is its mask's extent: columns 22..28, rows 5..17
    assert out["boxes"][1].tolist() == [22, 5, 28, 17] == mask_box(out["masks"][1]).tolist()
    assert (out["image"][5:17, 22:28] == 200).all() and (out["image"][5:17, 20:22] == 0).all()
    # the object below lost the covered pixels; its box is what is left of it (still 10..30)
    assert out["masks"][0][10:17, 22:28].sum() == 0
    assert out["boxes"][0].tolist() == mask_box(out["masks"][0]).tolist() == [10, 10, 30, 30]
    # every box lies within its mask's extent
    for box, m in zip(out["boxes"], out["masks"]):
        assert box.tolist() == mask_box(m).tolist()


def test_a_covered_object_shrinks_its_box_or_is_dropped():
    s = square_sample()
    cover_left = np.ones((20, 15), dtype=np.uint8)
    out = paste(s, np.zeros((20, 15, 3), np.uint8), cover_left, label=1, at=(10, 10))
    assert out["boxes"][0].tolist() == [25, 10, 30, 30]  # 5 of 20 columns left: 25% visible
    s = square_sample()
    out = paste(s, np.zeros((20, 19, 3), np.uint8), np.ones((20, 19), np.uint8), label=1, at=(10, 10),
                min_visible=0.1)
    assert out["labels"].tolist() == [1]  # 5% left: dropped, only the pasted object remains
    # a patch sticking out of the image is cropped to it
    s = square_sample()
    out = paste(s, np.zeros((30, 30, 3), np.uint8), np.ones((30, 30), np.uint8), label=3, at=(25, 25))
    assert out["boxes"][-1].tolist() == [25, 25, 40, 40]


def test_rarity_sets_the_pasted_class_proportions():
    counts = [800, 150, 40, 10]
    assert class_probabilities(counts, 0.0) == pytest.approx(np.asarray(counts) / 1000)
    assert class_probabilities(counts, 1.0) == pytest.approx([0.25] * 4)
    half = class_probabilities(counts, 0.5)
    assert half == pytest.approx(np.sqrt(counts) / np.sqrt(counts).sum())
    assert class_probabilities([5, 0, 5], 1.0).tolist() == [0.5, 0.0, 0.5]  # no instances, never drawn


def test_the_dataset_pastes_rare_classes_and_keeps_boxes_on_masks(tmp_path):
    """A long-tailed shapes split with copy-paste on (rarity 1): over many reads the pasted
    objects' classes are drawn alike, and every item's boxes are its masks' extents."""
    from detseg.data import shapes
    from detseg.data.coco import CocoDataset
    paths = shapes.generate(str(tmp_path / "lt"), seed=1, num_train=40, num_val=0, imbalance=20)
    ds = CocoDataset(paths["train"]["ann_file"], paths["train"]["image_dir"], with_masks=True, cache=True,
                     copy_paste={"prob": 1.0, "max_objects": 1, "rarity": 1.0, "scale": [0.5, 1.0]})
    counts = [len(x) for x in ds.copy_paste.instances]
    assert counts[0] > 5 * counts[-1] > 0
    drawn = np.zeros(ds.num_classes)
    for seed in range(400):
        ds.copy_paste.reseed(seed)
        drawn[ds.copy_paste._draw()[2]] += 1
    assert drawn / drawn.sum() == pytest.approx([0.25] * 4, abs=0.06)
    for i in range(10):
        ds.copy_paste.reseed(i)
        item = ds[i]
        plain = ds.load_annotations(ds.ids[i], *item["image"].shape[1:])
        assert len(item["labels"]) >= 1 and len(item["labels"]) <= len(plain["labels"]) + 1
        for box, m in zip(item["boxes"].numpy(), item["masks"].numpy()):
            ys, xs = np.nonzero(m)
            assert xs.min() >= np.floor(box[0]) and xs.max() + 1 <= np.ceil(box[2])
            assert ys.min() >= np.floor(box[1]) and ys.max() + 1 <= np.ceil(box[3])


def test_copy_paste_is_off_by_default_and_its_settings_are_checked():
    from detseg.config import load_config
    assert load_config(None).data.copy_paste.prob == 0.0
    from detseg.config import ConfigError
    with pytest.raises(ConfigError, match="copy_paste.scale"):
        load_config(None, ["data.copy_paste.scale=[0,1]"])
