#!/usr/bin/env python3
"""Checks the chart's alert rules with promtool.

Runs `promtool check rules` on helm/weiling-relay/files/alerts.yaml, then `promtool test rules` on
helm/tests/alerts.test.yaml after filling in each expected alert's fixed annotations (description
and runbook) from the rule file, so the long runbook texts live in one place. Fails unless every
alert has a test where it fires and the tests hold at least one evaluation where nothing may fire.

Usage: check_alerts.py [--promtool PATH]
"""
import argparse
import copy
import pathlib
import subprocess
import sys
import tempfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
RULES = HERE.parent / "weiling-relay" / "files" / "alerts.yaml"
TESTS = HERE / "alerts.test.yaml"
TEMPLATED = {"summary"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--promtool", default="promtool")
    args = parser.parse_args()

    rules = yaml.safe_load(RULES.read_text())
    alerts = {
        rule["alert"]: rule
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tests = yaml.safe_load(TESTS.read_text())

    fired, quiet = set(), 0
    full = copy.deepcopy(tests)
    full["rule_files"] = [str(RULES)]
    for test in full["tests"]:
        for case in test.get("alert_rule_test", []):
            name = case["alertname"]
            if name not in alerts:
                print(f"check_alerts: {TESTS.name} tests an unknown alert {name}", file=sys.stderr)
                return 1
            if not case.get("exp_alerts"):
                quiet += 1
                continue
            fired.add(name)
            fixed = {k: v for k, v in alerts[name].get("annotations", {}).items() if k not in TEMPLATED}
            for expected in case["exp_alerts"]:
                expected.setdefault("exp_annotations", {}).update(fixed)

    problems = [f"alert {name} never fires in {TESTS.name}" for name in sorted(set(alerts) - fired)]
    if quiet == 0:
        problems.append(f"{TESTS.name} has no evaluation where nothing may fire")
    for name, rule in sorted(alerts.items()):
        for key in ("summary", "description", "runbook"):
            if not rule.get("annotations", {}).get(key):
                problems.append(f"alert {name} has no {key} annotation")
        if rule.get("labels", {}).get("severity") not in {"critical", "warning", "info"}:
            problems.append(f"alert {name} has no severity label")
    if problems:
        for problem in problems:
            print(f"check_alerts: {problem}", file=sys.stderr)
        return 1

    subprocess.run([args.promtool, "check", "rules", str(RULES)], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "alerts.test.yaml"
        path.write_text(yaml.safe_dump(full, sort_keys=False, allow_unicode=True))
        subprocess.run([args.promtool, "test", "rules", str(path)], check=True)
    print(f"check_alerts: {len(alerts)} alerts, each fires in a test; {quiet} evaluations where none may")
    return 0


if __name__ == "__main__":
    sys.exit(main())
