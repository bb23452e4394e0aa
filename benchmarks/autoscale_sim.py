"""The HPA of k8s/ played against a traffic ramp, on the latency curve the load benchmark measured.

    python -m benchmarks.autoscale_sim [--load benchmarks/results/<run>/load.json]
        [--overlay k8s/overlays/gpu] [--base-rate R] [--ramp 10] [--ramp-minutes 5]
        [--startup-s 90] [--gpu-hour-usd 2.5] [--out DIR]

Model of one pod: the load benchmark's rows (concurrency c → throughput X(c), p50/p99 latency,
server queue time). A pod offered λ requests/s below its saturation throughput μ = max X runs at the
measured point with X = λ (interpolated); above μ, the excess waits in a backlog whose drain time
adds to every request's queue time and latency. New pods serve after ``--startup-s`` (model load;
the startupProbe's budget is 10 min).

The HPA (Kubernetes' algorithm, read from the overlay's rendered HorizontalPodAutoscaler: min/max
replicas, targets, behaviour): every 15 s, per metric, desired = ceil(ready × metric / target),
skipped within the 10 % tolerance; the largest over metrics; scale-up limited by its policies
(the largest allowed change wins), scale-down by the highest recommendation of the stabilisation
window and its policies. Metrics: queue time per request (from the curve, plus the backlog's
drain time) and, where the HPA has one, the utilisation metric (the gpu overlay's GPU use, the
cpu-demo's CPU use), modelled as the busy fraction: served rate / the pod's saturation rate.
Queue time alone is ~0 until a pod saturates, so on its own it scales down to the minimum and
back up in a loop; the utilisation metric holds the count while the load stays.

Traffic: ``--base-rate`` (default: half of one pod's saturation throughput) for 5 minutes, then a
linear ramp to ``--ramp`` × that over ``--ramp-minutes``, held 20 minutes, then back to the base.
Writes autoscale.png (offered load and capacity, replicas, queue time, p99 over time) and
autoscale.json (replica count at peak, p99 at peak, pod-hours, GPU cost per 1 M protected faces at
``--gpu-hour-usd`` per pod-hour, an assumption to replace by your price).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import results_dir, save_record

SYNC_S = 15.0  # the HPA controller's sync period
TOLERANCE = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance
DT = 1.0
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PodCurve:
    """One pod's measured operating points, sorted by throughput."""

    throughput: np.ndarray  # requests/s
    queue_s: np.ndarray
    p50_s: np.ndarray
    p99_s: np.ndarray

    @classmethod
    def from_load(cls, rows: list[dict[str, float]]) -> PodCurve:
        rows = sorted(rows, key=lambda r: r.get("Concurrency", r.get("Request Rate", 0)))
        # past the level with the best throughput the pod is overloaded (more queueing, no more
        # throughput): the curve is the levels up to it
        peak = max(range(len(rows)), key=lambda i: rows[i]["Inferences/Second"])
        rows = sorted(rows[: peak + 1], key=lambda r: r["Inferences/Second"])
        seconds = [np.array([r[name] / 1e6 for r in rows]) for name in ("Server Queue", "p50 latency", "p99 latency")]
        return cls(np.array([r["Inferences/Second"] for r in rows]), *seconds)

    @property
    def capacity(self) -> float:
        return float(self.throughput[-1])

    def at(self, rate: float) -> tuple[float, float, float]:
        """(queue s, p50 s, p99 s) at ``rate`` ≤ capacity; below the lowest point, the lowest point."""
        return tuple(float(np.interp(rate, self.throughput, y)) for y in (self.queue_s, self.p50_s, self.p99_s))


