"""Read an OpenVINO IR v10 model (``.xml`` graph + ``.bin`` weights) without OpenVINO.

The ``.xml`` lists layers (id, name, type, ``<data>`` attributes, input and output ports with
precisions and dims) and edges (from-layer/port → to-layer/port); each ``Const`` layer's ``<data>``
names an ``element_type``, a ``shape`` and an ``offset``/``size`` into the ``.bin``. :class:`IRGraph`
checks all of that on load (every edge ends at a declared port, every input port is fed once,
every Const lies inside the file with a size that matches its shape) and offers what a strict
loader needs: the producer and consumers of a port, typed Const values, and a ledger of which
Consts and layers the loader has accounted for, so that nothing in the file goes unexplained.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ELEMENT_TYPES = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "u8": np.uint8}
FLOAT_PRECISIONS = ("FP32", "FP16")


def _const_layout(data: dict[str, str]) -> tuple[type, int, int, tuple[int, ...]]:
    """(numpy dtype, offset, size in bytes, shape) of a Const layer's ``<data>``; KeyError/ValueError if malformed."""
    dtype = ELEMENT_TYPES[data["element_type"]]
    shape = tuple(int(s) for s in data.get("shape", "").replace(" ", "").split(",") if s)
    return dtype, int(data["offset"]), int(data["size"]), shape


class IRError(ValueError):
    """An IR file that cannot be read, or whose graph is not the one a loader expects."""


@dataclass(frozen=True)
class Port:
    id: int
    precision: str
    dims: tuple[int, ...]


@dataclass
class Layer:
    id: int
    name: str
    type: str
    data: dict[str, str]
    inputs: list[Port]
    outputs: list[Port]
    sources: list[tuple[int, int]] = field(default_factory=list)  # per input port: (layer id, output port id)


