"""Time an all-channel shuffle sweep at conv2 against the PyTorch loop a user would write.

    python benchmarks/shuffle_sweep.py --data DIR_WITH_MNIST [--device cpu|cuda] [--limit N]

For each model (LeNet-5, LeNet-5x10) and mode (channel, pixel), on the same machine and data:

- (a) PyTorch: a forward-pre-hook on conv2 shuffles one input channel per pass over the data, with the
  same permutations as onnxredund; cosine of relu(conv2) per channel and accuracy, in float64;
- (b) onnxredund's direct path (one run per channel, ``--exact-path``);
- (c) onnxredund's default path (the fast, linear path);
- one clean inference pass over the same data (onnxruntime).

It checks that they agree within 1e-4 and prints times and ratios (a/c and b/c) as a Markdown
table. Needs torch (the ``export`` extra).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporters.lenet import LeNet5  # noqa: E402
from onnxredund.analyses.evaluate import predict  # noqa: E402
from onnxredund.analyses.shuffle import run_shuffle  # noqa: E402
from onnxredund.data import Dataset, load_mnist  # noqa: E402
from onnxredund.engine import load_model  # noqa: E402
from onnxredund.engine.permutations import permutation_for  # noqa: E402

WIDTHS = {"lenet5": 1, "lenet5x10": 10}


def torch_model(name: str, device: str) -> torch.nn.Module:
    """The ONNX model's weights in the torch LeNet5 (initializer names are the state-dict keys)."""
    model = load_model(ROOT / "models" / f"{name}.onnx")
    net = LeNet5(WIDTHS[name])
    state = {k: torch.from_numpy(model.constant(k).copy()) for k in net.state_dict()}
    net.load_state_dict(state)
    return net.eval().to(device)


def torch_sweep(net, x, y, mode: str, batch: int, seed: int, device: str):
    """The baseline: one hooked pass over the data per perturbed channel."""
    c_in = net.conv2.in_channels
    state = {}

    def pre_hook(_module, args):
        (inp,) = args
        k, perm = state["k"], state["perm"]
        out = inp.clone()
        if mode == "channel":
            out[:, k] = inp[perm, k]
        else:
            flat = inp[:, k].reshape(inp.shape[0], -1)
            out[:, k] = torch.gather(flat, 1, perm).reshape(inp[:, k].shape)
        return (out,)

    def post_hook(_module, _args, output):
        state["a2"] = torch.relu(output)

    h_post = net.conv2.register_forward_hook(post_hook)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    cos = torch.zeros(c_in, net.conv2.out_channels, dtype=torch.float64, device=device)
    correct = torch.zeros(c_in, dtype=torch.int64, device=device)
    with torch.no_grad():
        clean_a2 = []
        for s in range(0, len(xt), batch):
            net(xt[s : s + batch])
            clean_a2.append(state["a2"])
        h_pre = net.conv2.register_forward_pre_hook(pre_hook)
        pixels = 14 * 14
        for k in range(c_in):
            for bi, s in enumerate(range(0, len(xt), batch)):
                xb = xt[s : s + batch]
                perm = permutation_for(mode, seed, 0, k, bi, len(xb), pixels)
                state["k"], state["perm"] = k, torch.from_numpy(perm).to(device)
                logits = net(xb)
                a, b = state["a2"].flatten(2), clean_a2[bi].flatten(2)
                dot, na, nb = (a * b).sum(-1), a.norm(dim=-1), b.norm(dim=-1)
                c = torch.where((na == 0) | (nb == 0), 0.0, (dot / (na * nb)).clamp(-1, 1))
                c = torch.where((na == 0) & (nb == 0), 1.0, c)
                cos[k] += c.sum(0).double()
                correct[k] += (logits.argmax(1) == yt[s : s + batch]).sum()
        h_pre.remove()
    h_post.remove()
    if device == "cuda":
        torch.cuda.synchronize()
    return (cos / len(xt)).cpu().numpy(), (correct.double() / len(xt)).cpu().numpy()


def device_permutations(net, n: int, mode: str, batch: int, seed: int, device: str) -> list:
    """Every batch's permutations of all channels, on the device: (K, B) or (K, B, P) int64 tensors."""
    c_in, pixels = net.conv2.in_channels, 14 * 14
    out = []
    for bi, s in enumerate(range(0, n, batch)):
        size = min(batch, n - s)
        perms = [permutation_for(mode, seed, 0, k, bi, size, pixels) for k in range(c_in)]
        out.append(torch.from_numpy(np.stack(perms).astype(np.int64)).to(device))
    return out


