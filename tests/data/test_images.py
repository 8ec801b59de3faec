"""Image folders: lazy decoding through a preprocessing spec, labels by subfolder or CSV, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxredund.data import load_dataset, parse_preprocess
from onnxredund.data.images import Preprocess
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ModelInput

RGB = ModelInput("x", "float32", (3, 6, 8), layout="NCHW")
GRAY_NHWC = ModelInput("x", "float32", (6, 8, 1), layout="NHWC")


def write(path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)


def pixels(seed: int, shape=(6, 8, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_spec_parses_fractions_sizes_and_lists_and_refuses_unknown_keys():
    spec = parse_preprocess("resize=256,crop=224,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,channels=bgr")
    assert spec.resize == 256 and spec.crop == (224, 224) and spec.channels == "bgr"
    assert spec.scale == pytest.approx(1 / 255) and spec.mean == (0.485, 0.456, 0.406)
    assert parse_preprocess("resize=320x240").resize == (320, 240)
    assert str(parse_preprocess(None)) == "scale=1/255,mean=0,std=1"
    for bad, message in [
        ("size=3", "unknown key 'size'"),
        ("scale=x", "not a number"),
        ("crop=0", "WxH"),
        ("channels=cmyk", "use one of rgb, bgr, gray"),
        ("std=0", "must not be 0"),
    ]:
        with pytest.raises(OnnxRedundError, match=message):
            parse_preprocess(bad)


def test_class_subfolders_give_labels_in_sorted_order_and_pixels_in_the_model_layout(tmp_path):
    write(tmp_path / "cat" / "a.png", pixels(0))
    write(tmp_path / "dog" / "b.png", pixels(1))
    write(tmp_path / "cat" / "c.png", pixels(2))
    (tmp_path / "notes.txt").write_text("not an image: passed over")
    data = load_dataset(str(tmp_path), inputs=[RGB])
    assert len(data) == 3 and data.y.tolist() == [0, 0, 1]  # cat/a, cat/c, dog/b
    assert data.describe()["classes"] == ["cat", "dog"] and data.describe()["labels"] == "subfolders"
    x = data.arrays(0, 3)["x"]
    assert x.shape == (3, 3, 6, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[1], pixels(2).transpose(2, 0, 1) / 255.0, atol=1e-6)  # scale=1/255 by default


def test_gray_nhwc_with_mean_std_and_bgr(tmp_path):
    write(tmp_path / "g.png", pixels(3, (6, 8)), "L")
    data = load_dataset(str(tmp_path), inputs=[GRAY_NHWC], preprocess="scale=1,mean=100,std=2")
    assert data.y is None
    np.testing.assert_allclose(data.arrays(0, 1)["x"][0, :, :, 0], (pixels(3, (6, 8)) - 100.0) / 2.0)
    write(tmp_path / "rgb" / "c.png", pixels(4))
    bgr = load_dataset(str(tmp_path / "rgb"), inputs=[RGB], preprocess="channels=bgr,scale=1")
    np.testing.assert_array_equal(bgr.arrays(0, 1)["x"][0], pixels(4)[:, :, ::-1].transpose(2, 0, 1))


def test_resize_shorter_side_then_centre_crop(tmp_path):
    write(tmp_path / "wide.png", pixels(5, (20, 40, 3)))
    data = load_dataset(str(tmp_path), inputs=[RGB], preprocess="resize=6,crop=8x6,scale=1")
    expected = np.asarray(Image.fromarray(pixels(5, (20, 40, 3))).resize((12, 6), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(data.arrays(0, 1)["x"][0], expected[:, 2:10].transpose(2, 0, 1).astype(np.float32))


def test_labels_from_a_csv_override_and_must_cover_every_image(tmp_path):
    write(tmp_path / "img" / "a.png", pixels(0))
    write(tmp_path / "img" / "b.png", pixels(1))
    (tmp_path / "labels.csv").write_text("file,label\nb.png,3\na.png,1\n")
    data = load_dataset(str(tmp_path / "img"), inputs=[RGB], labels=tmp_path / "labels.csv")
    assert data.y.tolist() == [1, 3]
    (tmp_path / "short.csv").write_text("a.png,1\n")
    with pytest.raises(OnnxRedundError, match=r"1 images have no label in .*short.csv \(first: b.png\)"):
        load_dataset(str(tmp_path / "img"), inputs=[RGB], labels=tmp_path / "short.csv")


def test_bad_files_are_named_with_the_fix(tmp_path):
    write(tmp_path / "ok.png", pixels(0))
    (tmp_path / "fake.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(OnnxRedundError, match=r"fake.jpg is not a readable image .*remove or replace it"):
        load_dataset(str(tmp_path), inputs=[RGB])
    (tmp_path / "fake.jpg").unlink()
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])  # a header that opens, pixels that do not
    data = load_dataset(str(tmp_path), inputs=[RGB])
    with pytest.raises(OnnxRedundError, match=r"cut.png is not a readable image"):
        data.arrays(0, 2)


def test_skip_bad_images_leaves_out_what_does_not_decode_and_keeps_labels_with_their_images(tmp_path):
    for cls, n in (("cat", 0), ("cat", 1), ("dog", 2), ("dog", 3)):
        write(tmp_path / cls / f"{n}.png", pixels(n))
    raw = (tmp_path / "cat" / "1.png").read_bytes()
    (tmp_path / "cat" / "1.png").write_bytes(raw[: len(raw) // 2])  # its header opens, its pixels do not
    (tmp_path / "dog" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OnnxRedundError, match=r"x.jpg is not a readable image .*`skip_bad_images`"):
        load_dataset(str(tmp_path), inputs=[RGB])
    data = load_dataset(str(tmp_path), inputs=[RGB], skip_bad_images=True)
    assert [f.name for f in data.files] == ["0.png", "2.png", "3.png"] and data.y.tolist() == [0, 1, 1]
    assert data.describe()["bad_images_skipped"] == 2 and data.info["classes"] == ["cat", "dog"]
    np.testing.assert_array_equal(
        data.arrays(0, 3)["x"][1],
        load_dataset(str(tmp_path / "dog"), inputs=[RGB], skip_bad_images=True).arrays(0, 1)["x"][0],
    )


def test_an_image_that_fails_mid_run_is_one_line_naming_it_and_what_was_kept(tmp_path):
    from builders import run_cli, save, small_cnn

    for n in range(6):
        write(tmp_path / "img" / f"{n}.png", pixels(n, (6, 6, 3)))
    raw = (tmp_path / "img" / "4.png").read_bytes()
    (tmp_path / "img" / "4.png").write_bytes(raw[: len(raw) // 2])
    model = save(small_cnn()[0], tmp_path)
    r = run_cli("-q", "audit", model, "--data", tmp_path / "img", "--batch-size", "2", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "Traceback" not in r.stderr and "unexpected" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "4.png is not a readable image" in r.stderr and "--skip-bad-images" in r.stderr
    assert "is kept in" in r.stderr and (tmp_path / "out" / "impulse.json").exists()


def test_images_that_cannot_give_the_models_channels_are_refused(tmp_path):
    write(tmp_path / "a.png", pixels(0))
    with pytest.raises(OnnxRedundError, match=r"takes 3 channels.*channels=gray gives 1"):
        load_dataset(str(tmp_path), inputs=[RGB], preprocess="channels=gray")
    four = ModelInput("x", "float32", (4, 6, 8), layout="NCHW")
    with pytest.raises(OnnxRedundError, match="takes 4 channels"):
        load_dataset(str(tmp_path), inputs=[four])
    write(tmp_path / "deep" / "d.png", np.full((6, 8), 40000, np.uint16))  # 16-bit gray
    deep = load_dataset(str(tmp_path / "deep"), inputs=[RGB])
    with pytest.raises(OnnxRedundError, match=r"more than 8-bit.*channels=gray"):
        deep.arrays(0, 1)
    assert Preprocess().channels is None


def test_a_size_that_does_not_fit_says_which(tmp_path):
    write(tmp_path / "a.png", pixels(0, (10, 10, 3)))
    data = load_dataset(str(tmp_path), inputs=[RGB], preprocess="crop=5")
    with pytest.raises(OnnxRedundError, match=r"gives 5x5 images but input 'x' takes 8x6 \(WxH\)"):
        data.arrays(0, 1)


def test_a_folder_larger_than_a_batch_is_read_batch_by_batch_and_limited(tmp_path):
    for i in range(7):
        write(tmp_path / f"{i}.png", pixels(i))
    data = load_dataset(str(tmp_path), inputs=[RGB]).limit(5)
    assert len(data) == 5 and data.name.endswith("[:5]")
    np.testing.assert_allclose(data.arrays(4, 5)["x"][0], pixels(4).transpose(2, 0, 1) / 255, atol=1e-6)
    assert data.describe()["fingerprint"] == load_dataset(str(tmp_path), inputs=[RGB]).describe()["fingerprint"]


def test_without_resize_or_crop_images_are_resized_to_the_model_and_only_2d_inputs_take_images(tmp_path):
    write(tmp_path / "big.png", pixels(6, (12, 16, 3)))
    x = load_dataset(str(tmp_path), inputs=[RGB], preprocess="scale=1").arrays(0, 1)["x"][0]
    expected = np.asarray(Image.fromarray(pixels(6, (12, 16, 3))).resize((8, 6), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x, expected.transpose(2, 0, 1).astype(np.float32))
    signal = ModelInput("x", "float32", (1, 32), layout="NCL")
    with pytest.raises(OnnxRedundError, match="image folders feed 2-D image inputs"):
        load_dataset(str(tmp_path), inputs=[signal])
