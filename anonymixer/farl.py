"""FaRL attribute loss (DESIGN §5, ``attribute_loss: farl``): L1 between FaRL ViT-B/16 token features.

As in the released FaceAnonyMixer code: the tokens (class + patches) out of the last transformer
block, before ``ln_post``; per token the mean |Δ| over channels, summed over tokens. Deliberate
difference: both images go through FaRL's own preprocessing ([-1, 1] → [0, 1] → CLIP mean/std,
224 px), where the released code feeds un-normalised images of two different ranges.

The checkpoint is the official ``FaRL-Base-Patch16-LAIONFace20M-ep64.pth`` (or ep16):
``{'state_dict': CLIP model state dict}``; only the ``visual.*`` tower is used (the file also
holds the text tower and pretraining heads, which are ignored).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from anonymixer.checkpoints import CheckpointError, read_checkpoint_file, strict_load
from anonymixer.losses import resize
from anonymixer.networks.clip_vit import VisionTransformer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX = "visual."


def load_farl_visual(path: str | Path) -> VisionTransformer:
    obj = read_checkpoint_file(path)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or f"{PREFIX}conv1.weight" not in state:
        raise CheckpointError(f"{path}: not a FaRL/CLIP checkpoint (no state_dict with visual.conv1.weight)")
    visual = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    width, _, patch, _ = visual["conv1.weight"].shape
    layers = len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")})
    grid = math.isqrt(visual["positional_embedding"].shape[0] - 1)
    net = VisionTransformer(grid * patch, patch, width, layers, width // 64 or 1, visual["proj"].shape[1])
    tower = set(net.state_dict())
    strict_load(net, {k: v.float() for k, v in visual.items() if k in tower or not _pretraining_head(k)}, f"{path}")
    return net.eval().requires_grad_(False)


def _pretraining_head(key: str) -> bool:
    # FaRL's masked-image-modelling heads live beside the tower in some files.
    return key.split(".")[0] in {"lm_transformer", "ln_lm", "lm_head", "mask_token"}


class FaRLTokenLoss(nn.Module):
    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).reshape(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> FaRLTokenLoss:
        return cls(load_farl_visual(path)).to(device)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = (resize(images, self.visual.input_resolution) + 1) * 0.5
        return self.visual.tokens((x - self.mean) / self.std)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self._tokens(x)]

    def forward(self, y: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        return (self._tokens(y) - targets[0]).abs().mean(dim=2).sum(dim=1)
