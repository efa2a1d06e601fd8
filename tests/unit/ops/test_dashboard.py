"""The Grafana dashboard queries only metrics that the catalogue declares."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas import metrics as m

DASHBOARD = Path(__file__).resolve().parents[3] / "helm" / "clinstream" / "dashboards" / "clinstream.json"

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = GROUPING.sub("", text)
    out: set[str] = set()
    for match in IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in KEYWORDS:
            continue
        out.add(name)
    return out


def family_of(sample: str) -> str:
    """The exposed family name (``_total`` for counters) a series name belongs to."""
    for metric in m.CATALOGUE:
        for family in metric.describe():
            exposed = family.name + ("_total" if family.type == "counter" else "")
            series = {exposed, *(family.name + s for s in ("_bucket", "_sum", "_count", "_created"))}
            if sample in series:
                return exposed
    return sample


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    exprs = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append((f"${var['name']}", query["query"]))
    return exprs


class TestExtraction:
    def test_histogram_quantile(self) -> None:
        expr = 'histogram_quantile(0.95, sum by (le, stage) (rate(a_b_bucket{ns=~"$x",le="1.0"}[$__rate_interval])))'
        assert metric_names(expr) == {"a_b_bucket"}

    def test_binary_and_vector(self) -> None:
        assert metric_names("count(x_state{a='b'} == 2) or vector(0)") == {"x_state"}
        assert metric_names("sum(rate(a_sum[5m])) / sum(rate(a_count[5m])) offset 1h") == {"a_sum", "a_count"}

    def test_unknown_metric_is_caught(self) -> None:
        names = metric_names('sum(rate(clinstream_bogus_total{stage="x"}[5m]))')
        assert names == {"clinstream_bogus_total"}
        assert not names <= m.sample_names()

    def test_label_values(self) -> None:
        assert metric_names("label_values(foo_count, namespace)") == {"foo_count", "namespace"}


def test_dashboard_is_valid_grafana_json(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] == "clinstream"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24


def test_every_expr_uses_only_catalogue_metrics(dashboard: dict[str, Any]) -> None:
    known = m.sample_names()
    for title, expr in all_exprs(dashboard):
        names = metric_names(expr)
        if title == "$namespace":
            names.discard("namespace")  # label_values(metric, label): the second argument is a label
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"panel {title!r} queries unknown metric(s) {sorted(unknown)}"


def test_histogram_series_only_on_histograms(dashboard: dict[str, Any]) -> None:
    histograms = {
        f.name for metric in m.CATALOGUE for f in metric.describe() if f.type == "histogram"
    }
    for title, expr in all_exprs(dashboard):
        for name in metric_names(expr):
            if name.endswith("_bucket"):
                assert name.removesuffix("_bucket") in histograms, title
                assert "histogram_quantile" in expr or 'le="' in expr, title


def test_dashboard_covers_the_whole_catalogue(dashboard: dict[str, Any]) -> None:
    used = {family_of(n) for _, e in all_exprs(dashboard) for n in metric_names(e)}
    assert m.family_names() <= used, sorted(m.family_names() - used)


def test_latency_quantiles_present(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(e for _, e in all_exprs(dashboard))
    for q in ("0.5", "0.95", "0.99"):
        for grouping, metric in (
            ("destination", "clinstream_end_to_end_latency_seconds"),
            ("stage", "clinstream_stage_processing_seconds"),
        ):
            assert f"histogram_quantile({q}, sum by (le, {grouping}) (rate({metric}_bucket" in exprs
