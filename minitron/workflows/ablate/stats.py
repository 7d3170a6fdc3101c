"""The statistics of the results page: mean and standard error over seeds, and Welch's t-test for every
comparison the page makes. A difference is called only when the test supports it (two-sided p < ALPHA);
otherwise the verdict is a tie, "no difference at this budget".

A deterministic cell (weight magnitude, the teacher) has one value and no spread: a comparison with it is the
one-sample t-test of the other side's seeds against that value, which is Welch's test with a zero-variance group
(its degrees of freedom are the other side's n - 1)."""

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
    exact: str = ""  # the side(s), "a", "b" or "ab", that are one deterministic value

    @classmethod
    def of(cls, a: list[float], b: list[float], *, exact: str = "") -> Comparison:
        """Welch's test of `a` against `b`; `exact` names a side that is one deterministic value (one-sample test)."""
        if exact:
            return cls._with_exact(a, b, exact)
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

    @classmethod
    def _with_exact(cls, a: list[float], b: list[float], exact: str) -> Comparison:
        if exact not in ("a", "b", "ab"):
            raise ValueError(f"exact={exact!r}: expected 'a', 'b' or 'ab'")
        sa, sb = Summary.of(a), Summary.of(b)
        sample, value = (b, sa.mean) if exact == "a" else (a, sb.mean)
        if exact != "ab" and len(sample) < 2:
            return cls(sa, sb, math.nan, math.nan, exact)
        if exact == "ab" or statistics.pstdev(sample) == 0:  # no spread anywhere: the means decide, exactly
            same = sa.mean == sb.mean
            t, p = (0.0, 1.0) if same else (math.copysign(math.inf, sa.mean - sb.mean), 0.0)
            return cls(sa, sb, t, p, exact)
        result = scipy_stats.ttest_1samp(sample, value)
        t = float(result.statistic) if exact == "b" else -float(result.statistic)  # the t of a - b
        return cls(sa, sb, t, float(result.pvalue), exact)

    @property
    def testable(self) -> bool:
        seeded = [s.n for s, side in ((self.a, "a"), (self.b, "b")) if side not in self.exact]
        return (not seeded or min(seeded) >= MIN_SEEDS) and not math.isnan(self.p)

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
        if self.exact == "ab":
            return "both deterministic: the values decide"
        if self.exact:
            n = (self.b if self.exact == "a" else self.a).n
            if not self.testable:
                return f"no test: {n} seed(s), at least {MIN_SEEDS} needed"
            if math.isinf(self.t) or self.t == 0 and self.p == 1:
                return f"no spread over {n} seeds against one deterministic value: the values decide"
            return f"one-sample t = {self.t:.2f}, {_p_text(self.p)}, {n} seeds vs one deterministic value"
        if not self.testable:
            return f"no test: {min(self.a.n, self.b.n)} seed(s), at least {MIN_SEEDS} needed"
        if math.isinf(self.t):
            return f"no spread within either side, {self.a.n} vs {self.b.n} seeds: the values decide"
        return f"Welch t = {self.t:.2f}, {_p_text(self.p)}, {self.a.n} vs {self.b.n} seeds"


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
