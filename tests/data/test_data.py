"""Data sources: MNIST IDX against known facts, .npz, synthetic, checksummed download."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from onnxredund import data as D
from onnxredund.data import mnist as MN
from onnxredund.errors import OnnxRedundError
from onnxredund.model import ModelInput

TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_test_split_known_facts(mnist_dir):
    ds = D.load_mnist(mnist_dir, "test")
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == np.float32
    assert 0.0 == ds.x.min() and ds.x.max() == 1.0
    assert ds.y[0] == 7
    assert np.bincount(ds.y).tolist() == TEST_COUNTS


def test_mnist_train_first_label(mnist_dir):
    assert D.read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")[0] == 5


def test_raw_idx_files_work_too(mnist_dir, tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    assert D.load_mnist(tmp_path, "test").y[0] == 7


def test_truncated_idx_is_a_clear_error(mnist_dir, tmp_path):
    raw = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw[:-10])
    with pytest.raises(OnnxRedundError, match="truncated or corrupt"):
        D.read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    (tmp_path / "junk").write_bytes(b"\x1f\x8bnot gzip at all")
    with pytest.raises(OnnxRedundError, match="cannot read IDX"):
        D.read_idx(tmp_path / "junk")
    (tmp_path / "magic").write_bytes(b"PK\x03\x04....")
    with pytest.raises(OnnxRedundError, match="magic"):
        D.read_idx(tmp_path / "magic")


def test_mismatched_image_and_label_counts(mnist_dir, tmp_path):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    shutil.copy(mnist_dir / "train-labels-idx1-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(OnnxRedundError, match="10000 images but 60000 labels"):
        D.load_mnist(tmp_path, "test")


def test_lookup_order_env_then_cache_then_download(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXREDUND_DATA", str(mnist_dir))
    assert MN.locate_mnist() == mnist_dir
    monkeypatch.setenv("ONNXREDUND_DATA", str(tmp_path / "empty"))
    # nothing in the env folder nor the cache: download from a (local) mirror, checksums verified
    mirror = "file://" + str(mnist_dir) + "/"
    found = MN.locate_mnist(mirrors=(mirror,))
    assert found == MN.mnist_cache_dir() and D.load_dataset("mnist").y[0] == 7
    assert MN.locate_mnist(mirrors=()) == found  # now cached: no download needed


def test_download_rejects_a_bad_checksum(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for stem in MN.MNIST_FILES:
        (mirror / f"{stem}.gz").write_bytes(b"tampered")
    with pytest.raises(OnnxRedundError, match="checksum"):
        MN.download_mnist(tmp_path / "dest", mirrors=("file://" + str(mirror) + "/",))
    assert not any((tmp_path / "dest").iterdir())  # nothing half-written is left


def test_unreachable_mirror_says_how_to_provide_files(tmp_path):
    with pytest.raises(OnnxRedundError, match="`data` DIR"):
        MN.download_mnist(tmp_path, mirrors=("file:///nonexistent/",))


def test_npz(tmp_path):
    x = np.random.default_rng(0).random((4, 3, 5, 5))
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 1]))
    ds = D.load_dataset(str(tmp_path / "d.npz"))
    assert ds.x.dtype == np.float32 and ds.y.tolist() == [0, 1, 2, 1]
    np.savez(tmp_path / "noy.npz", x=x)
    assert D.load_dataset(str(tmp_path / "noy.npz")).y is None
    np.savez(tmp_path / "nan.npz", x=np.full((2, 1, 2, 2), np.nan))
    with pytest.raises(OnnxRedundError, match="NaN"):
        D.load_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "noх.npz", images=x)
    with pytest.raises(OnnxRedundError, match="no array 'x'"):
        D.load_npz(tmp_path / "noх.npz")


def test_synthetic_is_seeded():
    a = D.load_dataset("synthetic:5", seed=3, sample_shape=(2, 4, 4))
    b = D.load_dataset("synthetic:5", seed=3, sample_shape=(2, 4, 4))
    assert a.x.shape == (5, 2, 4, 4) and a.y is None
    np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(OnnxRedundError, match="synthetic:N"):
        D.load_dataset("synthetic:0", sample_shape=(1, 2, 2))


def test_conform_moves_channels_and_rejects_mismatch():
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert D.conform(x, ModelInput("x", "float32", (28, 28, 1), layout="NHWC")).shape == (2, 28, 28, 1)
    with pytest.raises(OnnxRedundError, match="takes"):
        D.conform(x, ModelInput("x", "float32", (3, 28, 28), layout="NCHW"))


def test_limit_keeps_the_first_samples_and_says_so_in_the_name():
    ds = D.synthetic(10, (1, 2, 2), np.random.default_rng(0))
    five = ds.limit(5)
    assert len(five) == 5 and five.name == "synthetic:10[:5]" and np.array_equal(five.x, ds.x[:5])
    assert ds.limit(None) is ds and ds.limit(50).x.shape[0] == 10


def test_image_folder_options_on_other_data_are_refused_not_ignored(tmp_path, mnist_dir):
    inputs = [ModelInput("x", "float32", (1, 28, 28), layout="NCHW")]
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 28, 28), np.float32))
    cases = [
        ("synthetic:4", {"preprocess": "scale=1/255"}, "`preprocess` applies to image folders; synthetic data"),
        (str(mnist_dir), {"preprocess": "scale=1/255"}, "`preprocess` applies to image folders; MNIST"),
        (str(tmp_path / "d.npz"), {"labels": "y.csv"}, "`labels` applies to image folders; a .npz file"),
        ("synthetic:4", {"skip_bad_images": True}, "`skip_bad_images` applies to image folders"),
    ]
    for spec, options, message in cases:
        with pytest.raises(OnnxRedundError, match=message):
            D.load_dataset(spec, inputs=inputs, **options)
    assert len(D.load_dataset(str(mnist_dir), inputs=inputs, skip_bad_images=False)) == 10000  # test split
