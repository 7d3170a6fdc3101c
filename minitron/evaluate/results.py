"""lm-eval's nested results -> the suite's flat metrics ({"tiny_bpb": ..., "tiny_mc_acc": ...}) and a markdown table."""

from __future__ import annotations

import math
from typing import Any

from minitron.evaluate.suite import Suite, SuiteTask


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _row_of(results: dict, task: str) -> dict:
    """The results row of a task or group (lm-eval keeps group rows in "results", older versions in "groups")."""
    return results.get("results", {}).get(task) or results.get("groups", {}).get(task) or {}


def _metric_keys(row: dict) -> list[str]:
    """The "metric,filter" keys of a row that hold a value (not its stderr, alias or sample count)."""
    return sorted(k for k in row if "," in k and "_stderr," not in k and _numeric(row[k]) is not None)


def _resolve(row: dict, spec: str) -> str | None:
    """The row key a suite's metric spec names: "metric,filter" exactly, or "metric" under the "none" filter
    (or its only filter)."""
    if "," in spec:
        return spec if spec in row else None
    if f"{spec},none" in row:
        return f"{spec},none"
    found = [k for k in _metric_keys(row) if k.split(",", 1)[0] == spec]
    return found[0] if found else None


def _default_name(task: str, key: str) -> str:
    metric, filt = key.split(",", 1)
    return f"{task}_{metric}" if filt == "none" else f"{task}_{metric}_{filt}"


def _rows_of_task(results: dict, entry: SuiteTask) -> list[dict]:
    row = _row_of(results, entry.task)
    if entry.metrics:
        pairs = [(key, name) for spec, name in entry.metrics.items() if (key := _resolve(row, spec)) is not None]
    else:
        pairs = [(key, _default_name(entry.task, key)) for key in _metric_keys(row)]
    samples = results.get("n-samples", {}).get(entry.task, {}).get("effective")
    out = []
    for key, name in pairs:
        value = _numeric(row[key])
        if value is None:
            continue
        metric, filt = key.split(",", 1)
        stderr = _numeric(row.get(f"{metric}_stderr,{filt}"))
        out.append({
            "name": name,
            "value": value,
            "stderr": stderr if stderr is not None and math.isfinite(stderr) else None,
            "task": entry.task,
            "metric": key,
            "num_fewshot": entry.num_fewshot,
            "samples": samples,
        })
    return out


def flatten(results: dict, suite: Suite) -> tuple[dict[str, float], list[dict]]:
    """The flat metrics of a suite run and one table row per metric (value, stderr, task, shots, samples)."""
    rows = [r for entry in suite.tasks for r in _rows_of_task(results, entry)]
    return {r["name"]: r["value"] for r in rows}, rows


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| metric | value | ± | task | lm-eval metric | shots | docs |", "|---|---:|---:|---|---|---:|---:|"]
    for r in rows:
        docs = "" if r["samples"] is None else str(r["samples"])
        lines.append(
            f"| {r['name']} | {_fmt(r['value'])} | {_fmt(r['stderr'])} | {r['task']} | {r['metric']} "
            f"| {r['num_fewshot']} | {docs} |"
        )
    return "\n".join(lines) + "\n"
