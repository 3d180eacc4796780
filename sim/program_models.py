"""Small quantized models for the layer-program tests (cocotb and SimTransport share them)."""

import numpy as np

from sw import model as mdl, numerics, quant
from sw.numerics import WeightFormat


def lin(rng, K, N, *, fmt=WeightFormat.INT8, group=None, xs=0.05, xz=0, ys=0.05, yz=0,
        relu=False, symmetric=True):
    """A random float layer quantized by ``sw.quant.quantize_linear``."""
    w = rng.normal(size=(K, N)) / np.sqrt(K)
    b = rng.normal(size=N) * 0.2
    return quant.quantize_linear(w, b, fmt=fmt, group=group, symmetric=symmetric, x_scale=xs,
                                 x_zero=xz, y_scale=ys, y_zero=yz, relu=relu)


def cnn(rng, *, in_shape=(8, 8, 1), in_zero=3, fmt=WeightFormat.INT8):
    """conv3x3/1 pad 1 + ReLU -> maxpool 2 -> conv3x3/2 pad 1 + ReLU -> conv1x1 -> global
    average pool -> dense: every layer kind the device runs."""
    H, W, C = in_shape
    c1 = mdl.Conv2d(lin(rng, 9 * C, 6, xz=in_zero, yz=-7, relu=True, fmt=fmt), kernel=3,
                    stride=1, pad=1, in_shape=in_shape, name="conv1")
    p1 = mdl.MaxPool2d(name="pool1")
    h2, w2 = H // 2, W // 2
    c2 = mdl.Conv2d(lin(rng, 9 * 6, 8, xz=-7, yz=-128, relu=True, fmt=fmt), kernel=3, stride=2,
                    pad=1, in_shape=(h2, w2, 6), name="conv2")
    h3 = numerics.conv_out_size(h2, 3, 2, 1)
    w3 = numerics.conv_out_size(w2, 3, 2, 1)
    c3 = mdl.Conv2d(lin(rng, 8, 12, xz=-128, yz=5, fmt=fmt), kernel=1, stride=1, pad=0,
                    in_shape=(h3, w3, 8), name="conv3")
    gap = mdl.GlobalAvgPool.build(h3 * w3, x_scale=0.05, x_zero=5, y_scale=0.02, y_zero=-3,
                                  name="gap")
    fc = mdl.Dense(lin(rng, 12, 10, xs=0.02, xz=-3, yz=1, fmt=fmt), name="fc")
    return mdl.Model([c1, p1, c2, c3, gap, fc], input_shape=in_shape, in_scale=0.05,
                     in_zero=in_zero, out_scale=0.05, out_zero=1, name="cnn")
