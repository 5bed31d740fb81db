"""The reliability suite's ledger: a lost or doubled item fails its test, and the summary says so."""

from __future__ import annotations

import pytest
from conftest import ROOT

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def plugin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))  # the inner pytest imports tests/reliability.py


SCENARIOS = """
import pytest


@pytest.mark.reliability
def test_all_delivered(ledger):
    ledger.record("kept", "nothing happened", items=5, delivered=4, quarantined=1)


@pytest.mark.reliability
def test_one_lost(ledger):
    ledger.record("lost", "one went missing", items=5, delivered=3, quarantined=1)


@pytest.mark.reliability
def test_one_twice(ledger):
    ledger.record("doubled", "one written twice", items=2, delivered=2, duplicates=1)


@pytest.mark.reliability
def test_seeded(fault_rng):
    print("draw", fault_rng.random())
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """The scenarios above in a pytest process of their own, with the suite's plugin."""
    pytester.makeconftest('pytest_plugins = ["reliability"]')
    pytester.makepyfile(test_scenarios=SCENARIOS)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *args)


def test_losses_and_duplicates_fail_and_the_summary_counts_them(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--fault-seed", "7")
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    assert "lost: 1 of 5 items lost (one went missing)" in out
    assert "doubled: 1 items written twice" in out
    assert "reliability: 3 fault scenarios (fault seed 7)" in out
    assert "NOT everything delivered: 2 fault tests failed" in out and "nothing lost" not in out


def test_the_seed_fixes_the_fault_points(pytester: pytest.Pytester) -> None:
    draws = [
        [line for line in run(pytester, "-k", "seeded", "--fault-seed", seed).stdout.lines if "draw" in line]
        for seed in ("7", "7", "8")
    ]
    assert draws[0] == draws[1] != draws[2]
    result = run(pytester, "-k", "seeded or delivered", "--fault-seed", "random")
    result.assert_outcomes(passed=2)
    assert "nothing lost: 2 fault tests passed; 5 items in" in result.stdout.str()
