import numpy as np
import pytest
from PIL import Image

from detseg.data.io import DataError, read_image, read_image_size


def test_modes_become_rgb_uint8(tmp_path):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    Image.fromarray(np.dstack([gray, gray]), "LA").save(tmp_path / "la.png")
    rgba = np.zeros((8, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "p.png")
    g16 = (gray.astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "g16.png")  # 16-bit PNG
    for name in ["g.png", "la.png", "p.png", "g16.png"]:
        out = read_image(tmp_path / name)
        assert out.shape == (8, 16, 3) and out.dtype == np.uint8, name
        np.testing.assert_array_equal(out[..., 0], gray, err_msg=name)
        np.testing.assert_array_equal(out[..., 0], out[..., 2], err_msg=name)
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (8, 16, 3) and (out[..., 0] == 200).all() and (out[..., 1] == 0).all()


def test_exif_orientation_applied(tmp_path):
    # A 20x10 (w x h) image whose left half is white, stored with orientation 6 (rotate 90 CW).
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (20, 10, 3)  # upright: portrait
    assert read_image_size(tmp_path / "r.jpg") == (20, 10)
    # Rotated 90 degrees clockwise, the white left half becomes the top half.
    assert out[:8].mean() > 200 and out[12:].mean() < 50


@pytest.mark.parametrize("content", [None, b"", b"this is not an image", "truncated"])
def test_bad_files_raise_data_error_naming_path(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match="bad.jpg"):
        read_image(path)
