"""Load MobileStyleGAN-FFHQ-1024 exactly from the OpenVINO IR files of the ``random-face`` wheel.

The files (``MappingNetwork.{xml,bin}``, ``SynthesisNetwork.{xml,bin}``) come from the installed
``random-face==2021.7.21.1`` distribution — found through its metadata, never by importing the
package (its ``__init__`` needs gdown, which ``pip install --no-deps`` leaves out) — or from a
folder holding the four files. Each file must have its pinned SHA-256.

The loader walks each graph along its data path from the input to the output and matches every
layer against the architecture of :mod:`anonymixer.networks.mobilestylegan`: weights go into the
module (each Const used once, shape checked), structural constants (modulation scales, the
PixelNorm epsilon, leaky-ReLU slopes, √2 gains, Haar filters, split sizes) are checked against the
values the architecture implies, and at the end every float Const and float-producing layer of the
file must have been accounted for — what is left is shape arithmetic on integers. Any difference
is an :class:`IRError` naming the layer.
"""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anonymixer.checkpoints import file_sha256
from anonymixer.networks.mobilestylegan import (
    BAND_FILTERS,
    CHANNELS,
    LEAKY_SLOPE,
    PIXELNORM_EPS,
    MobileStyleGAN,
    Modulation,
    StyledLayer,
)
from anonymixer.openvino_ir import IRError, IRGraph, Layer

DISTRIBUTION = "random-face"
DISTRIBUTION_VERSION = "2021.7.21.1"
DATA_DIR = "random_face/data"
IR_SHA256 = {  # the files of random-face 2021.7.21.1
    "MappingNetwork.xml": "73e2096cad6e696e4af47df2477e048ab4c42c0e0dec83c7c66604822689e55b",
    "MappingNetwork.bin": "212dd716bdb556e18db603ea97300d4fa3c872b878c726b2402fea80820e7305",
    "SynthesisNetwork.xml": "7918fce515243954d3e06628cb39a23902d6b1d5d02932cc0c2faee7a2aeeedd",
    "SynthesisNetwork.bin": "c7da15fa22d508c82e1c30dd6b4cdf67fe3ccdddaf85b310ee764dbf0c289645",
}
ARCHITECTURE: dict[str, Any] = {"network": "mobilestylegan", "style_dim": 512, "n_mlp": 8, "channels": list(CHANNELS)}
NOTICE = (
    "mobile1024 generator: MobileStyleGAN-FFHQ (random-face 2021.7.21.1 wheel, Apache-2.0, by Sergei Belousov), "
    "distilled from NVIDIA's StyleGAN2-FFHQ (NVIDIA Source Code License-NC: non-commercial use only) and trained "
    "on images of FFHQ (CC BY-NC-SA 4.0). Use it for research and evaluation, not in a commercial service."
)


