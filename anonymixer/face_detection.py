"""Face detection with MTCNN (Zhang et al. 2016): boxes, scores and 5 landmarks per face.

The weights are the three small state dicts that ship inside the ``facenet-pytorch`` wheel on
PyPI (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, converted from the authors' Caffe models);
``scripts/install.sh`` installs that wheel with ``--no-deps`` and nothing of it but the weight
files is used. The cascade below is this project's own: P-Net proposes boxes on an image pyramid,
R-Net and O-Net re-score and regress them on 24 and 48 px crops, O-Net adds the landmarks.

Detections are float32 rows ``[x1, y1, x2, y2, score, lx1, ly1, …, lx5, ly5]`` in the photo's
pixel coordinates (pixel centres at integers), landmarks in the order left eye, right eye, nose,
left mouth corner, right mouth corner (left = image left), sorted left to right.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROW = 15  # box 4, score 1, landmarks 10
WEIGHT_FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}

# (in, out, kernel, max-pool (kernel, stride) after the PReLU or None) per convolution; the flat
# dense layer; the heads (classification first). Names follow the weight files' keys.
NET_LAYOUTS = {
    "pnet": ([(3, 10, 3, (2, 2)), (10, 16, 3, None), (16, 32, 3, None)], None, {"conv4_1": 2, "conv4_2": 4}),
    "rnet": (
        [(3, 28, 3, (3, 2)), (28, 48, 3, (3, 2)), (48, 64, 2, None)],
        ("dense4", 576, 128),
        {"dense5_1": 2, "dense5_2": 4},
    ),
    "onet": (
        [(3, 32, 3, (3, 2)), (32, 64, 3, (3, 2)), (64, 64, 3, (2, 2)), (64, 128, 2, None)],
        ("dense5", 1152, 256),
        {"dense6_1": 2, "dense6_2": 4, "dense6_3": 10},
    ),
}


class CascadeNet(nn.Module):
    """One MTCNN stage: conv+PReLU(+max-pool) blocks, an optional dense+PReLU layer, then heads.

    P-Net is fully convolutional (1×1 convolution heads, any input size); R-Net and O-Net take
    24 and 48 px crops. Returns (face probability, box regression[, landmarks]).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        convs, dense, heads = NET_LAYOUTS[name]
        self.pools: list[tuple[int, int] | None] = []
        for i, (cin, cout, k, pool) in enumerate(convs, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, k))
            setattr(self, f"prelu{i}", nn.PReLU(cout))
            self.pools.append(pool)
        self.dense: str | None = None
        width = convs[-1][1]
        if dense is not None:
            self.dense, fan_in, width = dense
            setattr(self, self.dense, nn.Linear(fan_in, width))
            setattr(self, f"prelu{len(convs) + 1}", nn.PReLU(width))
        self.heads = list(heads)
        for head, out in heads.items():
            setattr(self, head, nn.Conv2d(width, out, 1) if dense is None else nn.Linear(width, out))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for i, pool in enumerate(self.pools, start=1):
            x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
            if pool is not None:
                x = F.max_pool2d(x, pool[0], pool[1], ceil_mode=True)
        if self.dense is not None:
            # The Caffe originals flatten in (W, H, C) order; the dense weights expect it.
            x = x.permute(0, 3, 2, 1).flatten(1)
            x = getattr(self, f"prelu{len(self.pools) + 1}")(getattr(self, self.dense)(x))
        out = [getattr(self, head)(x) for head in self.heads]
        return (torch.softmax(out[0], dim=1)[:, 1], *out[1:])


