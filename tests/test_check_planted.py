"""benchmarks/planted_bugs.py: its cases are what the README claims, and a few seeds of it run.

The full table (100 seeds per case) is in the README; here a handful of cases and seeds check
that fnn catches every planted bug and passes every correct rule, kinked ones included.
"""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import planted_bugs  # noqa: E402

SEEDS = 3


def test_the_benchmark_has_at_least_30_bugs_and_30_correct_rules():
    assert len(planted_bugs.BUGS) >= 30 and len(planted_bugs.CORRECT) >= 30
    assert len({(c.name, c.what) for c in planted_bugs.BUGS}) == len(planted_bugs.BUGS)
    kinked = {c.name for c in planted_bugs.CORRECT if c.what == "kink"}
    assert {"abs", "relu", "maximum", "clip", "where", "sort"} <= kinked


def pick(cases, names):
    return [c for c in cases if (c.name, c.what) in names]


BUG_NAMES = {
    ("matmul", "one element of dW off by 1e-4"),
    ("dense", "db right only for batch 1"),
    ("sin", "cotangent in float32"),
    ("dense", "db of the wrong shape"),
    ("relu", "branches swapped"),
    ("x*sin(x)", "forgotten product-rule term"),
}
CORRECT_NAMES = {
    ("relu mlp", "kink"),
    ("sort", "kink"),
    ("clip", "kink"),
    ("max pool", "kink"),
    ("softmax", ""),
    ("dense", ""),
}


@pytest.mark.parametrize("case", pick(planted_bugs.BUGS, BUG_NAMES), ids=lambda c: c.what)
def test_fnn_catches_planted_bugs_on_every_seed(case):
    for seed in range(SEEDS):
        args = planted_bugs.primals(case, seed)
        assert planted_bugs.fnn_flags(case, args, seed), (case.name, case.what, seed)


@pytest.mark.parametrize("case", pick(planted_bugs.CORRECT, CORRECT_NAMES), ids=lambda c: c.name)
def test_fnn_passes_correct_rules_on_every_seed(case):
    for seed in range(SEEDS):
        args = planted_bugs.primals(case, seed)
        assert not planted_bugs.fnn_flags(case, args, seed), (case.name, seed)


def test_summary_and_table_count_what_run_returns():
    cases = pick(planted_bugs.BUGS, {("sin", "sign flip")}) + pick(
        planted_bugs.CORRECT, {("sin", "")}
    )
    rows = planted_bugs.run(cases, seeds=2, progress=False)
    totals = planted_bugs.summary(rows)
    assert totals["fnn"]["catch_rate"] == 1.0 and totals["fnn"]["false_failure_rate"] == 0.0
    assert totals["jax"]["catch_rate"] == 1.0  # a sign flip is plain to check_grads too
    text = planted_bugs.markdown(rows, totals)
    assert "| sin | sign flip | 100% | 100% |" in text and "| sin | correct | 0% | 0% |" in text
