"""Property tests for permutations and metrics, a byte-level fuzz of model loading, determinism."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import run_cli, small_cnn
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from onnxredund.analyses.impulse import run_impulse
from onnxredund.engine import load_model
from onnxredund.engine.permutations import apply_permutation, permutation_for
from onnxredund.errors import OnnxRedundError
from onnxredund.metrics import cosine_per_channel
from onnxredund.ncc import ncc_matrix

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(
    arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5)), elements=finite),
    arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5)), elements=finite),
)
@settings(max_examples=200, deadline=None)
def test_cosine_is_within_bounds(a, b):
    b = np.resize(b, a.shape)
    c = cosine_per_channel(a, b)
    assert c.shape == a.shape[:2] and np.all(np.abs(c) <= 1.0) and np.all(np.isfinite(c))
    np.testing.assert_allclose(cosine_per_channel(a, a)[np.abs(a).sum(-1) > 1e-3], 1.0, atol=1e-6)


@given(
    st.sampled_from(["channel", "pixel"]),
    st.integers(0, 2**32),
    st.integers(0, 9),
    st.integers(1, 40),
    st.integers(1, 50),
)
@settings(max_examples=200, deadline=None)
def test_permutations_are_bijections_and_seeded(mode, seed, k, batch, pixels):
    p = permutation_for(mode, seed, 0, k, 3, batch, pixels)
    q = permutation_for(mode, seed, 0, k, 3, batch, pixels)
    np.testing.assert_array_equal(p, q)
    rows = p.reshape(-1, p.shape[-1]) if mode == "pixel" else p[None]
    for row in rows:
        assert sorted(row.tolist()) == list(range(row.size))


@given(st.integers(0, 1000), st.sampled_from(["channel", "pixel"]))
@settings(max_examples=50, deadline=None)
def test_shuffling_keeps_the_multiset_of_values(seed, mode):
    x = np.random.default_rng(seed).normal(size=(6, 3, 4, 5))
    p = permutation_for(mode, seed, 0, 1, 0, 6, 20)
    y = apply_permutation(x, 1, p, mode)
    np.testing.assert_array_equal(y[:, [0, 2]], x[:, [0, 2]])  # other channels untouched
    np.testing.assert_array_equal(np.sort(y[:, 1], axis=None), np.sort(x[:, 1], axis=None))


@given(arrays(np.float64, (3, 1, 4, 4), elements=st.floats(-10, 10)))
@settings(max_examples=100, deadline=None)
def test_ncc_is_bounded_and_symmetric_at_zero_lag(r):
    m = ncc_matrix(r, r, lags=False)
    assert np.all(np.abs(m) <= 1.0)
    np.testing.assert_allclose(m, m.T, atol=1e-12)


@pytest.mark.parametrize("weights, tries", [("inline", 3000), ("external", 1500)])
def test_fuzzed_model_bytes_only_raise_onnxredund_error(weights, tries, tmp_path):
    path = tmp_path / "fuzz.onnx"
    if weights == "inline":
        raw = bytearray(small_cnn()[0].SerializeToString())
    else:  # the graph file is mutated, its weights file (next to it) is not
        onnx.save(small_cnn()[0], str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
        raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    loaded = 0
    for i in range(tries):
        data = bytearray(raw)
        kind = i % 3
        if kind == 0:  # flip a few bytes
            for pos in rng.integers(0, len(data), rng.integers(1, 4)):
                data[pos] = rng.integers(0, 256)
        elif kind == 1:  # truncate
            data = data[: rng.integers(0, len(data))]
        else:  # splice in random bytes
            pos = rng.integers(0, len(data))
            data[pos:pos] = rng.integers(0, 256, rng.integers(1, 8)).astype(np.uint8).tobytes()
        path.write_bytes(bytes(data))
        try:
            model = load_model(path)
            run_impulse(model, device="cpu", across=False)
            loaded += 1
        except OnnxRedundError:
            pass
    assert loaded > 0  # some mutations (in weights) still load: the fuzz reached the analysis


@pytest.mark.parametrize("command", ["shuffle", "impulse"])
def test_same_command_twice_gives_byte_identical_json(command, tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(small_cnn()[0], str(model))
    args = {"shuffle": ["--layer", "conv2", "--data", "synthetic:50", "--mode", "both"], "impulse": []}[command]
    outs = []
    for i in range(2):
        r = run_cli(command, model, *args, "--device", "cpu", "--out", tmp_path / f"o{i}", "--json")
        assert r.exit_code == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    json.loads(outs[0])
    for f in (tmp_path / "o0").glob("*.json"):
        assert f.read_bytes() == (tmp_path / "o1" / f.name).read_bytes()
