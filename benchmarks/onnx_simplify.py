"""Does simplifying the exported graphs help? Node counts and onnxruntime CPU latency, measured.

    python -m exporter onnx --no-simplify --bundle BUNDLE --out DIR
    python -m benchmarks.onnx_simplify --onnx DIR [--batch 1] [--repeats 20]

For each model: nodes of the exported graph, after onnxsim (if installed) and after onnxruntime's
offline basic optimisation (constant folding, redundant-node elimination); session creation time
and median latency of the exported graph with onnxruntime's default (full) optimisation, of the
onnxsim graph, and of the exported graph with optimisation disabled (what the graph costs as
written). Writes ``benchmarks/results/<date>-<machine>/onnx_simplify_<profile>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.machine import results_dir, save_record


def session(path: Path, level: ort.GraphOptimizationLevel, optimized_out: Path | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if optimized_out is not None:
        options.optimized_model_filepath = str(optimized_out)
    start = time.perf_counter()
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return s, time.perf_counter() - start


def latency(s: ort.InferenceSession, feed: dict, repeats: int) -> float:
    s.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    manifest = json.loads((Path(args.onnx) / "onnx_manifest.json").read_text())
    try:
        import onnxsim
    except ImportError:
        onnxsim = None
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, facts in manifest["models"].items():
            path = Path(args.onnx) / facts["file"]
            shape = (args.batch, *facts["input"]["dims"])
            feed = {facts["input"]["name"]: np.random.RandomState(0).uniform(-1, 1, shape).astype(np.float32)}
            basic = Path(tmp) / f"{name}.basic.onnx"
            session(path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, basic)
            default, create_s = session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            plain, _ = session(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
            row = {
                "nodes_exported": len(onnx.load(str(path)).graph.node),
                "nodes_ort_basic": len(onnx.load(str(basic)).graph.node),
                "session_create_s": round(create_s, 3),
                "ms_ort_default": round(latency(default, feed, args.repeats), 3),
                "ms_no_optimisation": round(latency(plain, feed, args.repeats), 3),
            }
            if onnxsim is not None:
                simplified, ok = onnxsim.simplify(onnx.load(str(path)))
                sim_path = Path(tmp) / f"{name}.sim.onnx"
                onnx.save(simplified, str(sim_path))
                row["nodes_onnxsim"] = len(simplified.graph.node) if ok else None
                row["ms_onnxsim_ort_default"] = round(
                    latency(session(sim_path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)[0], feed, args.repeats), 3
                )
            rows[name] = row
            print(name, row, flush=True)
    out = args.out or results_dir() / f"onnx_simplify_{manifest['bundle']['profile']}.json"
    save_record(out, "onnx_simplify", rows, onnx=str(args.onnx), batch=args.batch, onnxruntime=ort.__version__)


if __name__ == "__main__":
    main()
