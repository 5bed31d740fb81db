"""Distributed builds: `pallm build-dataset` on a Dask or Ray cluster of worker processes, one it starts itself
or one started beforehand as separate processes (as on separate machines), writes exactly what the serial build
writes, and each worker loads Whisper once however many chunks it runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from build_helpers import make_tree
from cluster_helpers import RAY_LOOPBACK_ENV, dask_cluster, ray_cluster
from conftest import run_cli

from pallm.dataset import read_manifest

# What may differ between two builds of the same data: when, by which run, where it was written and ran.
RUNTIME_KEYS = "out|cards_index|workers|runner|cluster|asr_gpus|threads"
RUNTIME_LINES = re.compile(rf"Built by the PALLM pipeline .* on .*|\| run id \|.*|.*\"({RUNTIME_KEYS})\": .*")


@pytest.fixture(scope="module")
def corpus(ravdess16k: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small RAVDESS tree with bad files, a config that cuts it into several chunks, and its serial build."""
    pytest.importorskip("prefect_dask", reason="needs the dask extra: pip install -e '.[dask]'")
    pytest.importorskip("prefect_ray", reason="needs the ray extra: pip install -e '.[ray]'")
    work = tmp_path_factory.mktemp("distributed")
    expect = make_tree(ravdess16k, work / "ravdess", real_per_actor=2, actors=(1, 2, 5))
    config = work / "build.yaml"
    config.write_text(json.dumps({"shards": {"chunk_rows": 4}}))  # several chunks, so several workers take part
    return {"work": work, "expect": expect, "config": config}


def build(corpus: dict, env: dict[str, str], name: str, *options: str) -> Path:
    """`pallm build-dataset` of the corpus into a fresh folder, with two workers and the given options."""
    out = corpus["work"] / name
    r = run_cli(["build-dataset", "--corpus", f"ravdess={corpus['work'] / 'ravdess'}", "--out", str(out),
                 "--name", "dist", "--workers", "2", "--asr", "tiny.en", "--teacher", "rules",
                 "--config", str(corpus["config"]), "--cards-index", str(corpus["work"] / "cards"), *options],
                env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def whisper_loads(out: Path) -> list[int]:
    """How often each worker loaded Whisper for the build in `out`, from its manifest."""
    return [x["loads"] for x in read_manifest(out)["model_loads"] if x["model"].startswith("whisper")]


@pytest.fixture(scope="module")
def serial(corpus: dict, prefect_server: dict[str, str]) -> dict:
    out = build(corpus, prefect_server, "serial")
    got = outcome(out)
    assert got["rows"] == len(corpus["expect"]["good"]) and len(got["shards"]) > 2
    assert got["quarantined"]  # bad files travel through the distributed path too
    assert whisper_loads(out) == [1]  # the threads share one model
    assert read_manifest(out)["chunk_start"]["chunks"] > 2
    return got


def check_like_serial(out: Path, serial: dict, runner: str) -> None:
    got = outcome(out)
    for key in serial:
        assert got[key] == serial[key], f"{runner} build differs from the serial one in {key}"
    loads = whisper_loads(out)
    assert loads and set(loads) == {1} and len(loads) <= 2, f"{runner}: Whisper loads per worker {loads}"


def outcome(out: Path) -> dict:
    """What a build produced: ids, shards by content hash, quarantine, and the card without its run details."""
    manifest = read_manifest(out)
    card = (out / "README.md").read_text(encoding="utf-8")
    return {
        "version": manifest["version"],
        "rows": manifest["rows"],
        "ids": sorted(
            i for s in manifest["shards"] for i in pq.read_table(out / s["path"], columns=["id"])["id"].to_pylist()
        ),
        "shards": sorted((s["path"], s["rows"], s["sha256"]) for s in manifest["shards"]),
        "quarantined": pq.read_table(out / "quarantine.parquet").to_pylist(),
        "card": RUNTIME_LINES.sub("", card),
    }


@pytest.mark.slow
def test_builds_on_local_clusters_equal_the_serial_build(
    corpus: dict, serial: dict, prefect_server: dict[str, str]
) -> None:
    for runner in ("dask", "ray"):
        check_like_serial(build(corpus, prefect_server, f"local-{runner}", "--runner", runner), serial, runner)


@pytest.mark.slow
def test_builds_on_clusters_of_separate_processes_equal_the_serial_build(
    corpus: dict, serial: dict, prefect_server: dict[str, str]
) -> None:
    """The two-machine rehearsal: a Dask scheduler and two workers, a Ray head and a worker node, each its own
    process, started before the build as on separate machines."""
    work = corpus["work"]
    with dask_cluster(work / "dask-processes", prefect_server, workers=2) as address:
        out = build(corpus, prefect_server, "dask-cluster", "--runner", "dask", "--cluster", address)
    check_like_serial(out, serial, "dask")
    env = {**prefect_server, **RAY_LOOPBACK_ENV}
    with ray_cluster(work / "ray-processes", env, nodes=2) as address:
        out = build(corpus, env, "ray-cluster", "--runner", "ray", "--cluster", address)
    check_like_serial(out, serial, "ray")