def torch_linear_sweep(net, x, y, perms: list, mode: str, batch: int, device: str):
    """The same linearity trick in PyTorch, all channels of a batch at once: conv2's output with channel k
    shuffled is Z + conv(delta_k, W[:, k]), as unfold and one batched matmul; then the rest of the network on
    the K x B perturbed samples. Same permutations, handed over on the device before the clock starts (so this
    baseline pays nothing to draw them); cosine in float64."""
    c_in, c_out = net.conv2.in_channels, net.conv2.out_channels
    kernels = net.conv2.weight.detach().transpose(0, 1).reshape(c_in, 1, c_out, -1)  # (K, 1, C_out, T)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    cos = torch.zeros(c_in, c_out, dtype=torch.float64, device=device)
    correct = torch.zeros(c_in, dtype=torch.int64, device=device)
    rows = torch.arange(c_in, device=device)[:, None]
    with torch.no_grad():
        for bi, s in enumerate(range(0, len(xt), batch)):
            xb, yb = xt[s : s + batch], yt[s : s + batch]
            n = len(xb)
            x1 = net.pool(torch.relu(net.conv1(xb)))
            z = net.conv2(x1)
            a = torch.relu(z).flatten(2)
            perm = perms[bi]
            xk = x1.transpose(0, 1)  # (K, B, H, W)
            if mode == "channel":
                shuffled = xk[rows, perm]
            else:
                shuffled = torch.gather(xk.flatten(2), 2, perm).view_as(xk)
            delta = (shuffled - xk).reshape(c_in * n, 1, *xk.shape[2:])
            patches = torch.nn.functional.unfold(delta, net.conv2.kernel_size)
            patches = patches.view(c_in, n, -1, z.shape[2] * z.shape[3])
            ap = torch.relu(torch.matmul(kernels, patches) + z.flatten(2)[None])  # (K, B, C_out, P')
            dot, na, nb = (ap * a[None]).sum(-1), ap.norm(dim=-1), a.norm(dim=-1)[None]
            c = torch.where((na == 0) | (nb == 0), 0.0, (dot / (na * nb)).clamp(-1, 1))
            c = torch.where((na == 0) & (nb == 0), 1.0, c)
            cos += c.sum(1).double()
            h = net.pool(ap.reshape(c_in * n, c_out, *z.shape[2:])).flatten(1)
            logits = net.fc3(torch.relu(net.fc2(torch.relu(net.fc1(h)))))
            correct += (logits.view(c_in, n, -1).argmax(-1) == yb).sum(1)
    if device == "cuda":
        torch.cuda.synchronize()
    return (cos / len(xt)).cpu().numpy(), (correct.double() / len(xt)).cpu().numpy()


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument("--models", default="lenet5,lenet5x10")
    p.add_argument("--modes", default="channel,pixel")
    p.add_argument("--repeats", type=int, default=1, help="time each path this many times, keep the best")
    p.add_argument("--skip-direct", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    # full float32 in torch too (no TF32 convs or matmuls): same numbers as onnxruntime, a fair race
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    test = load_mnist(args.data, "test")
    data = Dataset(test.x[: args.limit], test.y[: args.limit], f"mnist:test[:{args.limit}]")
    dev = f"{torch.cuda.get_device_name()} " if args.device == "cuda" else ""
    print(f"# shuffle sweep at conv2, {len(data)} images, batch 256, device {args.device} {dev}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print()
    print(
        "| model | mode | (a) torch hook loop s | (d) torch linear s | (b) direct s | (c) default s | clean pass s "
        "| a/c | d/c | b/c | cosine diff | accuracy diff | same numbers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = load_model(ROOT / "models" / f"{name}.onnx")
        net = torch_model(name, args.device)
        clean_s, _ = timed(lambda m=model: predict(m, data, device=args.device), args.repeats)
        for mode in args.modes.split(","):
            ta, (cos_a, acc_a) = timed(
                lambda n=net, md=mode: torch_sweep(n, data.x, data.y, md, 256, 0, args.device), args.repeats
            )
            perms = device_permutations(net, len(data), mode, 256, 0, args.device)
            td, (cos_d, acc_d) = timed(
                lambda n=net, md=mode, p=perms: torch_linear_sweep(n, data.x, data.y, p, md, 256, args.device),
                args.repeats,
            )
            tc, res_c = timed(
                lambda m=model, md=mode: run_shuffle(m, "conv2", data, mode=md, device=args.device), args.repeats
            )
            cos_diff = [np.abs(res_c.cosine - cos_a).max(), np.abs(cos_d - cos_a).max()]
            acc_diff = [np.abs(res_c.accuracy - acc_a).max(), np.abs(acc_d - acc_a).max()]
            tb = float("nan")
            if not args.skip_direct:
                tb, res_b = timed(  # once: the direct path is the slow reference
                    lambda m=model, md=mode: run_shuffle(m, "conv2", data, mode=md, device=args.device, exact_path=True)
                )
                cos_diff.append(np.abs(res_b.cosine - res_c.cosine).max())
                acc_diff.append(np.abs(res_b.accuracy - res_c.accuracy).max())
            same = max(cos_diff) <= 1e-4 and max(acc_diff) <= 1e-4
            print(
                f"| {name} | {mode} | {ta:.2f} | {td:.2f} | {tb:.2f} | {tc:.2f} | {clean_s:.3f} | {ta / tc:.1f}x | "
                f"{td / tc:.1f}x | {tb / tc:.1f}x | {max(cos_diff):.1e} | {max(acc_diff):.1e} "
                f"({round(max(acc_diff) * len(data))} samples) | {'yes' if same else 'NO'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
