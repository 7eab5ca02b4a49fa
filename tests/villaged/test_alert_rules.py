"""The Prometheus alert rules shipped with villaged (villaged/alerts/federation.rules.yml): valid for
promtool, firing when tests/villaged/federation.rules.test.yml says, and reading only metrics villaged
exports. promtool must be installed (.ci/run installs it): these tests never skip."""

from __future__ import annotations

import re
import subprocess
from importlib import resources
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.villaged.promtool import promtool
from villaged.metrics import Metrics

RULES = resources.files("villaged") / "alerts" / "federation.rules.yml"
RULE_TESTS = Path(__file__).with_name("federation.rules.test.yml")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def test_rules_ship_with_the_package_and_pass_promtool_check() -> None:
    assert RULES.is_file()
    checked = run("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout


def test_rules_fire_as_their_unit_tests_say() -> None:
    tested = run("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests have teeth: expecting PriorInstability 5 minutes too early is caught."""
    text = RULE_TESTS.read_text().replace("../../villaged/alerts/federation.rules.yml", str(RULES))
    broken = text.replace("      - eval_time: 20m\n        alertname: PriorInstability\n        exp_alerts: []\n",
                          "      - eval_time: 20m\n        alertname: PriorInstability\n        exp_alerts:\n"
                          "          - exp_labels: {severity: warning, job: villaged, instance: a}\n")
    assert broken != text
    (tmp_path / "broken.test.yml").write_text(broken)
    tested = run("test", "rules", str(tmp_path / "broken.test.yml"))
    assert tested.returncode != 0 and "PriorInstability" in tested.stdout + tested.stderr


def test_rules_are_the_specs_and_read_only_exported_metrics() -> None:
    text = RULES.read_text()
    assert re.findall(r"- alert: (\w+)", text) == ["FederationRoundTimeout", "LowParticipationRate", "PriorInstability"]
    exported = {s.name for family in text_string_to_metric_families(Metrics().render().decode()) for s in family.samples}
    exported |= {"federation_round_duration_seconds_bucket", "federation_round_duration_seconds_count"}  # once observed
    read = set(re.findall(r"\b(federat\w+)", "\n".join(re.findall(r"expr: \|?\s*(.*?)\n\s+for:", text, re.S))))
    assert read and read <= exported, read - exported
