#!/usr/bin/env python
"""Winograd F(2x2, 3x3) against im2col + GEMM on the zoo's 3x3 layer shapes, one thread.

    python bench/winograd.py [--transforms] [--repeat 5]

For each (batch, channels, map, outputs) it times, in the same run and
alternating, a forward of the Convolution layer by Winograd (whatever the
layer's rule) and by im2col (``solvers.winograd.ENABLED`` off), checks that
both give the same numbers (rel 2e-6 of the largest output), and prints
which the layer's rule picks for that shape.
PyTorch CPU's conv2d on the same arrays is printed beside it when
installed. --transforms also times the other transforms the general code
can make (F(4x4, 3x3), and F(2x2, 5x5) against a 5x5 im2col), which the
layers do not use.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import numpy as np  # noqa: E402

from onnx_runtime import median_time  # noqa: E402  (the benches' one timing loop)

# (N, C, H, K): VGG16 / FCN-32s, ResNet-50, AlexNet conv3-5 (batch 10), GoogLeNet (batch 10)
SHAPES = [(1, 64, 224, 64), (1, 128, 112, 128), (1, 256, 56, 256), (1, 512, 28, 512), (1, 512, 14, 512),
          (1, 64, 56, 64), (1, 128, 28, 128), (1, 256, 14, 256), (1, 512, 7, 512),
          (10, 256, 13, 384), (10, 384, 13, 384), (10, 96, 28, 128), (10, 128, 14, 192)]


def median_ms(fn, repeat):
    return median_time(fn, repeat) * 1e3


def conv_net(n, c, h, k, kernel=3):
    from solvers.net import Net
    net = Net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: %d dim: %d dim: %d dim: %d } } }\n'
              'layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: %d '
              'kernel_size: %d pad: %d weight_filler { type: "gaussian" std: 0.1 } } }\n'
              % (n, c, h, h, k, kernel, kernel // 2), phase="TEST")
    net.blobs["x"].data[...] = np.random.default_rng(0).random((n, c, h, h), dtype=np.float32)
    return net


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--transforms", action="store_true")
    args = ap.parse_args()
    from solvers import threads, winograd
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rule = {name: getattr(winograd, name) for name in ("MIN_CHANNELS", "MIN_PIXELS", "MIN_PIXELS_KEPT")}
    print("3x3 Convolution forward (TEST net), ms, 1 thread: Winograd F(2x2, 3x3) vs im2col in the same run")
    print("%-22s %9s %9s %7s %9s  %s" % ("N C HxW K", "winograd", "im2col", "ratio", "torch", "rule picks"))
    for n, c, h, k in SHAPES:
        net = conv_net(n, c, h, k)
        threads.set_num_threads(1, where="bench")
        threads.apply_default()
        layer = net.layers[1]
        for name, value in rule.items():
            setattr(winograd, name, value)
        picks = layer._winograd(np, net.blobs["x"].data, n * h * h) is not None
        for name in rule:   # time Winograd where the rule would not take it, too
            setattr(winograd, name, 1)
        winograd.ENABLED = True
        net.forward()
        fast = net.blobs["y"].data.copy()
        winograd.ENABLED = False
        net.forward()
        plain = net.blobs["y"].data.copy()
        err = np.abs(fast - plain).max() / np.abs(plain).max()
        assert err < 2e-6, "Winograd and im2col disagree: %.2e" % err
        on, off = [], []
        for _ in range(2):     # alternate, so both see the machine's same moments
            winograd.ENABLED = True
            on.append(median_ms(net.forward, args.repeat))
            winograd.ENABLED = False
            off.append(median_ms(net.forward, args.repeat))
        winograd.ENABLED = True
        ref = ""
        if torch is not None:
            x, w = torch.from_numpy(net.blobs["x"].data), torch.from_numpy(net.params["c"][0].data)
            ref = "%9.2f" % median_ms(lambda: torch.nn.functional.conv2d(x, w, padding=1), args.repeat)
        a, b = min(on), min(off)
        print("%-22s %9.2f %9.2f %6.2fx %9s  %s" % ("%d %d %dx%d %d" % (n, c, h, h, k), a, b, a / b, ref,
                                                    "winograd" if picks else "im2col"))
    if args.transforms:
        transforms_table(args.repeat)


def transforms_table(repeat):
    """The transforms the layers do not use, against F(2x2, 3x3) or im2col."""
    from solvers import winograd
    rng = np.random.default_rng(1)
    f43 = winograd.Winograd(4, 3)
    print("\nF(4x4, 3x3) vs F(2x2, 3x3), ms (and max error vs float64, of the largest output)")
    for n, c, h, k in SHAPES[:5] + SHAPES[9:11]:
        x = rng.random((n, c, h, h), dtype=np.float32)
        w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
        print("%-22s %s" % ("%d %d %dx%d %d" % (n, c, h, h, k),
                            "  ".join("%r %.2f" % (f, run_transform(f, x, w, 1, repeat)) for f in (winograd.F2x3, f43))))
    f25 = winograd.Winograd(2, 5)
    print("\nF(2x2, 5x5) vs im2col (5x5 Convolution), ms")
    for n, c, h, k in [(10, 48, 27, 128), (10, 32, 28, 96), (10, 32, 14, 128), (1, 256, 28, 256)]:
        net = conv_net(n, c, h, k, kernel=5)
        x = net.blobs["x"].data
        w = net.params["c"][0].data
        print("%-22s F(2x2, 5x5) %.2f  im2col %.2f" % ("%d %d %dx%d %d" % (n, c, h, h, k),
                                                       run_transform(f25, x, w, 2, repeat), median_ms(net.forward, repeat)))


def run_transform(f, x, w, pad, repeat):
    xs = np.empty(f.padded_shape(x.shape, (pad, pad)), x.dtype)
    u = f.transform_filter(w, np.empty((f.n * f.n,) + w.shape[:2], x.dtype))
    y = np.empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3]), x.dtype)
    return median_ms(lambda: f.conv(f.pad_into(x, (pad, pad), xs), u, y), repeat)


if __name__ == "__main__":
    main()
