"""deploy/prometheus/alerts.yml is valid and covers every built-in check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from conveyor.monitor import CHECKS, monitor_metrics
from conveyor.monitor.resources import RESOURCE_ALERTS
from conveyor.telemetry import STANDARD_METRICS

RULES = Path(__file__).resolve().parents[3] / "deploy" / "prometheus" / "alerts.yml"


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert isinstance(doc, dict) and isinstance(doc["groups"], list)
    found = []
    for group in doc["groups"]:
        assert group["name"] and isinstance(group["rules"], list)
        found += group["rules"]
    return found


def test_every_rule_is_well_formed() -> None:
    names = set()
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"].startswith("Conveyor") and rule["alert"] not in names
        names.add(rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]


def test_each_built_in_check_has_a_rule() -> None:
    covered = {rule["labels"]["check"] for rule in rules()}
    built_in = {c.name for c in CHECKS} | set(RESOURCE_ALERTS) | {"broker"}
    assert built_in <= covered
    assert covered <= built_in


def test_rules_use_only_metrics_conveyor_exports() -> None:
    exported = {m.name for m in (*STANDARD_METRICS, *monitor_metrics())} | {"up"}
    for rule in rules():
        used = set(re.findall(r"\b(conveyor_[a-z_]+|up)\b(?=[{\[)\s])", rule["expr"]))
        assert used <= exported, (rule["alert"], used - exported)
