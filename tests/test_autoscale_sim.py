"""benchmarks/autoscale_sim.py: Kubernetes' HPA rules, and a ramp through the gpu overlay's HPA."""

from __future__ import annotations

import math

import pytest

from benchmarks.autoscale_sim import Hpa, PodCurve, quantity, simulate
from k8s import check


def hpa(**overrides: object) -> Hpa:
    settings: dict[str, object] = {
        "min_replicas": 2,
        "max_replicas": 16,
        "target_queue_us": 200_000.0,
        "target_busy": 0.85,
        "up_window_s": 0,
        "down_window_s": 300,
        "up_policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 60},
            {"type": "Pods", "value": 4, "periodSeconds": 60},
        ],
        "down_policies": [{"type": "Percent", "value": 50, "periodSeconds": 120}],
        "up_select": "Min",
        "down_select": "Max",
    }
    settings.update(overrides)
    return Hpa(**settings)  # type: ignore[arg-type]


def test_quantities() -> None:
    assert quantity("850m") == 0.85 and quantity("200000") == 200_000 and quantity(3) == 3


def test_within_the_tolerance_nothing_changes() -> None:
    assert hpa().desired(0, 4, 4, queue_us=210_000, busy=0.80) == 4  # 1.05× and 0.94× the targets


def test_scale_up_follows_the_larger_metric_within_the_policies_per_period() -> None:
    scaler = hpa()
    # utilisation says ceil(4 × 1.0 / 0.85) = 5; queue time says 4 × 3 = 12: the larger wins,
    # but doubling or +4 a minute, whichever is less (selectPolicy Min), allows 8
    assert scaler.desired(0, 4, 4, queue_us=600_000, busy=1.0) == 8
    assert scaler.desired(15, 8, 4, queue_us=600_000, busy=1.0) == 8  # the period's budget is spent
    assert scaler.desired(61, 8, 8, queue_us=600_000, busy=1.0) == 12  # a new period: +4


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    scaler = hpa(up_select="Max")
    assert scaler.desired(0, 8, 8, queue_us=0, busy=0.85) == 8  # the window remembers 8
    for t in range(15, 300, 15):
        assert scaler.desired(t, 8, 8, queue_us=0, busy=0.2) == 8
    # 300 s later the 8 has left the window: down, by half at most per 120 s
    assert scaler.desired(315, 8, 8, queue_us=0, busy=0.2) == 4
    assert scaler.desired(330, 4, 4, queue_us=0, busy=0.2) == 4


@pytest.mark.skipif(check.kustomize_command() is None, reason="renders the gpu overlay's HPA with kubectl or kustomize")
def test_a_tenfold_ramp_through_the_gpu_overlay_hpa() -> None:
    from benchmarks.autoscale_sim import ROOT, rendered_hpa

    manifest = rendered_hpa(ROOT / "k8s" / "overlays" / "gpu")
    scaler = Hpa.from_manifest(manifest)
    assert scaler.max_replicas == manifest["spec"]["maxReplicas"] and scaler.target_busy == 0.85
    # a pod that serves 1 face/s at most, with 0.1 s of queueing below that
    curve = PodCurve.from_load(
        [
            {"Concurrency": c, "Inferences/Second": x, "Server Queue": 1e5, "p50 latency": 5e5, "p99 latency": 9e5}
            for c, x in ((1, 0.5), (2, 1.0), (4, 0.9))  # concurrency 4 is past saturation: not in the curve
        ]
    )
    assert curve.capacity == 1.0 and list(curve.throughput) == [0.5, 1.0]
    result = simulate(curve, scaler, base=1.0, ramp=10, ramp_s=300, startup_s=90)
    series = result["series"]
    assert max(series["replicas"]) <= scaler.max_replicas and min(series["replicas"]) >= scaler.min_replicas
    hold_end = result["peak_index"] + 1199
    assert series["ready"][hold_end] >= math.ceil(10 / 0.85)  # enough pods for the load at the target use
    assert series["p99_s"][hold_end] == pytest.approx(0.9, abs=0.01)  # backlog drained: the curve's p99
    assert series["replicas"][-1] < series["replicas"][hold_end]  # and back down after the ramp
    assert result["served"] == pytest.approx(sum(series["offered"]), rel=0.01)
