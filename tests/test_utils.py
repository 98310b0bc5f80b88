"""detseg.utils: all-or-nothing writes."""
import os

import cv2
import numpy as np
import pytest

from detseg.utils import atomic_path, atomic_write, write_json_atomic


def test_an_error_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic({"v": 1}, str(path))
    with pytest.raises(RuntimeError):
        with atomic_write(str(path), "w") as f:
            f.write('{"v": 2')  # torn
            raise RuntimeError("killed")
    assert path.read_text() == '{"v": 1}'
    assert os.listdir(tmp_path) == ["out.json"]
    write_json_atomic({"v": 3}, str(path))
    assert path.read_text() == '{"v": 3}'


def test_a_writer_by_name_writes_through_the_temp_path(tmp_path):
    path = tmp_path / "picture.png"
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    with atomic_path(str(path)) as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        assert cv2.imwrite(tmp, image)
        assert not path.exists()  # not there until the block ends
    assert np.array_equal(cv2.imread(str(path)), image)
    assert os.listdir(tmp_path) == ["picture.png"]
