"""Custom Prometheus metrics of the ``anonymixer`` and ``anonymixer_scene`` models (on Triton's metrics port).

The MetricFamily objects live on the model object for its whole life: the Python backend deletes
a family's metrics when the family is garbage-collected.
"""

from __future__ import annotations

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

STAGES = (
    "decode",
    "encode",
    "invert",
    "map",
    "refine",
    "render",
    "embed",
    "detect",
    "protect",
    "compose",
)  # last 3: scene
# up to an hour: a CPU request of mobile1024 (inversion and refinement of a group) takes minutes
SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]
SIMILARITY_BUCKETS = [-0.5, -0.25, -0.1, -0.05, 0, 0.05, 0.1, 0.2, 0.3, 0.5, 1]


class ModelMetrics:
    def __init__(self, model: str) -> None:
        family = pb_utils.MetricFamily
        labels = {"model": model}
        self._labels = labels
        self.items_family = family("anonymixer_items_protected_total", "Protected faces returned", family.COUNTER)
        self.steps_family = family(
            "anonymixer_refinement_steps_total", "Adam steps run, counted once per refined batch", family.COUNTER
        )
        self.batch_family = family(
            "anonymixer_batch_items", "Refined items per execute (augmented views included)", family.HISTOGRAM
        )
        self.stage_family = family("anonymixer_stage_seconds", "Seconds per execute and stage", family.HISTOGRAM)
        self.similarity_family = family(
            "anonymixer_original_similarity", "cos(protected, original) of each returned face", family.HISTOGRAM
        )
        self.errors_family = family("anonymixer_request_errors_total", "Failed requests by reason", family.COUNTER)
        self.items = self.items_family.Metric(labels=labels)
        self.steps = self.steps_family.Metric(labels=labels)
        self.batch = self.batch_family.Metric(labels=labels, buckets=BATCH_BUCKETS)
        self.similarity = self.similarity_family.Metric(labels=labels, buckets=SIMILARITY_BUCKETS)
        self.stages = {
            s: self.stage_family.Metric(labels={**labels, "stage": s}, buckets=SECONDS_BUCKETS) for s in STAGES
        }
        self._errors: dict[str, object] = {}

    def error(self, reason: str) -> None:
        if reason not in self._errors:
            self._errors[reason] = self.errors_family.Metric(labels={**self._labels, "reason": reason})
        self._errors[reason].increment(1)

    def stage(self, name: str, seconds: float) -> None:
        self.stages[name].observe(seconds)