@dataclass
class Hpa:
    min_replicas: int
    max_replicas: int
    target_queue_us: float
    target_busy: float | None  # the utilisation metric's target (GPU or CPU), when the HPA has one
    up_window_s: float
    down_window_s: float
    up_policies: list[dict[str, Any]]
    down_policies: list[dict[str, Any]]
    up_select: str = "Max"
    down_select: str = "Max"
    history: list[tuple[float, int]] = field(default_factory=list)  # (time, raw recommendation)
    changes: list[tuple[float, int]] = field(default_factory=list)  # (time, replicas added or removed)

    @classmethod
    def from_manifest(cls, hpa: dict[str, Any]) -> Hpa:
        spec = hpa["spec"]
        targets = {}
        for m in spec["metrics"]:
            if m["type"] == "Pods":
                targets[m["pods"]["metric"]["name"]] = quantity(m["pods"]["target"]["averageValue"])
            elif m["type"] == "Resource" and m["resource"]["name"] == "cpu":
                targets["cpu"] = m["resource"]["target"]["averageUtilization"] / 100
        behavior = spec.get("behavior", {})
        up, down = behavior.get("scaleUp", {}), behavior.get("scaleDown", {})
        return cls(
            min_replicas=spec.get("minReplicas", 1),
            max_replicas=spec["maxReplicas"],
            target_queue_us=targets["anonymixer_queue_time_us_per_request"],
            target_busy=targets.get("anonymixer_gpu_utilization", targets.get("cpu")),
            up_window_s=up.get("stabilizationWindowSeconds", 0),
            down_window_s=down.get("stabilizationWindowSeconds", 300),
            up_policies=up.get("policies", [{"type": "Percent", "value": 100, "periodSeconds": 15}]),
            down_policies=down.get("policies", [{"type": "Percent", "value": 100, "periodSeconds": 15}]),
            up_select=up.get("selectPolicy", "Max"),
            down_select=down.get("selectPolicy", "Max"),
        )

    def bound(self, now: float, current: int, up: bool) -> int:
        """The most (up) or fewest (down) replicas the policies allow now, as Kubernetes counts
        them: from the count at the start of each policy's period."""
        policies, select = (self.up_policies, self.up_select) if up else (self.down_policies, self.down_select)
        bounds = []
        for p in policies:
            moved = sum(d for t, d in self.changes if t > now - p["periodSeconds"] and (d > 0) == up)
            start = current - moved
            if p["type"] == "Pods":
                bounds.append(start + p["value"] if up else start - p["value"])
            else:
                bounds.append(
                    math.ceil(start * (1 + p["value"] / 100)) if up else math.ceil(start * (1 - p["value"] / 100))
                )
        # "Max" picks the policy that allows the biggest change
        return (
            (max(bounds) if select == "Max" else min(bounds))
            if up
            else (min(bounds) if select == "Max" else max(bounds))
        )

    def desired(self, now: float, current: int, ready: int, queue_us: float, busy: float) -> int:
        """One sync: the largest of the metrics' proposals, then the behaviour's limits."""
        raw = current
        if ready:
            metrics = [(queue_us, self.target_queue_us)]
            if self.target_busy is not None:
                metrics.append((busy, self.target_busy))
            proposals = [
                current if abs(value / target - 1) <= TOLERANCE else math.ceil(ready * value / target)
                for value, target in metrics
            ]
            raw = max(proposals)
        raw = min(max(raw, self.min_replicas), self.max_replicas)
        self.history.append((now, raw))
        # stabilisation: scale down only to the highest recommendation of the window (and up only
        # to the lowest of the up-window)
        down_floor = max(r for t, r in self.history if t >= now - self.down_window_s)
        up_ceiling = min(r for t, r in self.history if t >= now - self.up_window_s)
        wanted = current
        if raw > current:
            wanted = max(current, min(up_ceiling, self.bound(now, current, up=True), self.max_replicas))
        elif raw < current:
            wanted = min(current, max(down_floor, self.bound(now, current, up=False), self.min_replicas))
        if wanted != current:
            self.changes.append((now, wanted - current))
        return wanted


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number: "200000" → 200000, "850m" → 0.85."""
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def traffic(t: float, base: float, ramp: float, ramp_s: float) -> float:
    start, hold = 300.0, 1200.0
    if t < start:
        return base
    if t < start + ramp_s:
        return base * (1 + (ramp - 1) * (t - start) / ramp_s)
    if t < start + ramp_s + hold:
        return base * ramp
    if t < start + 2 * ramp_s + hold:
        return base * (ramp - (ramp - 1) * (t - start - ramp_s - hold) / ramp_s)
    return base


def simulate(curve: PodCurve, hpa: Hpa, base: float, ramp: float, ramp_s: float, startup_s: float) -> dict[str, Any]:
    end = 300 + 2 * ramp_s + 1200 + 1200
    replicas = hpa.min_replicas
    starts = [-startup_s] * replicas  # the time each pod was created; ready after startup_s
    backlog = 0.0
    keys = ("t", "offered", "capacity", "replicas", "ready", "queue_s", "p99_s")
    series: dict[str, list[float]] = {k: [] for k in keys}
    served = 0.0
    pod_seconds = 0.0
    queue_us = 0.0
    for step in range(int(end / DT)):
        now = step * DT
        ready = sum(1 for s in starts if now - s >= startup_s)
        offered = traffic(now, base, ramp, ramp_s)
        capacity = ready * curve.capacity
        work = offered * DT + backlog
        done = min(work, capacity * DT)
        backlog = work - done
        served += done
        per_pod = min(offered, capacity) / max(ready, 1)
        busy = per_pod / curve.capacity  # the share of time a pod computes: 1 at its saturation
        queue, _, p99 = curve.at(per_pod) if ready else (0.0, 0.0, 0.0)
        drain = backlog / capacity if capacity else float("inf")
        queue, p99 = queue + drain, p99 + drain
        queue_us = 1e6 * queue
        if step % int(SYNC_S / DT) == 0:
            wanted = hpa.desired(now, replicas, ready, queue_us, busy)
            if wanted > replicas:
                starts += [now] * (wanted - replicas)
            elif wanted < replicas:
                starts = sorted(starts)[:wanted]  # the newest pods go first
            replicas = wanted
        pod_seconds += replicas * DT
        for key, value in zip(series, (now, offered, capacity, replicas, ready, queue, p99), strict=True):
            series[key].append(value)
    peak = int(np.argmax(series["offered"]))
    return {"series": series, "served": served, "pod_hours": pod_seconds / 3600, "peak_index": peak}


def plot(series: dict[str, list[float]], path: Path, title: str) -> None:
    from evaluation.plots import pyplot

    plt = pyplot()
    minutes = np.array(series["t"]) / 60
    fig, axes = plt.subplots(4, 1, figsize=(7, 8), sharex=True)
    axes[0].plot(minutes, series["offered"], label="offered (faces/s)")
    axes[0].plot(minutes, series["capacity"], label="ready capacity (faces/s)")
    axes[1].plot(minutes, series["replicas"], label="replicas (desired)")
    axes[1].plot(minutes, series["ready"], label="ready")
    axes[2].plot(minutes, series["queue_s"], label="queue time per request (s)")
    axes[3].plot(minutes, series["p99_s"], label="p99 latency (s)")
    for ax in axes:
        ax.legend(fontsize=8, loc="upper left")
    axes[2].set_yscale("symlog", linthresh=1.0)
    axes[3].set_yscale("symlog", linthresh=1.0)
    axes[-1].set_xlabel("minutes")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rendered_hpa(overlay: Path) -> dict[str, Any]:
    from k8s import check  # k8s/check.py, from the repository root

    return next(o for o in check.render(overlay) if o["kind"] == "HorizontalPodAutoscaler")


def run(args: argparse.Namespace) -> dict[str, Any]:
    load = json.loads(Path(args.load).read_text())
    curve = PodCurve.from_load(load["results"])
    hpa = Hpa.from_manifest(rendered_hpa(Path(args.overlay)))
    base = args.base_rate or curve.capacity / 2
    result = simulate(curve, hpa, base, args.ramp, 60 * args.ramp_minutes, args.startup_s)
    series, peak = result["series"], result["peak_index"]
    hold_end = peak + int(1200 / DT) - 1  # the end of the hold: the scale-up has settled
    faces = result["served"]
    summary = {
        "curve": {"from": str(args.load), "machine": load["machine"], "pod_capacity_faces_per_s": curve.capacity},
        "overlay": Path(args.overlay).name,
        "hpa": {k: v for k, v in vars(hpa).items() if k not in ("history", "changes")},
        "traffic": {"base_faces_per_s": base, "ramp": args.ramp, "ramp_minutes": args.ramp_minutes},
        "startup_s": args.startup_s,
        "replicas_at_peak_load": series["replicas"][hold_end],
        "replicas_needed_at_peak": math.ceil(base * args.ramp / curve.capacity),
        "max_replicas_seen": max(series["replicas"]),
        "max_p99_s": max(series["p99_s"]),
        "p99_s_at_end_of_hold": series["p99_s"][hold_end],
        "faces_served": faces,
        "pod_hours": result["pod_hours"],
        "gpu_hour_usd": args.gpu_hour_usd,
        "pod_hours_per_million_faces": result["pod_hours"] / faces * 1e6,
        "usd_per_million_faces": result["pod_hours"] * args.gpu_hour_usd / faces * 1e6,
        "pod_hours_per_million_faces_at_saturation": 1e6 / curve.capacity / 3600,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = (
        f"HPA of {Path(args.overlay).name} on the load curve of {Path(args.load).parent.name}: "
        f"{base:.3g} → {base * args.ramp:.3g} faces/s in {args.ramp_minutes:g} min"
    )
    plot(series, out / "autoscale.png", title)
    save_record(out / "autoscale.json", "autoscale_sim", summary)
    print(
        f"pod capacity {curve.capacity:.3g} faces/s; peak load {base * args.ramp:.3g} faces/s needs "
        f"{summary['replicas_needed_at_peak']} pods; the HPA reached {summary['max_replicas_seen']} "
        f"(cap {hpa.max_replicas}); max p99 {summary['max_p99_s']:.1f} s, p99 at the end of the hold "
        f"{summary['p99_s_at_end_of_hold']:.1f} s; {summary['pod_hours']:.2f} pod-hours for {faces:.0f} faces"
        f" → ${summary['usd_per_million_faces']:.0f} per 1 M faces at ${args.gpu_hour_usd}/pod-hour"
    )
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_load = sorted((ROOT / "benchmarks" / "results").glob("*/load.json"))
    p.add_argument("--load", default=str(default_load[-1]) if default_load else None, required=not default_load)
    p.add_argument("--overlay", default=str(ROOT / "k8s" / "overlays" / "gpu"), help="whose HPA (default gpu)")
    p.add_argument("--base-rate", type=float, default=None, help="faces/s before the ramp")
    p.add_argument("--ramp", type=float, default=10.0)
    p.add_argument("--ramp-minutes", type=float, default=5.0)
    p.add_argument("--startup-s", type=float, default=90.0, help="seconds from pod creation to ready")
    p.add_argument("--gpu-hour-usd", type=float, default=2.5, help="price of one pod-hour (an assumption)")
    p.add_argument("--out", default=str(results_dir()))
    return p


def main(argv: list[str] | None = None) -> int:
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
