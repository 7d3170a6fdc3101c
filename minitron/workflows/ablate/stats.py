"""The statistics of the results page: mean and standard error over seeds, and Welch's t-test for every
comparison the page makes. A difference is called only when the test supports it (two-sided p < ALPHA);
otherwise the verdict is a tie, "no difference at this budget"."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

ALPHA = 0.05
MIN_SEEDS = 3  # fewer seeds than this give no test, only the means


@dataclass(frozen=True)
class Summary:
    mean: float
    se: float  # standard error of the mean (nan for one seed)
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        mean = statistics.fmean(values)
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        return cls(mean, se, len(values))

    def text(self) -> str:
        return f"{self.mean:.3f}" if self.n == 1 else f"{self.mean:.3f} ± {self.se:.3f}"


@dataclass(frozen=True)
class Comparison:
    """`a` against `b` (lower is better): the difference of the means and Welch's two-sided test."""

    a: Summary
    b: Summary
    t: float
    p: float

    @classmethod
    def of(cls, a: list[float], b: list[float]) -> Comparison:
        sa, sb = Summary.of(a), Summary.of(b)
        if min(len(a), len(b)) < 2:
            return cls(sa, sb, math.nan, math.nan)
        if sorted(a) == sorted(b):  # the same values: no difference (scipy would warn about the zero difference)
            return cls(sa, sb, 0.0, 1.0)
        if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:  # no spread at all: the means decide, exactly
            same = sa.mean == sb.mean
            return cls(sa, sb, 0.0 if same else math.copysign(math.inf, sa.mean - sb.mean), 1.0 if same else 0.0)
        result = scipy_stats.ttest_ind(a, b, equal_var=False)
        return cls(sa, sb, float(result.statistic), float(result.pvalue))

    @property
    def testable(self) -> bool:
        return min(self.a.n, self.b.n) >= MIN_SEEDS and not math.isnan(self.p)

    @property
    def a_lower(self) -> bool:
        """`a` is significantly lower (better) than `b`."""
        return self.testable and self.p < ALPHA and self.a.mean < self.b.mean

    @property
    def b_lower(self) -> bool:
        return self.testable and self.p < ALPHA and self.b.mean < self.a.mean

    @property
    def tie(self) -> bool:
        return not (self.a_lower or self.b_lower)

    def test_text(self) -> str:
        """What the verdict rests on, printed beside it."""
        if not self.testable:
            return f"no test: {min(self.a.n, self.b.n)} seed(s), at least {MIN_SEEDS} needed"
        return f"Welch t = {self.t:.2f}, p = {self.p:.3f}, {self.a.n} vs {self.b.n} seeds"
