"""One process of a data-parallel training stage: `accelerate launch -m pallm.train.launch {align|sft|rl} DATASET OUT`.

`pallm.train.steps.launch` starts it when a run has `processes` above 1; every process reads the configuration
the run folder recorded, so they cannot disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pallm.train import steps
from pallm.train.config import TrainConfig


def main(argv: list[str] | None = None) -> None:
    """Run the named stage in this process (one of the launched ranks)."""
    stage, dataset, out = argv or sys.argv[1:]
    cfg = TrainConfig.model_validate(json.loads((Path(out) / steps.CONFIG_FILE).read_text(encoding="utf-8"))["config"])
    {"align": steps.run_align, "sft": steps.run_sft, "rl": steps.run_rl}[stage](Path(dataset), Path(out), cfg)


if __name__ == "__main__":
    main()