class IRGraph:
    def __init__(self, xml_path: str | Path, bin_path: str | Path) -> None:
        self.xml_path, self.bin_path = Path(xml_path), Path(bin_path)
        try:
            root = ET.parse(self.xml_path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise IRError(f"{self.xml_path}: not a readable IR graph ({exc})") from exc
        if root.tag != "net" or root.get("version") != "10":
            raise IRError(
                f"{self.xml_path}: expected an OpenVINO IR v10 <net>, got <{root.tag} version={root.get('version')}>"
            )
        try:
            self.blob = self.bin_path.read_bytes()
        except OSError as exc:
            raise IRError(f"{self.bin_path}: cannot be read ({exc})") from exc
        self.layers: dict[int, Layer] = {}
        for node in root.findall("./layers/layer"):
            layer = self._layer(node)
            if layer.id in self.layers:
                raise IRError(f"{self.xml_path}: two layers with id {layer.id}")
            self.layers[layer.id] = layer
        self._consumers: dict[tuple[int, int], list[tuple[int, int]]] = {}
        fed: dict[tuple[int, int], tuple[int, int]] = {}
        for edge in root.findall("./edges/edge"):
            src = (int(edge.get("from-layer", -1)), int(edge.get("from-port", -1)))
            dst = (int(edge.get("to-layer", -1)), int(edge.get("to-port", -1)))
            if not self._has_port(src, "outputs") or not self._has_port(dst, "inputs"):
                raise IRError(f"{self.xml_path}: edge {src} → {dst} names a port no layer declares")
            if dst in fed:
                raise IRError(f"{self.describe(self.layers[dst[0]])}: input port {dst[1]} is fed twice")
            fed[dst] = src
            self._consumers.setdefault(src, []).append(dst)
        for layer in self.layers.values():
            for port in layer.inputs:
                if (layer.id, port.id) not in fed:
                    raise IRError(f"{self.describe(layer)}: input port {port.id} is not connected")
                layer.sources.append(fed[(layer.id, port.id)])
        self.taken: set[int] = set()  # Consts whose values a loader has used or checked
        self.visited: set[int] = set()  # layers a loader has matched

    def _layer(self, node: ET.Element) -> Layer:
        def ports(kind: str) -> list[Port]:
            return [
                Port(int(p.get("id", -1)), p.get("precision", ""), tuple(int(d.text or 0) for d in p.findall("dim")))
                for p in node.findall(f"./{kind}/port")
            ]

        data = node.find("data")
        layer = Layer(
            id=int(node.get("id", -1)),
            name=node.get("name", ""),
            type=node.get("type", ""),
            data=dict(data.attrib) if data is not None else {},
            inputs=ports("input"),
            outputs=ports("output"),
        )
        if layer.type == "Const":
            self._check_const(layer)
        return layer

    def _check_const(self, layer: Layer) -> None:
        d = layer.data
        if d.get("element_type") not in ELEMENT_TYPES:
            raise IRError(f"{self.describe(layer)}: unsupported element_type {d.get('element_type')!r}")
        try:
            dtype, offset, size, shape = _const_layout(d)
        except (KeyError, ValueError) as exc:
            raise IRError(f"{self.describe(layer)}: malformed Const data {d}") from exc
        if size != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise IRError(f"{self.describe(layer)}: {size} bytes do not hold {d.get('element_type')} {list(shape)}")
        if offset < 0 or offset + size > len(self.blob):
            raise IRError(
                f"{self.describe(layer)}: bytes {offset}–{offset + size} lie beyond the end of {self.bin_path.name} "
                f"({len(self.blob)} bytes): the file is truncated or not this model's"
            )

    def _has_port(self, ref: tuple[int, int], kind: str) -> bool:
        layer = self.layers.get(ref[0])
        return layer is not None and any(p.id == ref[1] for p in getattr(layer, kind))

    def describe(self, layer: Layer) -> str:
        return f"{self.xml_path.name}: layer {layer.id} {layer.name!r} ({layer.type})"

    def error(self, layer: Layer, problem: str) -> IRError:
        return IRError(f"{self.describe(layer)}: {problem}")

    # -- navigation -------------------------------------------------------------------------------

    def of_type(self, kind: str) -> list[Layer]:
        return [layer for layer in self.layers.values() if layer.type == kind]

    def producer(self, layer: Layer, index: int) -> Layer:
        """The layer feeding the ``index``-th input of ``layer``."""
        return self.layers[layer.sources[index][0]]

    def consumers(self, layer: Layer, port_index: int = 0) -> list[tuple[Layer, int]]:
        """(layer, input index) pairs fed by the ``port_index``-th output of ``layer``."""
        port = layer.outputs[port_index].id
        out = []
        for lid, pid in self._consumers.get((layer.id, port), []):
            consumer = self.layers[lid]
            out.append((consumer, [p.id for p in consumer.inputs].index(pid)))
        return out

    def data_consumer(self, layer: Layer, kind: str, port_index: int = 0, **data: str) -> Layer:
        """The one consumer of an output that is not shape arithmetic, checked like :meth:`expect`."""
        users = [c for c, _ in self.consumers(layer, port_index) if c.type != "ShapeOf"]
        if len(users) != 1:
            raise self.error(layer, f"expected one {kind} after it, found {[self.describe(u) for u in users]}")
        return self.expect(users[0], kind, **data)

    def expect(self, layer: Layer, kind: str, **data: str) -> Layer:
        """Check a layer's type and ``<data>`` attributes (spaces ignored) and mark it matched."""
        if layer.type != kind:
            raise self.error(layer, f"expected a {kind} layer here")
        for key, value in data.items():
            if layer.data.get(key, "").replace(" ", "") != value.replace(" ", ""):
                raise self.error(layer, f"expected {key}={value!r}, found {layer.data.get(key)!r}")
        self.visited.add(layer.id)
        return layer

    # -- constants --------------------------------------------------------------------------------

    def value(self, const: Layer) -> np.ndarray:
        dtype, offset, size, shape = _const_layout(const.data)
        return np.frombuffer(self.blob, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset).reshape(
            shape
        )

    def take(self, layer: Layer, index: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The Const feeding input ``index`` of ``layer``, used once: a second use is an error."""
        const = self.producer(layer, index)
        if const.type != "Const":
            raise self.error(layer, f"input {index} should be a constant, found {self.describe(const)}")
        if const.id in self.taken:
            raise self.error(const, "this constant is used twice")
        value = self.value(const)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise self.error(const, f"shape {list(value.shape)}, expected {list(shape)}")
        self.taken.add(const.id)
        self.visited.add(const.id)
        return value

    def take_scalar(self, layer: Layer, index: int, expected: float) -> None:
        """A structural constant (a scale, an epsilon, a slope): one value equal to ``expected``."""
        value = self.take(layer, index)
        if value.size != 1 or not np.isclose(float(value.reshape(-1)[0]), expected, rtol=1e-6, atol=0):
            raise self.error(
                self.producer(layer, index), f"value {value.reshape(-1)[:4].tolist()}, expected {expected}"
            )

    def take_ints(self, layer: Layer, index: int, expected: tuple[int, ...]) -> None:
        """An integer constant that carries meaning (an axis, split sizes): exactly ``expected``."""
        const = self.producer(layer, index)
        if const.type != "Const" or self.value(const).reshape(-1).tolist() != list(expected):
            found = self.value(const).reshape(-1).tolist() if const.type == "Const" else self.describe(const)
            raise self.error(layer, f"input {index} should be {list(expected)}, found {found}")
        self.taken.add(const.id)

    def check_accounted(self) -> None:
        """Every float Const was used and every float-producing layer matched; the rest is shape arithmetic."""
        unused = [
            self.describe(layer)
            for layer in self.layers.values()
            if layer.id not in self.visited and any(p.precision in FLOAT_PRECISIONS for p in layer.outputs)
        ]
        if unused:
            shown = "; ".join(unused[:8]) + (f"; … ({len(unused)} in all)" if len(unused) > 8 else "")
            raise IRError(f"{self.xml_path.name}: layers the loader does not account for: {shown}")
