"""Several evaluators as one: every member's metrics side by side, and a weighted mean of their
primary scores as the selection number (e.g. STS-B dev Spearman and SciFact dev nDCG@10,
both ×100). As a dev evaluator (`eval@dev_eval=dev_mix`) the weighted mean selects the
checkpoint; as the test evaluator (`eval=sts7_scifact`) it tests every member once.
"""

from __future__ import annotations

import math

from csetrain.config import ConfigError
from csetrain.eval.sts import EvalResult


class CombinedEvaluator:
    """`evaluators`: {name: evaluator}; `weights`: {name: weight >= 0}, normalized to sum 1
    (null: equal weights). `split` is `test` if any member scores a test split, so a selection
    that would touch test data is refused like a single test evaluator."""

    def __init__(
        self,
        evaluators: dict,
        weights: dict[str, float] | None = None,
        name: str = "combined",
        compare_initial: bool = False,
        protocol: str | None = None,
    ) -> None:
        if not evaluators:
            raise ConfigError("eval.evaluators is empty: name at least one evaluator")
        self.members = dict(evaluators)
        weights = dict(weights) if weights else dict.fromkeys(self.members, 1.0)
        if unknown := sorted(set(weights) - set(self.members)):
            raise ConfigError(
                f"eval.weights.{unknown[0]}: not in eval.evaluators {list(self.members)}"
            )
        bad = [n for n, w in weights.items() if not (math.isfinite(w) and w >= 0)]
        if bad or not sum(weights.values()) > 0:
            raise ConfigError(f"eval.weights={weights}: weights must be >= 0 with a positive sum")
        total = sum(weights.values())
        self.weights = {n: weights.get(n, 0.0) / total for n in self.members}
        self.name, self.compare_initial = name, compare_initial
        first = next(iter(self.members.values()))
        self.protocol = protocol or first.protocol  # what run tags and references read
        splits = {getattr(e, "split", "dev") for e in self.members.values()}
        self.split = "test" if "test" in splits else "dev"
        self.tasks = [name]

    def label(self, task: str) -> str:
        return task

    def __call__(self, encoder) -> EvalResult:
        metrics, details, mean = {}, {"protocol": self.protocol, "members": {}}, 0.0
        pairs = None  # the first member's per-pair scores (STS), for `runs compare`
        for member, evaluator in self.members.items():
            result = evaluator(encoder)
            metrics.update(result.metrics)
            mean += self.weights[member] * result.primary
            details["members"][member] = {"primary": result.primary_key, **result.details}
            details.setdefault("pairs", {}).update(result.details.get("pairs") or {})
            pairs = pairs or result.pairs
        key = f"{self.name}/weighted_mean"
        metrics[key] = mean
        details["weights"] = self.weights
        return EvalResult(metrics, mean, key, details, pairs)
