"""Benchmark of the teacher stage against a minimal client, on the local llama.cpp server.

    .venv/bin/python bench/bench_teacher.py [--corpus ../shared/corpora/ravdess16k] [--actors 4] [--per-actor 6]
    .venv/bin/python bench/bench_teacher.py --only quality [--local-model FILE.gguf] [--prompts DIR]

1. Real RAVDESS clips are measured and described (no ASR: the reference transcripts), so each row
   has its cue words. SmolLM2-135M-Instruct is served by llama-cpp-python's server on loopback.
2. The same distinct requests (same messages, JSON schema, sampling, order and concurrency) go to
   the server twice: from a minimal `openai` client (a semaphore and `chat.completions.create`), and
   through the teacher stage (cache, retries, validation, checks). Output tokens per second of each;
   the stage's share of the minimal client's rate is the figure that matters (target >= 90%).
3. A whole build with the teacher, then the same build again: the requests the rerun sends (read
   off the server's log) and its time against the first run's (target: zero requests, under 5%).

4. Answer quality, with the default local teacher (sampling, repair and all) on 120 shared RAVDESS clips
   (all 20 shared actors, 6 each, both statements; reference transcripts) and on the built-in synthetic corpus
   (the demo's, transcribed by Whisper as the demo does): the share of rows whose answers are
   well-formed and grounded, first and after the repair, the repairs asked, invalid-JSON quarantines,
   the share of rationales whose prose states a measured cue in words (grounding alone does not ask
   for it), and seconds per clip. `--local-model` and `--prompts` compare another GGUF model or
   template folder on the same rows.

Prints one table per part. Peak memory: this process's and the server's (max RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results import Row, add_rows_option, write_rows  # noqa: E402 - run as a script, bench/ is on the path

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "ravdess16k"


def make_corpus(src: Path, dst: Path, actors: int | None, per_actor: int) -> None:
    """`per_actor` clips of each of the first `actors` actors (None: all), spread over the emotions,
    alternating the two statements."""
    folders = sorted(p for p in src.glob("Actor_*") if p.is_dir())
    for actor in folders[:actors]:
        clips = sorted(actor.glob("*.wav"))
        (dst / actor.name).mkdir(parents=True)
        step = max(1, len(clips) // per_actor)
        for k in range(per_actor):
            shutil.copy(clips[min(len(clips) - 1, k * step + 2 * (k % 2))], dst / actor.name)


def build(corpus: Path | None, out: Path, teacher: dict[str, Any], asr: str = "none") -> float:
    from pallm import pipeline
    from pallm.config import BuildConfig

    spec = {"name": "ravdess", "path": str(corpus)} if corpus else {"name": "synthetic"}
    cfg = BuildConfig.load(None, corpora=[spec], out=out, asr=asr, teacher=teacher, workers=1)
    t0 = time.perf_counter()
    plan = pipeline.plan(cfg)
    pipeline.prepare_output(out)
    pipeline.finalize(plan, pipeline.run_chunks(plan, out), out)
    return time.perf_counter() - t0


def described_rows(out: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from pallm.dataset import read_manifest

    found = []
    for s in read_manifest(out)["shards"]:
        names = [n for n in pq.read_schema(out / s["path"]).names if n != "audio"]
        found += pq.read_table(out / s["path"], columns=names).to_pylist()
    return found


async def minimal_client(base_url: str, payloads: list[dict[str, Any]], concurrency: int) -> tuple[float, int]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def one(p: dict[str, Any]) -> int:
        async with sem:
            r = await client.chat.completions.create(**p)
        return r.usage.completion_tokens

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(p) for p in payloads)))
    seconds = time.perf_counter() - t0
    await client.close()
    return seconds, tokens


def server_requests(log: Path) -> int:
    """Completions the server has answered, from its log (llama.cpp prints timings for each)."""
    return log.read_text(errors="replace").count("prompt eval time") if log.exists() else 0


def server_peak_mib() -> float:
    peak = 0.0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmd = (status.parent / "cmdline").read_bytes()
            if b"llama_cpp.server" in cmd:
                line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM"))
                peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, StopIteration):
            pass
    return peak


def answer_quality(rows: list[dict[str, Any]], teacher: dict[str, Any], cache: Path) -> dict[str, float]:
    """The teacher stage over described rows; the rates of part 4."""
    from pallm.config import TeacherConfig
    from pallm.cues.grounding import check_claims, claims_in_text
    from pallm.teacher.stage import TeacherStep, model_name

    cfg = TeacherConfig(**teacher)
    step = TeacherStep(cfg, model_name(cfg), cache)
    t0 = time.perf_counter()
    out = step(rows)
    seconds = time.perf_counter() - t0
    step.close()
    done = [(r, o) for r, o in zip(rows, out, strict=True) if isinstance(o, dict)]
    n = len(rows)

    def share(test: Any) -> float:
        return sum(1 for r, o in done if test(r, o)) / n

    return {
        "clips": n,
        "well-formed first": share(lambda r, o: o["checks"]["first_well_formed"]),
        "well-formed": share(lambda r, o: o["checks"]["well_formed"]),
        "grounded first": share(lambda r, o: o["checks"]["first_grounded"]),
        "grounded": share(lambda r, o: o["checks"]["grounded"]),
        "prose states a cue": share(
            lambda r, o: bool(check_claims(claims_in_text(o["rationale"]), r["cue_words"]).supported)
        ),
        "repaired": share(lambda r, o: bool(o["checks"]["repaired"])),
        "json quarantines": sum(1 for o in out if not isinstance(o, dict) and "JSON" in str(o)),
        "s/clip": seconds / n,
    }


def _cell(column: str, value: float) -> str:
    if column == "s/clip":
        return f"{value:11.2f}"
    return f"{value:11d}" if isinstance(value, int) else f"{value:11.1%}"


def quality(args: argparse.Namespace, work: Path) -> list[Row]:
    from pallm.teacher.local import llama_server, packaged_gguf

    gguf = args.local_model or packaged_gguf()
    sets = {}
    corpus = work / "quality-corpus"
    make_corpus(args.corpus, corpus, None, args.quality_per_actor)
    build(corpus, work / "quality-ravdess", {"backend": "none"})
    sets["RAVDESS (shared, all actors)"] = described_rows(work / "quality-ravdess")
    build(None, work / "quality-synthetic", {"backend": "none"}, asr=args.synthetic_asr)
    sets["synthetic (the demo's corpus)"] = described_rows(work / "quality-synthetic")
    results = {}
    with llama_server(gguf, log=work / "quality-server.log") as url:
        teacher = {"backend": "local", "base_url": url, "model": gguf.stem,
                   "prompts": str(args.prompts) if args.prompts else None}  # fmt: skip
        for name, rows in sets.items():
            results[name] = answer_quality(rows, teacher, work / f"quality-{len(results)}.sqlite")
    cols = ["clips", "well-formed first", "well-formed", "grounded first", "grounded", "prose states a cue",
            "repaired", "json quarantines", "s/clip"]  # fmt: skip
    print(f"answer quality: {gguf.stem}, prompts {args.prompts or 'packaged'}, {os.cpu_count()} CPU cores")
    print(f"{'':32s} " + " ".join(f"{c:>11.11s}" for c in cols))
    for name, q in results.items():
        print(f"{name:32s} " + " ".join(_cell(c, q[c]) for c in cols))
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [Row("teacher", f"well-formed, {name}", f"{q['clips']} clips", q["well-formed"], 0.8, "share",
                "target", me) for name, q in results.items()]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--actors", type=int, default=4)
    ap.add_argument("--per-actor", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--only", choices=("throughput", "quality"), help="run one part (default: both)")
    ap.add_argument("--local-model", type=Path, help="quality: another GGUF model to compare")
    ap.add_argument("--prompts", type=Path, help="quality: another folder of prompt templates to compare")
    ap.add_argument("--quality-per-actor", type=int, default=6, help="quality: RAVDESS clips per actor")
    ap.add_argument("--synthetic-asr", default="tiny.en", help="quality: ASR for the synthetic corpus, as the demo")
    add_rows_option(ap)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.only == "quality":
        work = Path(tempfile.mkdtemp(prefix="bench-teacher-"))
        write_rows(args.rows, quality(args, work))
        shutil.rmtree(work, ignore_errors=True)
        return

    from pallm.config import TeacherConfig
    from pallm.teacher.cache import open_cache
    from pallm.teacher.client import TeacherClient
    from pallm.teacher.local import llama_server, packaged_gguf
    from pallm.teacher.stage import TeacherStep

    work = Path(tempfile.mkdtemp(prefix="bench-teacher-"))
    corpus = work / "corpus"
    make_corpus(args.corpus, corpus, args.actors, args.per_actor)
    build(corpus, work / "described", {"backend": "none"})
    rows = described_rows(work / "described")
    log = work / "server.log"
    table = []
    with llama_server(packaged_gguf(), log=log) as url:
        # Greedy decoding: both sides get the same answers, so the same number of tokens per request.
        teacher = {"backend": "openai", "base_url": url, "model": "smollm2", "concurrency": args.concurrency,
                   "temperature": 0.0}  # fmt: skip
        cfg = TeacherConfig(**teacher)
        probe_step = TeacherStep(cfg, "smollm2", work / "probe.sqlite")
        requests = {}
        for t in range(4):  # task by task, distinct requests: what the stage sends
            for r in rows:
                q = probe_step.requests(r)[t]
                requests.setdefault(q.key, q)
        client = TeacherClient(cfg, base_url=url, model="smollm2", api_key="none",
                               cache=open_cache(work / "probe.sqlite"))  # fmt: skip
        mode = "json_object"  # llama.cpp refuses json_schema; the stage settles on this after one refusal
        payloads = [client.arguments(q, 0, mode) for q in requests.values()]
        asyncio.run(minimal_client(url, payloads[:1], 1))  # warm-up: model pages, grammar code paths

        base_s, base_tok = asyncio.run(minimal_client(url, payloads, args.concurrency))
        step = TeacherStep(cfg, "smollm2", work / "stage.sqlite")
        t0 = time.perf_counter()
        results = step(rows)
        ours_s = time.perf_counter() - t0
        stats = step.stats
        step.close()
        again_s, again_tok = asyncio.run(minimal_client(url, payloads, args.concurrency))
        ref_rate = (base_tok + again_tok) / (base_s + again_s)
        ours_rate = stats.completion_tokens / ours_s
        table.append(
            ("minimal client (2 runs)", 2 * len(payloads), base_tok + again_tok, base_s + again_s, ref_rate, 1)
        )
        table.append(
            ("teacher stage", stats.requests, stats.completion_tokens, ours_s, ours_rate, ours_rate / ref_rate)
        )
        answered = sum(isinstance(x, dict) for x in results)

        before = server_requests(log)
        first = build(corpus, work / "built", teacher)
        first_requests = server_requests(log) - before
        before = server_requests(log)
        rerun = build(corpus, work / "built", teacher)
        rerun_requests = server_requests(log) - before
        server_peak = server_peak_mib()

    print(f"{len(rows)} RAVDESS clips, {len(payloads)} distinct requests, concurrency {args.concurrency}, "
          f"SmolLM2-135M-Instruct Q4_1 on llama-cpp-python's server, {os.cpu_count()} CPU cores")  # fmt: skip
    print(f"{'':34s} {'requests':>8s} {'out tokens':>10s} {'seconds':>8s} {'tok/s':>7s} {'ratio':>6s}")
    for name, n, tok, s, rate, ratio in table:
        print(f"{name:34s} {n:8d} {tok:10d} {s:8.1f} {rate:7.1f} {ratio:6.2f}")
    print(f"stage answers: {answered}/{len(rows)} rows; retries {stats.retries}, failed requests {stats.failed}")
    print(f"whole build with the teacher: {first:.1f} s, {first_requests} requests; rerun: {rerun:.2f} s "
          f"({100 * rerun / first:.1f}% of the first), {rerun_requests} requests")  # fmt: skip
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: bench process {me:.0f} MiB, llama.cpp server {server_peak:.0f} MiB")
    workload = f"{len(payloads)} requests, {args.concurrency} at once"
    write_rows(args.rows, [
        Row("teacher", "teacher stage", workload, ours_rate, ref_rate, "tokens/s", "minimal openai client", me),
        Row("teacher", "rerun of a finished build", f"{len(rows)} clips", rerun, first, "s", "first build", me),
    ])  # fmt: skip
    if args.only is None:
        write_rows(args.rows, quality(args, work))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
