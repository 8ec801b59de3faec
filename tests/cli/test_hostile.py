"""Hostile and broken inputs: one clear line, exit status 2, no traceback, the input untouched."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import make_model, run_cli, small_cnn
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


def _opset(version: int) -> onnx.ModelProto:
    m = conv_only()
    m.opset_import[0].version = version
    return m


def _old_prelu() -> onnx.ModelProto:
    """Opset 6: a PRelu's (C,) slope broadcast along the channels, which onnx's conversion keeps as it is and
    onnxruntime then refuses (from opset 7 on it lines up with the last axis)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], name="c"), helper.make_node("PRelu", ["z", "s"], ["p"])]
    slope = np.full(4, 0.25, np.float32)
    return make_model(nodes, [("x", ["N", 3, 5, 5])], [("p", ["N", 4, 3, 3])], {"w": W, "s": slope}, opset=6)


def _with_node(node: onnx.NodeProto, domain: str | None = None) -> onnx.ModelProto:
    m = conv_only()
    m.graph.node.append(node)
    if domain:
        m.opset_import.append(helper.make_opsetid(domain, 1))
    return m


def _cyclic() -> onnx.ModelProto:
    m = conv_only()
    m.graph.node.extend([helper.make_node("Relu", ["q"], ["p"]), helper.make_node("Relu", ["p"], ["q"])])
    return m


def _integer_input() -> onnx.ModelProto:
    m = conv_only()
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    return m


def _fixed_state() -> onnx.ModelProto:
    """x (N, 2, 4, 6) pooled to (N, 3), beside a state h (2, 3) summed to (1, 3): their Concat runs at N = 1 only,
    as a GRU whose state holds the batch on its second axis."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="c"),
        helper.make_node("GlobalAveragePool", ["z"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("ReduceSum", ["h", "axis0"], ["hs"], keepdims=1),
        helper.make_node("Concat", ["f", "hs"], ["y"], axis=1),
    ]
    inits = {"w": np.ones((3, 2, 1, 1), np.float32), "axis0": np.array([0])}
    return make_model(nodes, [("x", ["N", 2, 4, 6]), ("h", [2, 3])], [("y", ["N", 6])], inits)


def _half_input() -> onnx.ModelProto:
    """A model converted to float16 through and through, its input included."""
    m = conv_only()
    for k, t in enumerate(m.graph.initializer):
        m.graph.initializer[k].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in [*m.graph.input, *m.graph.output]:
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.checker.check_model(m)
    return m


def _local_function() -> onnx.ModelProto:
    m = conv_only()
    relu = helper.make_node("Relu", ["a"], ["b"])
    m.functions.append(helper.make_function("my", "F", ["a"], ["b"], [relu], [helper.make_opsetid("", 17)]))
    m.opset_import.append(helper.make_opsetid("my", 1))
    return m


def _batch_of_two() -> onnx.ModelProto:
    """Two samples a run, both folded into one row by a Reshape: no other batch size runs."""
    nodes = [CONV_X, helper.make_node("Reshape", ["z", "s"], ["y"])]
    return make_model(nodes, [("x", [2, 3, 5, 5])], [("y", [1, 72])], {"w": W, "s": [1, 72]})


def _convs_in_an_if() -> onnx.ModelProto:
    """silero VAD's If-less export still runs its convs in the branches of an If on the sample rate."""
    out = helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4, 3, 3])
    branch = helper.make_graph([CONV_X], "b", [], [out])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 5, 5])
    c = helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 3, 3])
    graph = helper.make_graph(nodes, "g", [x, c], [y], initializer=[numpy_helper.from_array(W.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _conv_model(nodes, inputs, inits) -> onnx.ModelProto:
    return make_model(nodes, inputs, [("z", ["N", 4, 3, 3])], inits)


CONV_X = helper.make_node("Conv", ["x", "w"], ["z"], name="c")
RESHAPED = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Conv", ["r", "w"], ["z"])]
SUMMED = [helper.make_node("Add", ["x", "x2"], ["s"]), helper.make_node("Conv", ["s", "w"], ["z"])]
RELU_ONLY = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 3, 5, 5])], [("y", ["N", 3, 5, 5])])


