"""docs/grafana-dashboard.json queries only metrics that exist and covers every documented family."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def documented_metrics() -> set[str]:
    section = (DOCS / "metrics.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


def test_dashboard_queries_documented_metrics_only_and_all_of_them() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|count|sum)$", "", name)
            for e in exprs for name in re.findall(r"\b([a-z_]+)\{", e)}
    documented = documented_metrics()
    assert documented, "no metrics table in docs/metrics.md"
    assert used <= documented, used - documented
    assert documented <= used, f"documented but not on the dashboard: {documented - used}"
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"] if "datasource" in p)
