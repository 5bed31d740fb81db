"""The reliability suite: every fault scenario of the project, each stating what it tried and what came out.

    .venv/bin/pytest -m reliability [--fault-seed N | --fault-seed random]

Tests marked `reliability` inject a fault (SIGKILL at a random point of a build, of the teacher or of training;
429s, 5xx, cut streams and malformed answers from the teacher; corrupt and misnamed inputs; a server killed
after a save; many labelers at once) and write what went in and what came out to the `ledger`. Writing checks
the invariant they share: every item is delivered or quarantined with a reason, none twice. The summary at the
end lists every scenario with its figures, and the seed that placed the random fault points (the plain test run
uses a fixed one; `--fault-seed random` draws a new one and prints it, so a failure can be replayed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

MARK = "reliability"


@dataclass(frozen=True)
class Entry:
    """One fault scenario as run: what was tried, and what came out of how many items."""

    scenario: str
    tried: str
    items: int
    delivered: int
    quarantined: int
    duplicates: int

    @property
    def lost(self) -> int:
        return self.items - self.delivered - self.quarantined


class Ledger:
    """Where fault tests write what they tried and delivered; `record` fails on an item lost or doubled."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    def record(
        self, scenario: str, tried: str, *, items: int, delivered: int, quarantined: int = 0, duplicates: int = 0
    ) -> None:
        entry = Entry(scenario, tried, items, delivered, quarantined, duplicates)
        self.entries.append(entry)
        assert entry.lost == 0, f"{scenario}: {entry.lost} of {items} items lost ({tried})"
        assert duplicates == 0, f"{scenario}: {duplicates} items written twice ({tried})"


class Suite:
    """The plugin instance: the seed, every entry written and every fault test's outcome, and the summary."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.entries: list[Entry] = []
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if MARK in report.keywords and (report.when == "call" or report.outcome != "passed"):
            self.outcomes[report.nodeid] = report.outcome

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.outcomes:
            return
        tr, entries = terminalreporter, self.entries
        tr.section(f"reliability: {len(entries)} fault scenario{'s' * (len(entries) != 1)} (fault seed {self.seed})")
        width = max([len(e.scenario) for e in entries] + [8])
        tr.write_line(f"{'scenario':{width}s} {'items':>6s} {'delivered':>9s} {'quarant.':>8s} {'lost':>5s} "
                      f"{'dup.':>5s}  tried")  # fmt: skip
        for e in entries:
            tr.write_line(f"{e.scenario:{width}s} {e.items:6d} {e.delivered:9d} {e.quarantined:8d} {e.lost:5d} "
                          f"{e.duplicates:5d}  {e.tried}")  # fmt: skip
        failed = sorted(n for n, o in self.outcomes.items() if o != "passed")
        if failed or any(e.lost or e.duplicates for e in entries):
            tr.write_line(f"NOT everything delivered: {len(failed)} fault tests failed: {', '.join(failed)}", red=True)
        else:
            tr.write_line(f"nothing lost: {len(self.outcomes)} fault tests passed; {sum(e.items for e in entries)} "
                          "items in, each delivered or quarantined with a reason, none twice", green=True)  # fmt: skip


_SUITE = pytest.StashKey[Suite]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-seed", default="1234",
        help="seed of the random fault points of the reliability tests: an integer, or 'random' (printed at the end)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARK}: a fault scenario; records what it tried and what came out")
    raw = config.getoption("--fault-seed")
    suite = Suite(random.SystemRandom().randrange(2**31) if raw == "random" else int(raw))
    config.stash[_SUITE] = suite
    config.pluginmanager.register(suite, "reliability-suite")


@pytest.fixture
def fault_rng(request: pytest.FixtureRequest) -> random.Random:
    """Random fault points: the suite's seed and the test's id fix them, so a printed seed replays a failure."""
    return random.Random(f"{request.config.stash[_SUITE].seed}:{request.node.nodeid}")


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Ledger:
    """Where a fault test writes each scenario's figures; a loss or a duplicate fails the test."""
    return Ledger(request.config.stash[_SUITE].entries)
