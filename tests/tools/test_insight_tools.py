"""tools/browse_data.py and tools/summary.py as a user runs them."""
import json

import cv2
import numpy as np
import torch

from detseg.visualize import palette


def test_browse_data_draws_the_boxes_on_the_objects(shapes_data, tmp_path, capsys):
    from detseg.config import load_config
    from detseg.data.build import build_dataset
    from tools import browse_data
    data = [f"data.train.ann_file={shapes_data['train']['ann_file']}",
            f"data.train.image_dir={shapes_data['train']['image_dir']}"]
    assert browse_data.main([*data, "--num", "3", "--output", str(tmp_path / "b")]) == 0
    ds = build_dataset(load_config(None, data), shapes_data["train"], train=False)
    colours = palette(len(ds.class_names))
    hits = total = 0
    for index in range(3):
        sample = ds[index]
        drawn = cv2.imread(str(tmp_path / "b" / f"{sample['image_id']}.png"))[..., ::-1]
        image = sample["image"].permute(1, 2, 0).numpy()
        assert drawn.shape == image.shape  # as the model sees it: resized, not the file
        for box, label in zip(sample["boxes"].round().long().tolist(), sample["labels"].tolist()):
            x0, y0, x1, y1 = box
            total += 1
            hits += bool((drawn[(y0 + y1) // 2, x0] == colours[label]).all())  # left edge, mid-height
        far = np.ones(image.shape[:2], bool)  # pixels no box or label touches are the image's own
        for x0, y0, x1, y1 in sample["boxes"].round().long().tolist():
            far[max(0, y0 - 20):y1 + 3, max(0, x0 - 3):max(x1, x0 + 130) + 3] = False
        assert (drawn[far] == image[far]).all()
    assert total and hits / total >= 0.8  # the rest hidden under another box's outline or label
    sheet = ["--num", "2", "--augment", "--sheet", "--output", str(tmp_path / "s")]
    assert browse_data.main([*data, *sheet]) == 0
    assert cv2.imread(str(tmp_path / "s" / "sheet.png")) is not None
    assert browse_data.main([*data, "--num", "0"]) == 2


def test_summary_counts_parameters_flops_and_speed(tmp_path):
    from detseg.engine.summary import count_flops, parameter_counts, synthetic_batch
    from detseg.config import load_config
    from detseg.modeling.model import build_model
    from tools import summary
    model = build_model(load_config("configs/faster_rcnn_resnet18_shapes.yaml"), 4)
    counts = parameter_counts(model)
    assert counts["model"]["total"] == sum(p.numel() for p in model.parameters())
    assert counts["backbone"]["total"] + counts["fpn"]["total"] + counts["heads.det"]["total"] == \
        counts["model"]["total"]
    assert 0 < counts["heads.det.proposals"]["total"] < counts["heads.det"]["total"]
    flops = count_flops(model, synthetic_batch(96, 128))
    # The stem convolution: 3 -> 64 channels, 7 x 7, stride 2 on 96 x 128 -> 48 x 64 outputs,
    # two FLOPs per multiply-add.
    assert flops["backbone.body.stages.stem.0"] == 2 * 64 * 48 * 64 * 3 * 7 * 7
    assert flops["total"] > flops["backbone.body"] > 0

    out = tmp_path / "summary.json"
    assert summary.main(["--size", "64", "96", "--repeats", "1", "--json", str(out),
                         "data.shapes.num_train=4", "data.shapes.num_val=2", "data.batch_size=2",
                         "data.num_workers=0", f"data.shapes.cache_dir={tmp_path / 'cache'}"]) == 0
    figures = json.loads(out.read_text())
    assert figures["images_per_s"] > 0 and figures["train_images_per_s"] > 0
    assert figures["flops"]["total"] > 0 and figures["input_size"] == [64, 96]
    assert torch.get_num_threads() >= 1
