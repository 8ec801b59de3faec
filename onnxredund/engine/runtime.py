"""onnxruntime sessions on CUDA or CPU, with IO binding so tensors can stay on the device.

Owns every ``onnxruntime.InferenceSession`` the package makes (:class:`Runner`) and the device choice.

``--device auto`` uses CUDA when a session really gets it (checked with ``get_providers()``) and
CPU otherwise, and logs which in one line; ``--device cuda`` that cannot be had is an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import itertools
import logging
import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxredund.choices import BATCH_SIZE, DEVICES
from onnxredund.data import conform_feeds, iter_batches
from onnxredund.engine.surgery import expose_outputs
from onnxredund.errors import OnnxRedundError, first_line
from onnxredund.model import (
    MAX_IR_VERSION,
    PROTOBUF_LIMIT,
    Model,
    copy_model,
    external_folder,
    external_tensors,
    set_external_folder,
)

__all__ = [
    "DEVICES",
    "Runner",
    "as_samples",
    "cuda_works",
    "machine_memory",
    "probe_shapes",
    "providers_for",
    "resolve_device",
    "rows_per_run",
    "session_model",
]

log = logging.getLogger(__name__)
#: onnxruntime's own log: errors only. Some kernels warn through the default logger, not the session's (a
#: Resize's deprecated `tf_half_pixel_for_nn` on every session of a TensorFlow export); onnxredund says what matters
_ORT_LOG_SEVERITY = 3
ort.set_default_logger_severity(_ORT_LOG_SEVERITY)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def _probe_model() -> bytes:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    return onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8
    ).SerializeToString()


@functools.cache
def cuda_works() -> bool:
    """Whether onnxruntime can really run a session on CUDA here (probed once, quietly)."""
    if _CUDA not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")  # the driver: without it there is no CUDA, and no noisy probe
    except OSError:
        return False
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                ort.preload_dlls()
            except Exception as e:
                log.debug("preload_dlls: %s", e)
    ort.set_default_logger_severity(4)
    try:
        sess = ort.InferenceSession(_probe_model(), providers=[_CUDA, _CPU])
        return sess.get_providers()[0] == _CUDA
    except Exception as e:
        log.debug("CUDA probe failed: %s", e)
        return False
    finally:
        ort.set_default_logger_severity(_ORT_LOG_SEVERITY)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' or 'cpu'; 'cuda' where CUDA cannot be had raises."""
    if device not in DEVICES:
        raise OnnxRedundError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if cuda_works():
        _log_auto_choice(device, "cuda")
        return "cuda"
    if device == "cuda":
        raise OnnxRedundError(
            "`device` cuda: onnxruntime cannot run on CUDA here (install onnxruntime-gpu with CUDA 12/13 "
            "libraries, or use `device` cpu)"
        )
    _log_auto_choice(device, "cpu")
    return "cpu"


@functools.cache
def _log_auto_choice(asked: str, got: str) -> None:
    """One line, once per process: which device --device auto runs on."""
    if asked == "auto":
        where = "onnxruntime CUDA" if got == "cuda" else "CPU (no CUDA session could be had)"
        log.info("device auto: running on %s", where)


def providers_for(device: str) -> list:
    """onnxruntime providers for a resolved device. CUDA runs in full float32 (no TF32 matmuls or
    convs), so the numbers match the CPU's to float rounding."""
    if device == "cuda":
        return [(_CUDA, {"use_tf32": "0"}), _CPU]
    return [_CPU]


