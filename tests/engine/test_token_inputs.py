"""Models whose input is no image: integers (token ids, a file's bytes) embedded before the convs (Google's Magika,
character CNNs), or floats without a channel axis that the graph makes one of (DNSMOS's spectrogram): loaded,
impulses at the first conv's input, swept on their data; and constants that are infinite on purpose (jax2tf's
-inf floor of a Max) are not taken for broken weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxredund.analyses.impulse import run_impulse
from onnxredund.analyses.shuffle import run_shuffle
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.errors import OnnxRedundError

RNG = np.random.default_rng(0)


def token_cnn(*, floor: float | None = None, conv_weight: np.ndarray | None = None) -> onnx.ModelProto:
    """tokens (N, 16) int64 -> embedding (10, 3) -> (N, 3, 16) -> conv1 (4, k 3) -> Relu -> conv2 (5, k 3) ->
    mean -> Gemm -> logits (N, 5); ``floor``: a Max with that constant after conv2 (jax2tf writes -inf there)."""
    w1 = RNG.normal(size=(4, 3, 3)) if conv_weight is None else conv_weight
    inits = {
        "emb": RNG.normal(size=(10, 3)),
        "w1": w1,
        "b1": RNG.normal(size=4),
        "w2": RNG.normal(size=(5, 4, 3)),
        "fc": RNG.normal(size=(5, 5)),
    }
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["e"]),
        helper.make_node("Transpose", ["e"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["t", "w1", "b1"], ["a1"], name="conv1", pads=[1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["a2"], name="conv2", pads=[1, 1]),
    ]
    last = "a2"
    if floor is not None:
        inits["floor"] = np.array(floor)
        nodes.append(helper.make_node("Max", ["a2", "floor"], ["m2"]))
        last = "m2"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tokens",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def tokens(n: int = 24) -> Dataset:
    return Dataset({"tokens": RNG.integers(0, 10, (n, 16))}, RNG.integers(0, 5, n), "tokens")


def test_a_model_whose_only_input_holds_token_ids_loads_with_its_convs():
    model = load_model_proto(token_cnn())
    assert [layer.name for layer in model.layers] == ["conv1", "conv2"]
    assert model.input_name == "tokens" and model.image_input.layout == ""  # the data's input, not an image


def test_impulses_of_a_token_model_go_to_the_first_convs_input_as_if_put_there():
    model = load_model_proto(token_cnn())
    auto, there = run_impulse(model, device="cpu"), run_impulse(model, device="cpu", at="t")
    assert "impulses put at 't', the first conv's input: the input 'tokens' holds integers" in auto.notes[0]
    for a, b in zip(auto.layers, there.layers, strict=True):
        np.testing.assert_array_equal(a.ncc, b.ncc)


def test_a_token_models_sweep_takes_integer_data_and_its_fast_path_equals_the_direct_one():
    model = load_model_proto(token_cnn())
    data = tokens()
    for mode in ("channel", "pixel"):
        fast = run_shuffle(model, "conv2", data, mode=mode, batch_size=8, device="cpu")
        direct = run_shuffle(model, "conv2", data, mode=mode, batch_size=8, device="cpu", exact_path=True)
        assert fast.route == "fast"
        np.testing.assert_allclose(fast.cosine, direct.cosine, atol=1e-5)
        np.testing.assert_array_equal(fast.agreement, direct.agreement)


def test_an_infinite_constant_outside_the_learned_weights_is_accepted():
    model = load_model_proto(token_cnn(floor=-np.inf))  # Max(x, -inf) is x: refused as a broken weight before
    assert len(model.layers) == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_anywhere_or_inf_in_a_convs_weights_is_refused_as_a_broken_model(bad):
    w = RNG.normal(size=(4, 3, 3))
    w[1, 2, 0] = bad
    with pytest.raises(OnnxRedundError, match=f"weight 'w1' contains {'NaN' if np.isnan(bad) else 'Inf'}"):
        load_model_proto(token_cnn(conv_weight=w))
    with pytest.raises(OnnxRedundError, match="weight 'floor' contains NaN"):
        load_model_proto(token_cnn(floor=np.nan))


def channelless(kind: str) -> onnx.ModelProto:
    """A float input with no channel axis that the graph makes one of: "flat" (N, 75) reshaped to (N, 3, 5, 5),
    "bands" (N, 6, 5) unsqueezed to (N, 1, 6, 5) (DNSMOS's (N, frames, bands), by keras2onnx)."""
    c = 3 if kind == "flat" else 1
    inits = {"w1": RNG.normal(size=(4, c, 3, 3)), "w2": RNG.normal(size=(2, 4, 1, 1))}
    if kind == "flat":
        inits["to_image"] = np.array([-1, 3, 5, 5])
        head = [helper.make_node("Reshape", ["x", "to_image"], ["t"])]
        shape = ["N", 75]
    else:
        inits["channel_axis"] = np.array([1])
        head = [helper.make_node("Unsqueeze", ["x", "channel_axis"], ["t"])]
        shape = ["N", 6, 5]
    nodes = [
        *head,
        helper.make_node("Conv", ["t", "w1"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    out = ["N", 2, 5, 5] if kind == "flat" else ["N", 2, 6, 5]
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        initializer=[
            numpy_helper.from_array(np.asarray(v, np.int64 if v.dtype.kind == "i" else np.float32), k)
            for k, v in inits.items()
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("kind", ["flat", "bands"])
def test_a_float_input_without_a_channel_axis_gets_its_impulses_at_the_first_convs_input(kind, caplog):
    # DNSMOS's (N, 901, 161) was read as 901 channels of length 161 ("cannot tell ... assuming NCL"); an (N, 75)
    # input was refused ("needs an image tensor")
    model = load_model_proto(channelless(kind))
    assert model.image_input.layout == "" and "cannot tell" not in caplog.text
    auto, there = run_impulse(model, device="cpu"), run_impulse(model, device="cpu", at="t")
    assert "the input 'x' has no channel axis (the graph makes the convs' channels)" in auto.notes[0]
    for a, b in zip(auto.layers, there.layers, strict=True):
        np.testing.assert_array_equal(a.ncc, b.ncc)


def test_a_model_with_no_image_input_refuses_mnist_by_default_and_image_folders_in_one_line(tmp_path):
    from builders import run_cli
    from PIL import Image

    path = tmp_path / "tokens.onnx"
    onnx.save(token_cnn(), path)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a" / "0.png")
    for data, message in (
        ([], "no --data given, and MNIST does not fit the model's input 'tokens' (N x 16, int64), which is no image"),
        (["--data", tmp_path / "imgs"], "image folders feed image inputs; the model's input 'tokens' (N x 16, int64)"),
    ):
        r = run_cli("shuffle", path, "--layer", "conv2", *data, "--device", "cpu")
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
