"""The names a user chooses among (devices, modes, layouts, criteria, ...), defined once, in a module that imports
nothing: the command line builds its options and help from them without loading onnx or onnxruntime, and the
modules that act on a choice import its names from here."""

from __future__ import annotations

__all__ = [
    "BACKENDS",
    "BATCH_SIZE",
    "CHEAP_DROP",
    "COMPENSATIONS",
    "CONFIDENCE",
    "CRITERIA",
    "DEVICES",
    "FUTILITY",
    "IMPULSE_MODES",
    "LAYOUT_CHOICES",
    "MIN_IMAGES",
    "MODES",
    "NCC_THRESHOLD",
    "PREPROCESS_KEYS",
    "PRUNE_CRITERION",
    "PRUNE_SCOPE",
    "ROUND_TO",
    "SCOPES",
    "SHUFFLE_METRIC",
    "SHUFFLE_METRICS",
    "SHUFFLE_SAMPLES",
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

# Defaults, one constant each: the command line's options and the library's keyword arguments take these.
#: samples a run holds
BATCH_SIZE = 256
#: NCC of impulse responses at which channels count as alike
NCC_THRESHOLD = 0.9
#: a shuffled channel is cheap when its cost (accuracy drop, else disagreement, else 1 - output cosine) is at or under
CHEAP_DROP = 0.005
#: of each channel's cost interval (sequential estimation)
CONFIDENCE = 0.95
#: a sequential sweep stops measuring an undecided channel once the rest of the data would decide it with a chance
#: under this, were its cost what its images so far say (0: measured to the end of the data)
FUTILITY = 0.05
#: images every channel of a sweep sees at least, before any budget cuts it or any decision stops it
MIN_IMAGES = 64
#: how pruning ranks channels, and over what
PRUNE_CRITERION = "l1"
PRUNE_SCOPE = "layer"
#: with a target, every group keeps a multiple of this many channels
ROUND_TO = 8
#: criterion shuffle: what is measured, on how many samples
SHUFFLE_METRIC = "drift"
SHUFFLE_SAMPLES = 512
