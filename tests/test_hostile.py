"""Hostile and broken inputs: one clear line, exit status 2, no traceback, the input untouched."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, run_cli, small_cnn
from onnx import helper, numpy_helper

W = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)


def conv_only(opset=17, **kw):
    return make_model(
        [helper.make_node("Conv", ["x", "w"], ["z"], name="c")],
        [("x", ["N", 3, 5, 5])],
        [("z", ["N", 4, 3, 3])],
        {"w": W},
        opset=opset,
        **kw,
    )


def external(tmp_path: Path, location: str, **keys: str) -> Path:
    model = conv_only()
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    for key, value in keys.items():
        t.external_data.add(key=key, value=value)
    path = tmp_path / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def build_case(name: str, tmp: Path) -> tuple[list, str]:
    """Files for one case; returns (CLI args, expected message fragment)."""
    good = tmp / "good.onnx"
    onnx.save(small_cnn()[0], str(good))
    npz = tmp / "d.npz"
    shuffle = ["shuffle", good, "--layer", "conv2", "--device", "cpu", "--data"]
    if name == "not a file":
        return ["layers", tmp], "is not a file"
    if name == "missing file":
        return ["layers", tmp / "nope.onnx"], "does not exist"
    if name == "empty file":
        (tmp / "e.onnx").write_bytes(b"")
        return ["layers", tmp / "e.onnx"], "is empty"
    if name == "non-ONNX bytes":
        (tmp / "t.onnx").write_bytes(b"this is a text file, not a model\n" * 10)
        return ["layers", tmp / "t.onnx"], "not a readable ONNX model"
    if name == "truncated protobuf":
        raw = good.read_bytes()
        (tmp / "t.onnx").write_bytes(raw[: len(raw) // 2])
        return ["layers", tmp / "t.onnx"], "ONNX model"
    if name == "no graph":
        (tmp / "g.onnx").write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
        return ["layers", tmp / "g.onnx"], "has no graph"
    if name == "no conv":
        m = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 3, 5, 5])], [("y", ["N", 3, 5, 5])])
        onnx.save(m, str(tmp / "r.onnx"))
        return ["layers", tmp / "r.onnx"], "has no Conv node"
    if name == "opset too new":
        m = conv_only()
        m.opset_import[0].version = 27
        (tmp / "o.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "o.onnx"], "uses opset 27"
    if name == "opset too old":
        m = conv_only()
        m.opset_import[0].version = 5
        (tmp / "o.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "o.onnx"], "uses opset 5"
    if name == "unknown op":
        m = conv_only()
        m.graph.node.append(helper.make_node("FancyOp", ["z"], ["q"]))
        (tmp / "u.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "u.onnx"], "not a valid ONNX model"
    if name == "custom domain":
        m = conv_only()
        m.graph.node.append(helper.make_node("Evil", ["z"], ["q"], domain="com.evil"))
        m.opset_import.append(helper.make_opsetid("com.evil", 1))
        (tmp / "c.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "c.onnx"], "custom domain 'com.evil'"
    if name == "cyclic graph":
        m = conv_only()
        m.graph.node.append(helper.make_node("Relu", ["q"], ["p"]))
        m.graph.node.append(helper.make_node("Relu", ["p"], ["q"]))
        (tmp / "y.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "y.onnx"], "not a valid ONNX model"
    if name == "inconsistent shapes":
        m = make_model(
            [helper.make_node("Conv", ["x", "w"], ["z"], name="c")],
            [("x", ["N", 2, 5, 5])],
            [("z", ["N", 4, 3, 3])],
            {"w": W},
        )
        (tmp / "s.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "s.onnx"], "inconsistent"
    if name == "input not an image":
        m = make_model(
            [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Conv", ["r", "w"], ["z"])],
            [("x", ["N", 75])],
            [("z", ["N", 4, 3, 3])],
            {"w": W, "s": [-1, 3, 5, 5]},
        )
        (tmp / "i.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "i.onnx"], "needs an image tensor"
    if name == "integer input":
        m = conv_only()
        m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
        (tmp / "i.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "i.onnx"], "is not float32"
    if name == "two inputs":
        m = make_model(
            [helper.make_node("Add", ["x", "x2"], ["s"]), helper.make_node("Conv", ["s", "w"], ["z"])],
            [("x", ["N", 3, 5, 5]), ("x2", ["N", 3, 5, 5])],
            [("z", ["N", 4, 3, 3])],
            {"w": W},
        )
        (tmp / "i.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "i.onnx"], "2 data inputs"
    if name == "missing external data":
        return ["layers", external(tmp, "weights.bin")], "external data file 'weights.bin' is missing"
    if name == "external data ../":
        (tmp.parent / "secret.bin").write_bytes(W.tobytes())
        return ["layers", external(tmp, "../secret.bin")], "outside the model's folder"
    if name == "external data absolute":
        return ["layers", external(tmp, "/etc/passwd")], "outside the model's folder"
    if name == "external data symlink":
        (tmp.parent / "secret2.bin").write_bytes(W.tobytes())
        (tmp / "link.bin").symlink_to(tmp.parent / "secret2.bin")
        return ["layers", external(tmp, "link.bin")], "is a link out of the model's folder"
    if name == "external data of the wrong size":
        path = external(tmp, "huge.bin")
        with open(tmp / "huge.bin", "wb") as f:
            f.truncate(2**31 + 1)  # sparse: nothing is written, and nothing may be read
        return ["layers", path], "holds 2147483649 bytes where its shape 4x3x3x3 needs 432"
    if name == "external data past its file":
        path = external(tmp, "w.bin", offset="400", length="432")
        (tmp / "w.bin").write_bytes(W.tobytes())
        return ["layers", path], "external data runs past the end of 'w.bin' (432 bytes)"
    if name == "external data basepath elsewhere":
        # the file's own basepath is ignored: data is read next to the model or not at all
        return ["layers", external(tmp, "passwd", basepath="/etc")], "external data file 'passwd' is missing"
    if name == "model file over 2 GB":
        path = tmp / "huge.onnx"
        with open(path, "wb") as f:
            f.truncate(2**31 + 1)
        return ["layers", path], "over protobuf's 2 GB limit; save its weights as external data"
    if name == "local functions":
        m = conv_only()
        m.functions.append(
            helper.make_function(
                "my", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], [helper.make_opsetid("", 17)]
            )
        )
        m.opset_import.append(helper.make_opsetid("my", 1))
        (tmp / "f.onnx").write_bytes(m.SerializeToString())
        return ["layers", tmp / "f.onnx"], "functions"
    if name == "corrupt npz":
        npz.write_bytes(b"PK\x03\x04 not really a zip")
        return [*shuffle, npz], "cannot read"
    if name == "pickled npz":
        np.savez(npz, x=np.array([object()], dtype=object))
        return [*shuffle, npz], "cannot read"
    if name == "npz without x":
        np.savez(npz, images=np.zeros((2, 3, 6, 6)))
        return [*shuffle, npz], "no array 'x'"
    if name == "data of wrong shape":
        np.savez(npz, x=np.zeros((4, 3, 7, 7), np.float32))
        return [*shuffle, npz], "data samples have shape (3, 7, 7)"
    if name == "data with wrong channel count":
        np.savez(npz, x=np.zeros((4, 1, 6, 6), np.float32))
        return [*shuffle, npz], "but the model (NCHW) takes (3, 6, 6)"
    if name == "data of wrong dtype":
        np.savez(npz, x=np.array([["a", "b"], ["c", "d"]]))
        return [*shuffle, npz], "must be a numeric array"
    if name == "NaN in data":
        x = np.zeros((4, 3, 6, 6), np.float32)
        x[1, 2, 3, 4] = np.nan
        np.savez(npz, x=x)
        return [*shuffle, npz], "NaN or Inf"
    if name == "Inf in data":
        x = np.zeros((4, 3, 6, 6), np.float32)
        x[0, 0, 0, 0] = np.inf
        np.savez(npz, x=x)
        return [*shuffle, npz], "NaN or Inf"
    if name == "labels out of range":
        np.savez(npz, x=np.zeros((4, 3, 6, 6), np.float32), y=np.array([0, 1, 2, 12]))
        return [*shuffle, npz], "labels go up to 12 but the model has 4 classes"
    if name == "negative labels":
        np.savez(npz, x=np.zeros((4, 3, 6, 6), np.float32), y=np.array([0, -1, 2, 1]))
        return [*shuffle, npz], "labels must be >= 0"
    if name == "labels of wrong length":
        np.savez(npz, x=np.zeros((4, 3, 6, 6), np.float32), y=np.array([0, 1]))
        return [*shuffle, npz], "integer labels of shape (4,)"
    if name == "missing data folder":
        return [*shuffle, tmp / "nodata"], "not found"
    if name == "bad synthetic spec":
        return [*shuffle, "synthetic:lots"], "bad synthetic spec"
    if name == "corrupt MNIST folder":
        (tmp / "mn").mkdir()
        (tmp / "mn" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
        (tmp / "mn" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05")
        return [*shuffle, tmp / "mn"], "truncated or corrupt"
    if name == "unknown layer":
        return ["shuffle", good, "--layer", "conv9", "--data", "synthetic:4"], "valid layers: 0=conv1, 1=conv2"
    if name == "unknown channel":
        return ["shuffle", good, "--layer", "conv2", "--channels", "2,17", "--data", "synthetic:4"], "channel 17"
    if name == "output path is a file":
        (tmp / "file.txt").write_text("mine")
        return ["impulse", good, "--out", tmp / "file.txt"], "is a file"
    if name == "output not writable":
        return ["impulse", good, "--out", "/proc/onnxredund-out"], "cannot create output folder"
    if name == "output folder not empty":
        (tmp / "full").mkdir()
        (tmp / "full" / "keep.txt").write_text("mine")
        return ["impulse", good, "--out", tmp / "full"], "--overwrite"
    if name == "impulse outside the input":
        return ["impulse", good, "--position", "40,2"], "outside the 6 x 6 input"
    raise AssertionError(name)


CASES = [
    "not a file",
    "missing file",
    "empty file",
    "non-ONNX bytes",
    "truncated protobuf",
    "no graph",
    "no conv",
    "opset too new",
    "opset too old",
    "unknown op",
    "custom domain",
    "cyclic graph",
    "inconsistent shapes",
    "input not an image",
    "integer input",
    "two inputs",
    "missing external data",
    "external data ../",
    "external data absolute",
    "external data symlink",
    "external data of the wrong size",
    "external data past its file",
    "external data basepath elsewhere",
    "model file over 2 GB",
    "local functions",
    "corrupt npz",
    "pickled npz",
    "npz without x",
    "data of wrong shape",
    "data with wrong channel count",
    "data of wrong dtype",
    "NaN in data",
    "Inf in data",
    "labels out of range",
    "negative labels",
    "labels of wrong length",
    "missing data folder",
    "bad synthetic spec",
    "corrupt MNIST folder",
    "unknown layer",
    "unknown channel",
    "output path is a file",
    "output not writable",
    "output folder not empty",
    "impulse outside the input",
]


def snapshot(root: Path) -> dict:
    """Bytes (for the sparse 2 GB file, its size) and mtime of every file under root."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
    return {p: (p.read_bytes() if p.stat().st_size < 2**24 else p.stat().st_size, p.stat().st_mtime_ns) for p in files}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_and_status_2(case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args, message = build_case(case, work)
    before = snapshot(tmp_path)
    r = run_cli(*args)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    after = snapshot(tmp_path)
    assert {p: v for p, v in after.items() if p in before} == before  # nothing the user had changed
    assert not [p for p in after if p not in before and p.name.startswith(".")]  # no temp files left


def test_disk_full_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    from onnxredund import outputs

    target = tmp_path / "result.json"
    target.write_text("old")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(outputs.OnnxRedundError, match="No space left on device"):
        outputs.write_json(target, {"a": 1})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_disk_full_through_the_cli(tmp_path, monkeypatch):
    from onnxredund import outputs

    good = tmp_path / "good.onnx"
    onnx.save(small_cnn()[0], str(good))

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "fsync", full)
    r = run_cli("impulse", good, "--out", tmp_path / "out", "--device", "cpu")
    assert r.exit_code == 2 and "No space left on device" in r.stderr and len(r.stderr.splitlines()) == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_no_custom_op_library_is_ever_registered():
    import onnxredund

    src = Path(onnxredund.__file__).parent
    text = "".join(p.read_text() for p in src.glob("*.py"))
    assert "register_custom_ops_library" not in text
    assert "allow_pickle=True" not in text and "import pickle" not in text


def test_external_data_inside_the_folder_is_read(tmp_path):
    path = external(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(W.tobytes())
    r = run_cli("layers", path, "--json")
    assert r.exit_code == 0, r.stderr
    assert "3" in r.stdout


def test_initializer_names_are_kept(tmp_path):
    # a sanity check that 'external' builds the intended model
    m = onnx.load(str(external(tmp_path, "w.bin")), load_external_data=False)
    assert m.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert numpy_helper is not None


def test_outputs_get_the_usual_file_mode(tmp_path):
    from onnxredund.outputs import atomic_write

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
