"""Every benchmark in one go, and one table: stage, workload, ours, reference, ratio, peak memory.

    .venv/bin/python bench/run_all.py [--full] [--only build,speech,teacher,review,distributed] [--out FILE]

Each benchmark runs as its own process with `--rows`, so it measures against its reference in the same run
and prints its detailed table to its log (bench/.cache/logs/NAME.log); this script gathers the rows. The quick
settings (the default) take about 15 minutes on two cores; `--full` runs each benchmark at the workload its
docstring describes (about an hour). The training experiment (bench/train_ravdess.py, hours) is not a
ratio benchmark and is not run here. A benchmark that fails is reported with its log, and the others go on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import markdown, read_rows

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "bench" / ".cache" / "logs"

#: name -> (quick arguments, full arguments)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "build": ([], []),
    "speech": (["--clips", "120"], []),
    "teacher": (["--actors", "2", "--per-actor", "4"], []),
    "review": (["--users", "20", "--seconds", "15"], []),
    "distributed": (["--clips", "48"], []),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the documented workloads, not the quick ones")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    ap.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := sorted(set(names) - set(BENCHES)):
        sys.exit(f"unknown benchmarks: {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS.parent / ".gitignore").write_text("*\n")
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pallm-bench-all-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        for name in names:
            extra = BENCHES[name][1 if args.full else 0]
            cmd = [sys.executable, str(ROOT / "bench" / f"bench_{name}.py"), *extra, "--rows", str(rows_file)]
            log = LOGS / f"{name}.log"
            print(f"{name}: {' '.join(['bench/' + Path(cmd[1]).name, *extra])} (log: {log})", flush=True)
            t = time.perf_counter()
            with log.open("wb") as out:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=os.environ).returncode
            print(f"{name}: {'done' if rc == 0 else f'FAILED (exit {rc})'} in {(time.perf_counter() - t) / 60:.1f} min",
                  flush=True)  # fmt: skip
            if rc:
                failed.append(f"{name} (see {log})")
        rows = read_rows(rows_file) if rows_file.is_file() else []
    table = markdown(rows)
    header = (f"{'full' if args.full else 'quick'} workloads, {os.cpu_count()} CPUs; ratio = ours / reference "
              "(rates: higher is better; ms and s: lower is better)")  # fmt: skip
    print(f"\n{header}\n\n{table}")
    if args.out:
        args.out.write_text(f"{header}\n\n{table}\n")
    if failed:
        sys.exit("failed: " + ", ".join(failed))


if __name__ == "__main__":
    main()
