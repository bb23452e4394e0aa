"""The generator's render inside the optimisation loops (inversion and refinement), eager or compiled.

``ProtectConfig.compile`` compiles only the synthesis network, forward and backward: it is where
the time goes (the 512 px layers stream their activations through memory a few times per
elementwise op, and inductor fuses those ops), and one compiled function serves the inversion,
the refinement and every batch size — a static graph for the first size it meets and, by torch's
automatic dynamic shapes, one shape-generic graph for the next size and all later ones. So a
process compiles twice, not once per stage and batch size (``benchmarks/refine_bench.py``:
the table of what this bought on a 2-core CPU). The losses around it run eager: small networks
at ≤ 256 px.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from anonymixer.networks import AnyGenerator


def _synthesis(generator: AnyGenerator, w_plus: torch.Tensor, resolution: int | None) -> torch.Tensor:
    return generator.synthesis(w_plus, resolution=resolution)


@functools.cache
def compiled_synthesis(mode: str) -> Callable[[AnyGenerator, torch.Tensor, int | None], torch.Tensor]:
    # One compiled function per mode for the process. Dynamo's default limit (8 graphs per
    # function) would fall back to eager past it: CUDA graphs (``reduce-overhead``) are recorded
    # per batch bucket (ProtectConfig.batch_buckets).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(_synthesis, mode=mode, dynamic=None)


def synthesize(generator: AnyGenerator, w_plus: torch.Tensor, resolution: int | None, compile: str) -> torch.Tensor:
    """``generator.synthesis(w_plus, resolution=resolution)``, through torch.compile unless ``compile`` is "off"."""
    if compile == "off":
        return _synthesis(generator, w_plus, resolution)
    if compile == "reduce-overhead":
        # one render per optimisation step: each is a new iteration for CUDA-graph trees, which may
        # then overwrite the last one's outputs (the loops keep nothing of them uncopied)
        torch.compiler.cudagraph_mark_step_begin()
    return compiled_synthesis(compile)(generator, w_plus, resolution)