def _dynamically_quantized() -> onnx.ModelProto:
    """A conv as onnxruntime's dynamic quantization writes it (ddddocr's OCR model has 21 of these): the input
    quantized at run time, a ConvInteger on uint8 weights, the int32 sums scaled back to float."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("ConvInteger", ["xq", "wq", "xz", "wz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "ws"], ["scale"]),
        helper.make_node("Mul", ["accf", "scale"], ["z"]),
    ]
    inits = [
        numpy_helper.from_array(np.full((4, 3, 3, 3), 130, np.uint8), "wq"),
        numpy_helper.from_array(np.array(128, np.uint8), "wz"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
    ]
    graph = helper.make_graph(
        nodes,
        "quantized",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 5, 5])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4, 3, 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


#: a model file given to `layers`: name -> (its bytes, made from the good model's bytes; expected message)
MODEL_FILES = {
    "empty file": (lambda good: b"", "is empty"),
    "non-ONNX bytes": (lambda good: b"this is a text file, not a model\n" * 10, "not a readable ONNX model"),
    "truncated protobuf": (lambda good: good[: len(good) // 2], "ONNX model"),
    "no graph": (lambda good: onnx.ModelProto(ir_version=8).SerializeToString(), "has no graph"),
    "no conv": (lambda good: RELU_ONLY.SerializeToString(), "has no Conv node"),
    "quantized convs only": (
        lambda good: _dynamically_quantized().SerializeToString(),
        "has quantized convs only (1 ConvInteger); onnxredund analyses float convs: give it the float model",
    ),
    "opset too new": (lambda good: _opset(27).SerializeToString(), "uses opset 27"),
    "opset too old, its conversion not runnable": (
        lambda good: _old_prelu().SerializeToString(),
        "uses opset 6; onnxruntime runs opsets 7..26, and onnxruntime cannot run onnx's conversion of it",
    ),
    "unknown op": (
        lambda good: _with_node(helper.make_node("FancyOp", ["z"], ["q"])).SerializeToString(),
        "not a valid ONNX model",
    ),
    "custom domain": (
        lambda good: _with_node(
            helper.make_node("Evil", ["z"], ["q"], domain="com.evil"), "com.evil"
        ).SerializeToString(),
        "custom domain 'com.evil'",
    ),
    "cyclic graph": (lambda good: _cyclic().SerializeToString(), "not a valid ONNX model"),
    "inconsistent shapes": (
        lambda good: _conv_model([CONV_X], [("x", ["N", 2, 5, 5])], {"w": W}).SerializeToString(),
        "inconsistent",
    ),
    "input not an image": (  # one vector, no batch (an (N, 75) input is a signal now, its impulses past the Reshape)
        lambda good: _conv_model(RESHAPED, [("x", [75])], {"w": W, "s": [1, 3, 5, 5]}).SerializeToString(),
        "needs an image tensor",
    ),
    "integer input": (lambda good: _integer_input().SerializeToString(), "is not float32"),
    "a state with a fixed first axis": (  # AECMOS's GRU state [4, 1, 64]: "fixes its batch to batch_size" before
        lambda good: _fixed_state().SerializeToString(),
        "input 'h' [2, 3] fixes its first axis while 'x' has a free batch",
    ),
    "half-precision input": (
        lambda good: _half_input().SerializeToString(),
        "is float16; onnxredund feeds float32 images: convert the model with float32 inputs and outputs",
    ),
    "two inputs": (
        lambda good: _conv_model(SUMMED, [("x", ["N", 3, 5, 5]), ("x2", ["N", 3, 5, 5])], {"w": W}).SerializeToString(),
        "2 image inputs ['x', 'x2']; pass --impulse-input NAME",
    ),
    "local functions": (lambda good: _local_function().SerializeToString(), "functions"),
    "batch fixed to 2": (lambda good: _batch_of_two().SerializeToString(), "fixes its batch to 2 and cannot be freed"),
    "convs only inside an If": (
        lambda good: _convs_in_an_if().SerializeToString(),
        "its 2 convs inside If/Loop/Scan bodies",
    ),
}


def _non_finite_at(index: tuple[int, ...], value: float) -> np.ndarray:
    x = np.zeros((4, 3, 6, 6), np.float32)
    x[index] = value
    return x


ZEROS = np.zeros((4, 3, 6, 6), np.float32)

#: a .npz given to `shuffle --data`: name -> (its arrays, or raw bytes; expected message)
DATA_FILES = {
    "corrupt npz": (b"PK\x03\x04 not really a zip", "cannot read"),
    "pickled npz": ({"x": np.array([object()], dtype=object)}, "cannot read"),
    "npz without x": ({"images": np.zeros((2, 3, 6, 6))}, "no array 'x'"),
    "data of wrong shape": ({"x": np.zeros((4, 3, 7, 7), np.float32)}, "data samples have shape (3, 7, 7)"),
    "data with wrong channel count": (
        {"x": np.zeros((4, 1, 6, 6), np.float32)},
        "but the model (NCHW) takes (3, 6, 6)",
    ),
    "data of wrong dtype": ({"x": np.array([["a", "b"], ["c", "d"]])}, "must be a numeric array"),
    "NaN in data": ({"x": _non_finite_at((1, 2, 3, 4), np.nan)}, "NaN or Inf"),
    "Inf in data": ({"x": _non_finite_at((0, 0, 0, 0), np.inf)}, "NaN or Inf"),
    "labels out of range": (
        {"x": ZEROS, "y": np.array([0, 1, 2, 12])},
        "labels go up to 12 but the model has 4 classes",
    ),
    "negative labels": ({"x": ZEROS, "y": np.array([0, -1, 2, 1])}, "labels must be >= 0"),
    "labels of wrong length": ({"x": ZEROS, "y": np.array([0, 1])}, "integer labels of shape (4,)"),
}


def _outside(tmp: Path, name: str) -> Path:
    """A file next to the work folder, outside a model's folder."""
    (tmp.parent / name).write_bytes(W.tobytes())
    return tmp.parent / name