def locate_ir(folder: str | Path | None = None) -> Path:
    """The folder holding the four IR files: ``folder``, or the installed random-face wheel's data."""
    if folder is None:
        try:
            dist = importlib.metadata.distribution(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            raise IRError(
                f"the {DISTRIBUTION} wheel is not installed: `pip install --no-deps "
                f"{DISTRIBUTION}=={DISTRIBUTION_VERSION}` (scripts/install.sh does), or pass --generator-ir DIR "
                "holding " + ", ".join(IR_SHA256)
            ) from None
        if dist.version != DISTRIBUTION_VERSION:
            raise IRError(f"{DISTRIBUTION} {dist.version} is installed; the pinned files are {DISTRIBUTION_VERSION}'s")
        folder = Path(str(dist.locate_file(DATA_DIR)))
    folder = Path(folder)
    missing = [name for name in IR_SHA256 if not (folder / name).is_file()]
    if missing:
        raise IRError(f"{folder}: missing {', '.join(missing)} (the MobileStyleGAN IR files of {DISTRIBUTION})")
    return folder


def verify_ir(folder: Path) -> dict[str, str]:
    """SHA-256 of each file, refused unless it is the pinned one."""
    hashes = {}
    for name, expected in IR_SHA256.items():
        actual = file_sha256(folder / name)
        if actual != expected:
            raise IRError(
                f"{folder / name}: SHA-256 {actual} is not that of {DISTRIBUTION} {DISTRIBUTION_VERSION} ({expected}): "
                "the file is corrupted, truncated or replaced"
            )
        hashes[name] = actual
    return hashes


def load_mobilestylegan(
    folder: str | Path | None = None, *, verify: bool = True
) -> tuple[MobileStyleGAN, dict[str, Any], dict[str, Any]]:
    """(generator in eval mode on the CPU, its architecture, its sources for bundle.json).

    ``verify=False`` skips the SHA-256 pins (for tests of the structural checks); the graphs are
    matched either way.
    """
    root = locate_ir(folder)
    hashes = verify_ir(root) if verify else {name: file_sha256(root / name) for name in IR_SHA256}
    generator = MobileStyleGAN(ARCHITECTURE["style_dim"], ARCHITECTURE["n_mlp"], ARCHITECTURE["channels"])
    _MappingFiller(IRGraph(root / "MappingNetwork.xml", root / "MappingNetwork.bin"), generator).run()
    _SynthesisFiller(IRGraph(root / "SynthesisNetwork.xml", root / "SynthesisNetwork.bin"), generator).run()
    sources = {"kind": "mobilestylegan_openvino_ir", "distribution": f"{DISTRIBUTION}=={DISTRIBUTION_VERSION}"}
    return generator.eval(), dict(ARCHITECTURE), {**sources, "files": hashes}


def _fill(target: torch.Tensor, value: np.ndarray) -> None:
    """Copy an IR constant into a parameter or buffer of the same number of elements."""
    target.data.copy_(torch.from_numpy(value.astype(np.float32).reshape(target.shape)))


def _single(graph: IRGraph, kind: str, name: str) -> Layer:
    layers = graph.of_type(kind)
    if len(layers) != 1 or layers[0].name != name:
        raise IRError(f"{graph.xml_path.name}: expected one {kind} named {name!r}, found {[x.name for x in layers]}")
    return graph.expect(layers[0], kind)


class _MappingFiller:
    """var → PixelNorm → n_mlp × (MatMul, + bias, PReLU 0.2, ×√2) → style."""

    def __init__(self, graph: IRGraph, generator: MobileStyleGAN) -> None:
        self.g, self.net = graph, generator

    def run(self) -> None:
        g, d = self.g, self.net.style_dim
        var = _single(g, "Parameter", "var")
        users = {c.type: c for c, _ in g.consumers(var)}
        if sorted(users) != ["Multiply", "Power"]:
            raise g.error(var, "expected PixelNorm (Power and Multiply) after the input")
        square = g.expect(users["Power"], "Power")
        g.take_scalar(square, 1, 2.0)
        mean = g.data_consumer(square, "ReduceMean", keep_dims="true")
        g.take_ints(mean, 1, (1,))
        eps = g.data_consumer(mean, "Add")
        g.take_scalar(eps, 1, PIXELNORM_EPS)
        root = g.data_consumer(eps, "Power")
        g.take_scalar(root, 1, 0.5)
        inverse = g.data_consumer(root, "Power")
        g.take_scalar(inverse, 1, -1.0)
        ratio = g.data_consumer(inverse, "Multiply")
        g.take_scalar(ratio, 0, 1.0)
        x = g.data_consumer(ratio, "Multiply")
        if g.producer(x, 0) is not var:
            raise g.error(x, "PixelNorm should scale the input")
        for layer in self.net.mapping_layers:
            matmul = g.data_consumer(x, "MatMul", transpose_a="false", transpose_b="true")
            _fill(layer.weight, g.take(matmul, 1, (d, d)))
            add = g.data_consumer(matmul, "Add")
            bias = g.expect(g.producer(add, 1), "Reshape")
            _fill(layer.bias, g.take(bias, 0, (d,)))
            act = g.data_consumer(add, "PReLU")
            g.take_scalar(act, 1, LEAKY_SLOPE)
            x = g.data_consumer(act, "Multiply")
            g.take_scalar(x, 1, math.sqrt(2.0))
        result = _single(g, "Result", "style/sink_port_0")
        if g.producer(result, 0) is not x:
            raise g.error(result, f"the output should follow the {len(self.net.mapping_layers)}th mapping layer")
        g.check_accounted()


class _SynthesisFiller:
    """Constant input → 4×4 styled conv → blocks (Haar upsample, two depthwise styled convs) → to_img."""

    def __init__(self, graph: IRGraph, generator: MobileStyleGAN) -> None:
        self.g, self.net = graph, generator
        self.rows: list[Layer] = []  # the modulation MatMuls in data-path order: the W+ rows

    def run(self) -> None:
        g, net = self.g, self.net
        self.style = _single(g, "Parameter", "style")
        tiles = g.of_type("Tile")
        if len(tiles) != 1:
            raise IRError(f"{g.xml_path.name}: expected one Tile (the batched constant input), found {len(tiles)}")
        tile = g.expect(tiles[0], "Tile")
        expand = g.expect(g.producer(tile, 0), "Broadcast", mode="bidirectional")
        _fill(net.input, g.take(expand, 0, tuple(net.input.shape)))
        x = self.styled(tile, net.conv1, depthwise=False)
        for block in net.blocks:
            x = self.inverse_haar(self.modulated(x, block.up.modulation), block.up.idwt.channels)
            x = self.styled(x, block.conv1, depthwise=True)
            x = self.styled(x, block.conv2, depthwise=True)
        conv = g.data_consumer(self.modulated(x, net.to_img.conv.modulation), "Convolution")
        _fill(net.to_img.conv.weight, g.take(conv, 1, tuple(net.to_img.conv.weight.shape)))
        bias = g.data_consumer(conv, "Add")
        _fill(net.to_img.bias, g.take(bias, 1, (1, net.to_img.bias.numel(), 1, 1)))
        image = self.inverse_haar(bias, 3)
        result = _single(g, "Result", "img/sink_port_0")
        if g.producer(result, 0) is not image:
            raise g.error(result, "the output should be the final inverse Haar transform")
        style_users = {c.id for c, _ in g.consumers(self.style) if c.type == "MatMul"}
        if style_users != {m.id for m in self.rows} or len(self.rows) != net.n_latent:
            raise g.error(self.style, f"feeds {len(style_users)} modulations; the network has {net.n_latent}")
        g.check_accounted()

    def modulated(self, x: Layer, modulation: Modulation) -> Layer:
        """x · ((style·Aᵀ + b)·scale): returns the Multiply; the MatMul becomes the next W+ row."""
        g = self.g
        multiply = g.data_consumer(x, "Multiply")
        gain = g.producer(multiply, 0 if g.producer(multiply, 1) is x else 1)
        if modulation.scale != 1.0:
            g.expect(gain, "Multiply")
            g.take_scalar(gain, 1, modulation.scale)
            gain = g.producer(gain, 0)
        reshape = g.expect(gain, "Reshape")
        add = g.expect(g.producer(reshape, 0), "Add")
        matmul = g.expect(g.producer(add, 0), "MatMul", transpose_a="false", transpose_b="true")
        if g.producer(matmul, 0) is not self.style:
            raise g.error(matmul, "a modulation should read the style input")
        _fill(modulation.weight, g.take(matmul, 1, tuple(modulation.weight.shape)))
        _fill(modulation.bias, g.take(add, 1, (1, modulation.bias.numel())))
        self.rows.append(matmul)
        return multiply

    def styled(self, x: Layer, layer: StyledLayer, *, depthwise: bool) -> Layer:
        """Modulated conv (full, or depthwise + pointwise) → + noise → + bias → PReLU 0.2."""
        g, conv = self.g, layer.conv
        m = self.modulated(x, conv.modulation)
        pad = "1,1"
        if depthwise:
            dw = g.data_consumer(m, "GroupConvolution", strides="1,1", pads_begin=pad, pads_end=pad, dilations="1,1")
            depth = conv.depthwise
            _fill(depth, g.take(dw, 1, (depth.shape[0], 1, 1, *depth.shape[2:])))
            pw = g.data_consumer(dw, "Convolution", strides="1,1", pads_begin="0,0", pads_end="0,0")
            _fill(conv.pointwise, g.take(pw, 1, tuple(conv.pointwise.shape)))
            out = pw
        else:
            out = g.data_consumer(m, "Convolution", strides="1,1", pads_begin=pad, pads_end=pad, dilations="1,1")
            _fill(conv.weight, g.take(out, 1, tuple(conv.weight.shape)))
        noise = g.data_consumer(out, "Add")
        _fill(layer.noise, g.take(noise, 1, tuple(layer.noise.shape)))
        bias = g.data_consumer(noise, "Add")
        _fill(layer.bias, g.take(bias, 1, (1, layer.bias.numel(), 1, 1)))
        act = g.data_consumer(bias, "PReLU")
        g.take_scalar(act, 1, LEAKY_SLOPE)
        return act

    def inverse_haar(self, x: Layer, channels: int) -> Layer:
        """Split into low [C] and high [3C] channels, then the six transposed convs of the db1 synthesis."""
        g = self.g
        split = g.data_consumer(x, "VariadicSplit")
        g.take_ints(split, 1, (1,))
        g.take_ints(split, 2, (channels, 3 * channels))
        (low_up,) = self._users(split, 0)
        reshape = g.expect(*self._users(split, 1), "Reshape")
        if reshape.outputs[0].dims[1:3] != (channels, 3):
            raise g.error(reshape, f"expected [B, {channels}, 3, H, W], found {list(reshape.outputs[0].dims)}")
        bands = g.data_consumer(reshape, "VariadicSplit")
        g.take_ints(bands, 1, (2,))
        g.take_ints(bands, 2, (1, 1, 1))
        ups = [self._along(low_up, channels, rows=True, taps=BAND_FILTERS[0][0])]
        for band in range(3):
            squeeze = g.expect(*self._users(bands, band), "Squeeze")
            g.take_ints(squeeze, 1, (2,))
            (up,) = self._users(squeeze, 0)
            ups.append(self._along(up, channels, rows=True, taps=BAND_FILTERS[band + 1][0]))
        halves = []
        for a, b, taps in ((ups[0], ups[1], BAND_FILTERS[0][1]), (ups[2], ups[3], BAND_FILTERS[2][1])):
            add = g.data_consumer(a, "Add")
            if {g.producer(add, 0).id, g.producer(add, 1).id} != {a.id, b.id}:
                raise g.error(add, "the two bands of one column filter should be summed here")
            halves.append(
                self._along(g.data_consumer(add, "GroupConvolutionBackpropData"), channels, rows=False, taps=taps)
            )
        total = g.data_consumer(halves[0], "Add")
        if {g.producer(total, 0).id, g.producer(total, 1).id} != {h.id for h in halves}:
            raise g.error(total, "the inverse transform should end by summing its two halves")
        return total

    def _users(self, layer: Layer, port: int) -> list[Layer]:
        return [c for c, _ in self.g.consumers(layer, port) if c.type != "ShapeOf"]

    def _along(self, layer: Layer, channels: int, rows: bool, taps: tuple[float, float]) -> Layer:
        """A per-channel transposed conv with a 2-tap filter, stride 2 along the rows (H) or columns (W)."""
        g = self.g
        g.expect(
            layer,
            "GroupConvolutionBackpropData",
            strides="2,1" if rows else "1,2",
            pads_begin="0,0",
            pads_end="0,0",
            output_padding="0,0",
        )
        shape = (channels, 1, 1, 2, 1) if rows else (channels, 1, 1, 1, 2)
        value = g.take(layer, 1, shape).reshape(channels, 2)
        if not np.allclose(value, np.asarray(taps, dtype=np.float32)[None], rtol=0, atol=1e-7):
            raise g.error(layer, f"filter {value[0].tolist()} is not the Haar synthesis filter {list(taps)}")
        return layer
