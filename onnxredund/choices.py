"""The names a user chooses among (devices, modes, layouts, criteria, ...), defined once, in a module that imports
nothing: the command line builds its options and help from them without loading onnx or onnxruntime, and the
modules that act on a choice import its names from here."""

from __future__ import annotations

__all__ = [
    "BACKENDS",
    "COMPENSATIONS",
    "CRITERIA",
    "DEVICES",
    "IMPULSE_MODES",
    "LAYOUT_CHOICES",
    "MODES",
    "PREPROCESS_KEYS",
    "SCOPES",
    "SHUFFLE_METRICS",
]

#: where onnxruntime runs: "auto" takes CUDA where onnxruntime really gets it
DEVICES = ("auto", "cuda", "cpu")
#: shuffling: one input channel across the samples of a batch, or the positions within one channel
MODES = ("channel", "pixel")
#: impulse responses through the network as it is, or with its nonlinearities taken out
IMPULSE_MODES = ("network", "linear")
#: what --layout takes for an image input whose layout the graph does not show
LAYOUT_CHOICES = ("nchw", "nhwc")
#: where units of work run
BACKENDS = ("local", "ray")
#: the keys of an image folder's --preprocess
PREPROCESS_KEYS = ("resize", "crop", "channels", "scale", "mean", "std")
#: how pruning ranks channels
CRITERIA = ("random", "l1", "bn", "activation", "variance", "shuffle", "impulse")
#: the same fraction of every channel group, or one ranking over all of them
SCOPES = ("layer", "global")
#: criterion shuffle: the cost measured at the outputs
SHUFFLE_METRICS = ("drift", "agreement", "accuracy")
#: how the removed channels' contribution is made up for (None: it is not); "sequential" needs the data
#: itself, the others calibration statistics
COMPENSATIONS = ("mean", "merge", "lstsq", "sequential")