def packaged_weights_dir() -> Path:
    """The ``data`` folder of the installed facenet-pytorch wheel (found without importing it:
    its ``__init__`` needs torchvision, which this project does not install)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MTCNN weights not found: install them with `pip install --no-deps facenet-pytorch==2.6.0` "
            "(scripts/install.sh does) or pass the folder holding pnet.pt, rnet.pt and onet.pt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@dataclass(frozen=True)
class DetectorConfig:
    min_face: int = 20  # smallest face side searched, in pixels of the (downscaled) photo
    # P-, R-, O-Net face probability. O-Net at 0.85, not the usual 0.7: on ../shared's photos that
    # drops a necklace and a shoulder (0.78–0.83) and keeps every real face, cut ones included (≥ 0.92).
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.85)
    pyramid_factor: float = 0.709  # scale step of the image pyramid (area halves every 2 steps)
    nms: tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7)  # per scale, P-, R-Net (IoU); O-Net (min)
    max_side: int = 1600  # photos are downscaled to this long side for detection (bounded cost)
    # Zero border added around the photo, as a fraction of its long side: P-Net's windows then see
    # faces cut by the frame whole (measured: the half-visible face of selfie-many-people.jpg is
    # found only with a border).
    border: float = 0.1


class FaceDetector:
    def __init__(self, weights_dir: str | Path | None = None, config: DetectorConfig | None = None) -> None:
        folder = Path(weights_dir) if weights_dir is not None else packaged_weights_dir()
        self.config = config or DetectorConfig()
        self.nets = {}
        for name, file in WEIGHT_FILES.items():
            path = folder / file
            if not path.is_file():
                raise FileNotFoundError(f"{path}: MTCNN {name} weights missing")
            net = CascadeNet(name)
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{path}: not an MTCNN {name} state dict (missing {missing}, unexpected {unexpected})")
            self.nets[name] = net.eval().requires_grad_(False)

    @torch.inference_mode()
    def detect(self, photo: np.ndarray) -> np.ndarray:
        """uint8 RGB [H, W, 3] → float32 [N, 15] detections (see the module docstring)."""
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise ValueError(f"photo must be uint8 [H, W, 3], got {photo.dtype} {list(photo.shape)}")
        small, shrink = shrink_for_detection(photo, self.config.max_side)
        image = torch.tensor(small).permute(2, 0, 1)[None].float()
        pad = round(self.config.border * max(image.shape[2:]))
        rows = self._cascade(F.pad(image, (pad, pad, pad, pad)))
        rows[:, :4] = (rows[:, :4] - pad) / shrink
        rows[:, 5:] = (rows[:, 5:] - pad) / shrink
        return rows[np.argsort(rows[:, 0], kind="stable")].astype(np.float32)

    def _cascade(self, image: torch.Tensor) -> np.ndarray:
        cfg = self.config
        boxes = self._propose(image)
        stages = (("rnet", 24, cfg.thresholds[1], cfg.nms[2]), ("onet", 48, cfg.thresholds[2], cfg.nms[3]))
        for stage, size, threshold, nms in stages:
            if len(boxes) == 0:
                break
            boxes = square(boxes)
            out = self.nets[stage](normalise(crops(image, boxes, size)))
            keep = (out[0] >= threshold).numpy()
            boxes, scores = boxes[keep], out[0].numpy()[keep]
            regression = out[1].numpy()[keep]
            if stage == "onet":
                side = (boxes[:, 2:4] - boxes[:, 0:2] + 1)[:, None, :]
                marks = out[2].numpy()[keep].reshape(-1, 2, 5).transpose(0, 2, 1)  # x1..x5, y1..y5
                landmarks = (boxes[:, None, 0:2] + side * marks - 1).reshape(-1, 10)
                boxes = regress(boxes, regression, plus_one=True)
                pick = nms_keep(boxes, scores, nms, by_min=True)
                return np.concatenate([boxes, scores[:, None], landmarks], axis=1)[pick]
            pick = nms_keep(boxes, scores, nms)
            boxes = regress(boxes[pick], regression[pick], plus_one=True)
        return np.zeros((0, ROW), np.float32)

    def _propose(self, image: torch.Tensor) -> np.ndarray:
        """P-Net over the pyramid → candidate boxes [N, 4] (regressed), in image pixels."""
        cfg = self.config
        h, w = image.shape[2:]
        scale = 12.0 / cfg.min_face
        side = min(h, w) * scale
        found = []
        while side >= 12:
            level = F.interpolate(image, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            prob, reg = self.nets["pnet"](normalise(level))
            ys, xs = np.nonzero(prob[0].numpy() >= cfg.thresholds[0])
            if len(ys):
                # Each P-Net output cell sees a 12 px window at stride 2 of the scaled image.
                cells = np.stack([xs, ys], axis=1).astype(np.float64)
                corners = np.concatenate([np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale)], 1)
                scores = prob[0].numpy()[ys, xs]
                shifts = reg[0].numpy()[:, ys, xs].T
                pick = nms_keep(corners, scores, cfg.nms[0])
                found.append((corners[pick], scores[pick], shifts[pick]))
            scale *= cfg.pyramid_factor
            side *= cfg.pyramid_factor
        if not found:
            return np.zeros((0, 4))
        corners, scores, shifts = (np.concatenate(parts) for parts in zip(*found, strict=True))
        pick = nms_keep(corners, scores, cfg.nms[1])
        return regress(corners[pick], shifts[pick], plus_one=False)


def largest_face(detections: np.ndarray) -> np.ndarray:
    """The row of the detection with the largest box (the subject of a portrait)."""
    if not len(detections):
        raise ValueError("no detections")
    area = (detections[:, 2] - detections[:, 0]) * (detections[:, 3] - detections[:, 1])
    return detections[int(np.argmax(area))]


def shrink_for_detection(photo: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``photo`` area-downscaled to at most ``max_side`` on its long side, and the scale used
    (detections divide by it). Faces of a few pixels are lost, which is the point: bounded cost."""
    h, w = photo.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1:
        return photo, 1.0
    # At least one pixel: the short side of a 16 × 100 000 photo would round to none.
    return area_resize(photo, max(1, round(h * scale)), max(1, round(w * scale))), scale