def _session_options(threads: int, external_dir: str = "", optimize: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if external_dir:  # where the external data of a model handed over as bytes lives
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", external_dir)
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    opts.log_severity_level = 4  # fatal only: a failed run is raised, and said in one line, by onnxredund
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def session_model(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model as onnxruntime takes it (IR version it reads, no folder keys) and its data folder."""
    external = external_tensors(proto)
    folders = {external_folder(t) for t in external}
    if len(folders) > 1:
        raise OnnxRedundError(f"the model reads external data from {len(folders)} folders; keep it in one")
    if proto.ir_version > MAX_IR_VERSION or external:
        work = copy_model(proto)  # cheap: external weights are references, not bytes
        work.ir_version = min(work.ir_version, MAX_IR_VERSION)
        for tensor in external_tensors(work):
            set_external_folder(tensor, "")
        proto = work
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise OnnxRedundError("the model is over protobuf's 2 GB limit in memory; keep its weights as external data")
    return proto, folders.pop() if folders else ""


@dataclass
class Runner:
    """One onnxruntime session and how to feed it.

    Inputs may be numpy arrays or ``ort.OrtValue`` (already on the device); outputs come back as
    ``OrtValue`` on the session's device (:meth:`run_device`) or numpy (:meth:`run`).
    """

    session: ort.InferenceSession
    device: str

    @classmethod
    def create(
        cls,
        proto: onnx.ModelProto,
        device: str = "auto",
        threads: int = 0,
        *,
        derived: bool = False,
        optimize: bool = True,
    ) -> Runner:
        """A session for ``proto``; weights in external files are read by onnxruntime from their folder.

        Args:
            derived: ``proto`` is a model onnxredund built from the user's (an analysis model): if onnxruntime
                refuses it, that is a bug of onnxredund's (a RuntimeError), not a mistake in the user's model.
            optimize: let onnxruntime optimize the graph (off: a quick check that it loads at all).
        """
        device = resolve_device(device)
        proto, external_dir = session_model(proto)
        providers = providers_for(device)
        try:
            # onnxruntime prints its provider fallback attempts; the one-line error below says it all
            with contextlib.redirect_stdout(io.StringIO()):
                session = ort.InferenceSession(
                    proto.SerializeToString(),
                    sess_options=_session_options(threads, external_dir, optimize),
                    providers=providers,
                )
        except Exception as e:  # onnxruntime raises its own types (Fail, InvalidGraph, ...) with no common base
            if derived:
                raise RuntimeError(f"onnxruntime refuses an analysis model built by onnxredund: {e}") from e
            raise OnnxRedundError(f"onnxruntime cannot load the model: {first_line(e)}") from None
        got = session.get_providers()[0]
        if device == "cuda" and got != _CUDA:
            raise OnnxRedundError("onnxruntime gave a CPU session where CUDA was asked for; use `device` cpu")
        return cls(session=session, device=device)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        """Copy a numpy array to the session's device once, for reuse across runs."""
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def run_device(self, feeds: dict, outputs: list[str] | None = None, *, to: str = "") -> list[ort.OrtValue]:
        """Run with IO binding; inputs stay on the device, and outputs too unless ``to`` is "cpu"."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_ortvalue_input(name, self.to_device(value))
        for name in outputs or self.output_names:
            binding.bind_output(name, to or self.device)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def run_per_sample(self, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run a model whose batch is fixed to 1: one sample of every feed at a time. Each output is joined
        along its first axis where that axis is the sample's (size 1), else stacked on a new one: a
        recogniser's (T, 1, classes) per sample becomes (N, T, 1, classes), never (N x T, 1, classes). A feed so
        stacked (one rank above the input's) gives each run its sample without that axis: an RNN state's slice
        (2, 1, 64) that an earlier run made."""
        n = len(next(v for v in feeds.values() if np.ndim(v)))
        ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}

        def sample(name: str, value, i: int):
            if not np.ndim(value):
                return value
            return value[i] if np.ndim(value) == ranks.get(name, -1) + 1 else value[i : i + 1]

        parts = [self.run({name: sample(name, value, i) for name, value in feeds.items()}, outputs) for i in range(n)]
        return [_join_samples([p[j] for p in parts]) for j in range(len(parts[0]))]

    def run_parts(self, feeds: dict, outputs: list[str] | None = None, rows: int | None = None) -> list[np.ndarray]:
        """:meth:`run` over the samples of ``feeds`` (each array's first axis; scalars go whole) in even parts of
        at most ``rows`` samples, joined along the first axis: the same values in bounded memory (a batch of 256
        detector images at 800 x 608 takes 20 GB in one run)."""
        n = len(next(v for v in feeds.values() if np.ndim(v)))
        if rows is None or n <= rows:
            return self.run(feeds, outputs)
        bounds = np.linspace(0, n, -(-n // rows) + 1).astype(int)
        log.debug("a batch of %d samples run in %d parts", n, len(bounds) - 1)
        parts = [
            self.run({k: v[a:b] if np.ndim(v) else v for k, v in feeds.items()}, outputs)
            for a, b in itertools.pairwise(bounds)
        ]
        # a part of one sample may lose its axis to a Squeeze with no axes (PLCMOS's score): given back
        return [
            np.concatenate([np.reshape(p[j], (1,)) if np.ndim(p[j]) == 0 else p[j] for p in parts])
            for j in range(len(parts[0]))
        ]

    def runs(self, model: Model):
        """How to run a batch of ``model``'s samples: at once where its batch is free, in parts of the samples a
        quarter of the machine holds (:meth:`run_parts`, :func:`rows_per_run`), else sample by sample
        (:meth:`run_per_sample`); the one place that choice is made."""
        if not model.batch_dynamic:
            return self.run_per_sample
        return functools.partial(self.run_parts, rows=rows_per_run(model, self.device))

    def run_over(
        self, model: Model, data, names: list[str] | None = None, batch_size: int = BATCH_SIZE
    ) -> list[np.ndarray]:
        """``names`` (default: the model's outputs) over every sample of ``data`` (a DataSource), batch by batch,
        joined along the samples: what running a model over data means, once."""
        names = model.output_names if names is None else names
        run, parts = self.runs(model), []
        for _, arrays, _ in iter_batches(data, batch_size):
            feeds = conform_feeds(arrays, model.inputs, model.input_name, data.name)
            n = len(feeds[model.input_name])
            values = run(feeds, names)
            parts.append([as_samples(model, name, v, n) for name, v in zip(names, values, strict=True)])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]

    def run(self, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run and return numpy arrays."""
        if self.device == "cpu" and not any(isinstance(v, ort.OrtValue) for v in feeds.values()):
            try:
                return self.session.run(outputs, feeds)
            except Exception as e:  # onnxruntime's own types, as above
                if any(m in str(e) for m in _OUT_OF_MEMORY):
                    raise MemoryError(f"onnxruntime could not allocate: {first_line(e)[-120:]}") from None
                raise OnnxRedundError(f"onnxruntime failed to run the model: {first_line(e)}") from None
        return [v.numpy() for v in self.run_device(feeds, outputs, to="cpu")]  # copied once, at the end of the run


#: what onnxruntime says when an allocation fails (its arena, or the system's)
_OUT_OF_MEMORY = ("bfc_arena", "Failed to allocate memory", "std::bad_alloc")
#: one run of a network may take up to this share of the machine's memory
_RUN_SHARE = 4
#: a run's peak memory per sample, in its largest tensors (5.4 measured: PaddleOCR's detector at 800 x 608)
_PEAK_PER_LARGEST = 6


def rows_per_run(
    model: Model, device: str, tensors: list[str] | None = None, peak: int = _PEAK_PER_LARGEST
) -> int | None:
    """Samples one run of the network (or of the part of it that computes ``tensors``) may take on a CPU within a
    quarter of the machine's memory, at least 2, where a sample takes ``peak`` times its largest tensor; None on
    CUDA (its memory is onnxruntime's arena's) or where the sizes are unknown."""
    if device != "cpu":
        return None
    shapes = model.shapes if tensors is None else {t: model.shapes[t] for t in tensors if t in model.shapes}
    largest = max((int(np.prod(s)) for s in shapes.values() if s), default=0)
    if not largest:
        return None
    return max(2, machine_memory() // _RUN_SHARE // (peak * 4 * largest))


def machine_memory() -> int:
    """The machine's memory in bytes (8 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def as_samples(model: Model, name: str, value: np.ndarray, samples: int) -> np.ndarray:
    """Tensor ``name`` of ``model`` from a run over ``samples`` samples as (samples, *shape), ``shape`` its
    sample's as the model declares it: where the batch is merged into the first axis (a fixed-batch export's
    Reshape to (-1, 2) made batch-free: (N x 256, 2) for samples of (256, 2), rows sample-major) the samples are
    split out; a scalar from one sample (a Squeeze with no axes) gets its axis back; any other value is returned
    as is."""
    shape = tuple(model.shapes.get(name, value.shape[1:]))
    if value.ndim == 0 and samples == 1:  # a Squeeze with no axes takes a one-sample batch's axis too (PLCMOS)
        return value.reshape(1)
    if value.shape[1:] != shape and shape and value.shape == (samples * shape[0], *shape[1:]):
        return value.reshape(samples, *shape)
    return value


def _join_samples(values: list[np.ndarray]) -> np.ndarray:
    """One output of every sample's run as one array with the samples on axis 0."""
    if len({v.shape for v in values}) > 1:
        raise OnnxRedundError(f"an output's shape changes from sample to sample ({values[0].shape}, ...)")
    if values[0].ndim and values[0].shape[0] == 1:
        return np.concatenate(values)
    return np.stack(values)


def probe_shapes(
    proto: onnx.ModelProto, feeds: dict[str, np.ndarray], tensors: list[str]
) -> dict[str, tuple[int, ...]]:
    """Shapes (without the batch) of ``tensors``, found by running ``feeds`` (one sample) on CPU; a tensor whose
    first axis is not of size 1 has no batch axis (as :meth:`Runner.run_per_sample` joins it)."""
    names = list(dict.fromkeys(tensors))
    probe = expose_outputs(proto, names)
    values = Runner.create(probe, "cpu").run(feeds, names)
    return {
        name: tuple(v.shape[1:] if v.ndim and v.shape[0] == 1 else v.shape)
        for name, v in zip(names, values, strict=True)
    }
