"""Tolerances for tests that compare two computations of the same function, machine-independent
by construction.

Two float evaluations of one function that only differ in summation order (threads,
vectorisation, another BLAS kernel, a batch padded to another width) differ by rounding, and how
much depends on the CPU. A fixed float32 tolerance that holds on one machine can fail on
another. Two remedies, used by the tests:

- Run both sides in float64 (`encoder.double()`, float64 inputs) and compare with
  `FLOAT64_RTOL` relative to the largest value. Reordering a sum of n float64 terms moves it by
  at most about n * eps64 (2.2e-16) of the sum of magnitudes; through the tiny test models
  (hidden 32, 2 layers, sums of at most a few thousand terms) that stays below ~1e-12, so 1e-9
  is loose against rounding on any machine and still ~1e5 times tighter than a real error.
- Where library code computes in float32 regardless of the input (an explicit `.float()`),
  derive the tolerance from eps32 and the number of summed terms: `softmax_loss_atol`.
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: one float32 ulp relative to the value
FLOAT64_RTOL = 1e-9  # see the module docstring


def assert_float64_close(
    actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None, msg=None
) -> None:
    """Equal up to float64 reordering: both float64, within FLOAT64_RTOL of `scale` (default:
    the largest value of `expected`).

    One scale for the whole tensor, or for a set of tensors (pass the largest value of all,
    e.g. over every gradient of a model): entries that are exactly zero in exact arithmetic
    (the attention key bias's gradient: softmax ignores a per-query constant) hold rounding
    noise of the size of the others' rounding."""
    assert actual.dtype == expected.dtype == torch.float64, (actual.dtype, expected.dtype)
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(
        actual, expected, rtol=FLOAT64_RTOL, atol=FLOAT64_RTOL * scale, msg=msg
    )


def assert_float32_of_float64_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Float64 computations, at least one side then rounded to float32 (`encode()` returns
    float32): each rounding moves a value by at most half an ulp, EPS32 / 2 relative, so the
    two sides agree within EPS32 relative plus the float64 reordering term."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=EPS32, atol=FLOAT64_RTOL * scale)


def softmax_loss_atol(terms: int, max_abs_logit: float, sides: int = 2) -> float:
    """Bound on how far float32 evaluations of a softmax loss (cross-entropy, KL) on logits of
    size <= max_abs_logit drift from the exact value, summed over `sides` evaluations.

    Per side: `terms` float32 summed terms (a cosine over `terms` dimensions, or a softmax over
    `terms` candidates) put each logit within terms * eps32 of exact relative to
    max_abs_logit, and a few ulps more come from normalising, scaling and rounding the inputs
    to float32 (`encode()` returns float32; terms=0 when that is the only float32 step):
    (terms + 4) * eps32 * max_abs_logit per logit. Cross-entropy (log-sum-exp minus the target
    logit) and KL (an average of such differences) are 2-Lipschitz in the largest logit error.
    """
    return sides * 2 * (terms + 4) * EPS32 * max_abs_logit