def _symlinked(tmp: Path) -> Path:
    (tmp / "link.bin").symlink_to(_outside(tmp, "secret2.bin"))
    return external(tmp, "link.bin")


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: nothing is written, and nothing may be read
    return path


def _external_past_its_file(tmp: Path) -> Path:
    (tmp / "w.bin").write_bytes(W.tobytes())
    return external(tmp, "w.bin", offset="400", length="432")


def _corrupt_mnist(tmp: Path) -> Path:
    (tmp / "mn").mkdir()
    (tmp / "mn" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    (tmp / "mn" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05")
    return tmp / "mn"


def _holding(path: Path, name: str | None) -> Path:
    """``path`` as a folder holding a file ``name`` (or as a file itself for None)."""
    if name is None:
        path.write_text("mine")
    else:
        path.mkdir()
        (path / name).write_text("mine")
    return path


def shuffle_args(good: Path) -> list:
    return ["shuffle", good, "--layer", "conv2", "--device", "cpu", "--data"]


#: everything else: name -> (CLI arguments, made from the work folder and the good model; expected message)
OTHER = {
    "not a file": (lambda tmp, good: ["layers", tmp], "is not a file"),
    "missing file": (lambda tmp, good: ["layers", tmp / "nope.onnx"], "does not exist"),
    "missing external data": (
        lambda tmp, good: ["layers", external(tmp, "weights.bin")],
        "external data file 'weights.bin' is missing",
    ),
    "external data ../": (
        lambda tmp, good: ["layers", external(tmp, f"../{_outside(tmp, 'secret.bin').name}")],
        "outside the model's folder",
    ),
    "external data absolute": (
        lambda tmp, good: ["layers", external(tmp, "/etc/passwd")],
        "outside the model's folder",
    ),
    "external data symlink": (lambda tmp, good: ["layers", _symlinked(tmp)], "is a link out of the model's folder"),
    "external data of the wrong size": (
        lambda tmp, good: ["layers", external(tmp, _sparse(tmp / "huge.bin", 2**31 + 1).name)],
        "holds 2147483649 bytes where its shape 4x3x3x3 needs 432",
    ),
    "external data past its file": (
        lambda tmp, good: ["layers", _external_past_its_file(tmp)],
        "external data runs past the end of 'w.bin' (432 bytes)",
    ),
    # the file's own basepath is ignored: data is read next to the model or not at all
    "external data basepath elsewhere": (
        lambda tmp, good: ["layers", external(tmp, "passwd", basepath="/etc")],
        "external data file 'passwd' is missing",
    ),
    "model file over 2 GB": (
        lambda tmp, good: ["layers", _sparse(tmp / "huge.onnx", 2**31 + 1)],
        "over protobuf's 2 GB limit; save its weights as external data",
    ),
    "missing data folder": (lambda tmp, good: [*shuffle_args(good), tmp / "nodata"], "not found"),
    "bad synthetic spec": (lambda tmp, good: [*shuffle_args(good), "synthetic:lots"], "bad synthetic spec"),
    "corrupt MNIST folder": (lambda tmp, good: [*shuffle_args(good), _corrupt_mnist(tmp)], "truncated or corrupt"),
    "unknown layer": (
        lambda tmp, good: ["shuffle", good, "--layer", "conv9", "--data", "synthetic:4"],
        "valid layers: 0=conv1, 1=conv2",
    ),
    "unknown channel": (
        lambda tmp, good: ["shuffle", good, "--layer", "conv2", "--channels", "2,17", "--data", "synthetic:4"],
        "channel 17",
    ),
    "output path is a file": (lambda tmp, good: ["impulse", good, "--out", _holding(tmp / "f.txt", None)], "is a file"),
    "output not writable": (
        lambda tmp, good: ["impulse", good, "--out", "/proc/onnxredund-out"],
        "cannot create output folder",
    ),
    "output folder not empty": (
        lambda tmp, good: ["impulse", good, "--out", _holding(tmp / "full", "keep.txt")],
        "--overwrite",
    ),
    "impulse outside the input": (lambda tmp, good: ["impulse", good, "--position", "40,2"], "outside the 6 x 6 input"),
}


def build_case(name: str, tmp: Path) -> tuple[list, str]:
    """Files for one case in ``tmp``; returns (CLI args, expected message fragment)."""
    good = tmp / "good.onnx"
    onnx.save(small_cnn()[0], str(good))
    if name in MODEL_FILES:
        make_bytes, message = MODEL_FILES[name]
        (tmp / "case.onnx").write_bytes(make_bytes(good.read_bytes()))
        return ["layers", tmp / "case.onnx"], message
    if name in DATA_FILES:
        content, message = DATA_FILES[name]
        npz = tmp / "d.npz"
        if isinstance(content, bytes):
            npz.write_bytes(content)
        else:
            np.savez(npz, **content)
        return [*shuffle_args(good), npz], message
    make_args, message = OTHER[name]
    return make_args(tmp, good), message


CASES = [*MODEL_FILES, *DATA_FILES, *OTHER]


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
    from onnxredund import atomic as outputs

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
    from onnxredund import atomic as outputs

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
    from onnxredund.atomic import atomic_write

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
