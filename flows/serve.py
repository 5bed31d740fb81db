"""Serve the deployments from this process: `pallm serve` (or `python -m flows.serve`).

With a Prefect server running (`prefect server start`), this registers `build-dataset/demo`,
`build-dataset/default`, `train-pallm/cpu` and `evaluate-pallm/default` and runs their flow runs here until
stopped. `prefect.yaml` declares the same deployments for a process work pool (and `train-pallm/gpu` for a
Kubernetes one), for teams that run workers.
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve

from flows.build_dataset import build_dataset
from flows.train_pallm import evaluate_pallm, train_pallm

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Register and serve the deployments; blocks until interrupted."""
    serve(
        build_dataset.to_deployment(
            name="demo",
            description="The built-in synthetic corpus (espeak-ng), into datasets/demo.",
            parameters={"name": "demo", "out": "datasets/demo", "cards_index": "data_cards"},
            tags=["pallm", "demo"],
        ),
        build_dataset.to_deployment(
            name="default",
            description="Any corpora: --param corpora='[\"ravdess=/data/RAVDESS\"]' --param out=DIR",
            parameters={"cards_index": "data_cards"},
            tags=["pallm"],
        ),
        train_pallm.to_deployment(
            name="cpu",
            description="The tiny random Qwen2-Audio on the CPU: --param dataset=DIR --param out=DIR",
            parameters={"config": str(ROOT / "configs" / "train-tiny.yaml")},
            tags=["pallm", "train", "cpu"],
        ),
        evaluate_pallm.to_deployment(
            name="default",
            description="Every system of a finished run on another dataset: --param run=DIR --param dataset=DIR "
            "--param out=DIR",
            tags=["pallm", "evaluate"],
        ),
    )


if __name__ == "__main__":
    main()
