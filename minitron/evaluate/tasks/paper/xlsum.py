"""ROUGE-L F1 of one generated summary against its reference (lm-eval averages it over the documents)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(references: list[str], predictions: list[str]) -> float:
    return _scorer().score(references[0].strip(), predictions[0].strip())["rougeL"].fmeasure
