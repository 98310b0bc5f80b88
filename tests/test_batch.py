"""The typed batch: fields, the mapping-style reads kept for dict-batch code, Batch.of."""
import pytest
import torch

from detseg.data.transforms import collate
from detseg.structures import Batch


def _item(h, w, image_id):
    return {"image": torch.zeros(3, h, w, dtype=torch.uint8), "orig_size": (2 * h, 2 * w),
            "image_id": image_id, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


def test_collate_gives_a_typed_batch_that_reads_like_the_old_dict():
    batch = collate([_item(40, 50, 7), None, _item(30, 70, 9)])
    assert isinstance(batch, Batch)
    assert batch.images.shape == (2, 3, 64, 96) and batch.image_sizes == [(40, 50), (30, 70)]
    assert batch.orig_sizes == [(80, 100), (60, 140)] and batch.image_ids == [7, 9]
    assert batch.num_skipped == 1 and batch.semantic is None and batch.proposals is None
    assert batch["image_ids"] is batch.image_ids and batch.get("proposals", "none") == "none"
    assert "semantic" not in batch and "targets" in batch
    with pytest.raises(KeyError):
        batch["semantic"]
    assert batch.padded_hw == (64, 96)
    resized = batch.replace(pixels=torch.zeros(2, 3, 128, 160))
    assert resized.padded_hw == (128, 160) and batch.pixels is None  # replace copies


def test_batch_of_a_dict_fills_sizes_and_refuses_unknown_keys():
    images = torch.zeros(2, 3, 32, 48, dtype=torch.uint8)
    batch = Batch.of({"images": images})
    assert batch.image_sizes == [(32, 48), (32, 48)] and batch.orig_sizes == batch.image_sizes
    assert Batch.of(batch) is batch
    with pytest.raises(KeyError, match="pixel"):
        Batch.of({"images": images, "pixel": images})
