"""Serve the deployments from this process: `pallm serve` (or `python -m flows.serve`).

With a Prefect server running (`prefect server start`), this registers `build-dataset/demo` and
`build-dataset/default` and runs their flow runs here until stopped. `prefect.yaml` declares the
same deployments for a process work pool, for teams that run workers.
"""

from __future__ import annotations

from prefect import serve

from flows.build_dataset import build_dataset


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
    )


if __name__ == "__main__":
    main()
