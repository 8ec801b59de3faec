"""A loader script for the openWakeWord speech embedding model (input N x 76 x 32 x 1: 76 frames of 32 mel
bands): 16 kHz mono .wav files, or synthetic chirps where there are none, turned into mel frames by
openWakeWord's own front end (melspectrogram.onnx, from scripts/fetch_models.py), cut into windows of 76
frames.

    onnxredund audit openwakeword-embedding.onnx --data-loader-script examples/wakeword_loader.py

Environment: WAKEWORD_AUDIO (a folder of .wav files), ONNXREDUND_MODELS (where melspectrogram.onnx is).
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = Path(os.environ.get("ONNXREDUND_MODELS") or Path.home() / ".cache" / "onnxredund" / "models")
FRAMES = 76


def _audio() -> list[np.ndarray]:
    folder = os.environ.get("WAKEWORD_AUDIO")
    if folder:
        clips = []
        for path in sorted(Path(folder).glob("*.wav")):
            with wave.open(str(path)) as w:
                pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
            clips.append(pcm.astype(np.float32))
        return clips
    rng = np.random.default_rng(0)  # no recordings: rising and falling chirps with noise, 2 s each
    t = np.arange(32000) / 16000
    return [
        (8000 * np.sin(2 * np.pi * (f0 + k * t) * t) + 300 * rng.normal(size=t.size)).astype(np.float32)
        for f0, k in zip(rng.uniform(200, 800, 24), rng.uniform(-150, 150, 24), strict=True)
    ]


def load_data():
    mel = ort.InferenceSession(str(MODELS / "openwakeword-melspectrogram.onnx"), providers=["CPUExecutionProvider"])
    windows = []
    for clip in _audio():
        frames = mel.run(None, {"input": clip[None]})[0][0, 0]  # (T, 32)
        frames = frames / 10 + 2  # openWakeWord's scaling of the mel output
        for start in range(0, frames.shape[0] - FRAMES + 1, FRAMES // 2):
            windows.append(frames[start : start + FRAMES])
    x = np.stack(windows)[..., None].astype(np.float32)  # (N, 76, 32, 1)
    for start in range(0, len(x), 32):
        yield {"input_1": x[start : start + 32]}