AREA_CHUNK_PIXELS = 1 << 18  # photo pixels summed at a time: the int64 temporaries stay near 6 MB


def area_resize(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, C] → uint8 [height, width, C] by area averaging, the cells and the float32
    arithmetic of ``F.interpolate(mode="area")`` (adaptive average pooling), computed from exact
    integer sums over bands of rows: a 40 M pixel photo is never a float array (480 MB)."""
    h, w, c = photo.shape
    y0, y1 = pool_cells(h, height)
    x0, x1 = pool_cells(w, width)
    rows = max(1, AREA_CHUNK_PIXELS // w)
    cell_w = (x1 - x0).astype(np.float32)[:, None]
    out = np.empty((height, width, c), np.uint8)
    first = 0
    while first < height:
        # the output rows whose cells fit in ``rows`` photo rows (at least one)
        last = max(first + 1, int(np.searchsorted(y1, y0[first] + rows, side="right")))
        top, bottom = y0[first], y1[last - 1]
        chunks = [photo[r : min(r + rows, bottom)] for r in range(top, bottom, rows)]
        columns = np.concatenate([column_sums(chunk, x0, x1) for chunk in chunks])
        running = np.concatenate([np.zeros((1, width, c), np.int64), np.cumsum(columns, axis=0)])
        sums = running[y1[first:last] - top] - running[y0[first:last] - top]
        cell_h = (y1 - y0)[first:last].astype(np.float32)[:, None, None]
        # Integer sums below 2^24 are exact in float32, and torch divides by the height, then the width.
        out[first:last] = np.clip(np.round(sums.astype(np.float32) / cell_h / cell_w), 0, 255)
        first = last
    return out


def pool_cells(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each of ``out`` adaptive-pooling cells over ``size`` pixels
    (neighbouring cells share a pixel when ``size / out`` is not whole)."""
    i = np.arange(out)
    return (i * size) // out, -((-(i + 1) * size) // out)


def column_sums(rows: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Sums of ``rows`` [n, W, C] over the column cells [x0, x1): int64 [n, cells, C]."""
    running = np.cumsum(rows, axis=1, dtype=np.int64)
    before = np.where((x0 > 0)[:, None], running[:, np.maximum(x0 - 1, 0)], 0)
    return running[:, x1 - 1] - before


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def regress(boxes: np.ndarray, shifts: np.ndarray, *, plus_one: bool) -> np.ndarray:
    """Apply the nets' box regression (offsets in units of the box side)."""
    size = boxes[:, 2:4] - boxes[:, 0:2] + (1 if plus_one else 0)
    return boxes[:, :4] + shifts * np.concatenate([size, size], axis=1)


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the nets were trained on square crops)."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(axis=1, keepdims=True)
    top_left = boxes[:, 0:2] + size / 2 - side / 2
    return np.concatenate([top_left, top_left + side], axis=1)


def crops(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Integer crops of ``boxes`` (zero outside the image), each area-resized to ``size``²."""
    h, w = image.shape[2:]
    out = []
    for x1, y1, x2, y2 in np.trunc(boxes).astype(int):
        x1, y1 = x1 - 1, y1 - 1  # the cascade's boxes are inclusive, 1-based on their left/top edge
        patch = image.new_zeros(1, 3, max(y2 - y1, 1), max(x2 - x1, 1))
        sx, sy, ex, ey = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if ex > sx and ey > sy:
            patch[:, :, sy - y1 : ey - y1, sx - x1 : ex - x1] = image[:, :, sy:ey, sx:ex]
        out.append(F.interpolate(patch, size=(size, size), mode="area"))
    return torch.cat(out)


def nms_keep(boxes: np.ndarray, scores: np.ndarray, threshold: float, *, by_min: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression; overlap is IoU, or intersection over the smaller box."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        overlap = inter / (np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)
