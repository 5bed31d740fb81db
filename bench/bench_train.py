"""Training throughput and memory: our SFT step, GRPO step and generation against raw PyTorch loops of the same
model on the same batch, each phase in a process of its own (so each peak RSS is that phase's own).

    .venv/bin/python bench/bench_train.py [--config configs/train-offline.yaml] [--dataset DIR] [--steps 4] \\
        [--only sft --only grpo]

Phases (the model and its LoRA adapters as the config builds them, the first examples of the training split):

- `sft-raw`: the batch collated once, then steps of forward, backward and AdamW on the trainable parameters.
- `sft`: `pallm.train.sft.sft_trainer` (TRL's SFTTrainer, our collator) for the same number of steps on the same
  examples, one micro-batch a step like the raw loop; a step is the time between two step ends (batch collation
  included).
- `generate-raw` / `generate`: `model.generate` on the processor's inputs against `evaluate.generate`, greedy,
  the same prompts; new tokens a second.
- `grpo-raw` / `grpo`: sampling `num_generations` completions of each prompt, then forward and backward of
  the policy on them (plus the reference's forward where beta > 0), against `AudioGRPOTrainer`'s step.

Each phase runs with a fixed mmap threshold (`MALLOC`); SFT's two phases also with the allocator as glibc sets
it and with gradient checkpointing the other way, so the table says where the memory goes. Prints one
table: seconds a step (or tokens a second), our ratio to the raw loop, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "65536"}


def _setup(args: argparse.Namespace) -> tuple[Any, Any, list[dict[str, Any]]]:
    import torch

    from pallm.train.config import TrainConfig
    from pallm.train.steps import build_for, train_examples

    torch.manual_seed(0)
    cfg = TrainConfig.load(args.config)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"gradient_checkpointing": args.checkpointing})})
    speech = build_for(args.dataset, cfg.model, args.base, cfg.seed)
    rows = [r for r in train_examples(args.dataset, cfg) if r["task"] == "understand"]
    return cfg, speech, rows


def _sft_raw(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pallm.train.collate import AudioCollator

    cfg, speech, rows = _setup(args)
    model = speech.model
    model.train()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    batch = AudioCollator(speech.processor)(rows[: cfg.sft.batch_size])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.sft.learning_rate)
    times = []
    for _ in range(args.steps + 1):
        began = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    tokens = int(batch["attention_mask"].sum())
    return {"s_step": statistics.median(times[1:]), "tokens": tokens}


def _step_timer() -> Any:
    """A TrainerCallback that keeps the time of every step end."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.ends.append(time.perf_counter())

    return StepTimer()


def _step_times(timer: Any) -> float:
    """The median time between two step ends (the first step, with its warm-up, only starts the clock)."""
    return statistics.median(b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False))


def _sft(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from pallm.train.sft import sft_trainer

    cfg, speech, rows = _setup(args)
    batch = rows[: cfg.sft.batch_size]
    # One micro-batch an optimizer step, as the raw loop takes (the config's grad_accum would make a step of ours
    # twice the raw's work).
    settings = cfg.sft.model_copy(update={"max_steps": args.steps + 1, "save_steps": 10_000, "warmup_ratio": 0.0,
                                          "grad_accum": 1})  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        trainer = sft_trainer(speech, batch * (args.steps + 1), settings, Path(out), cfg.seed, args.checkpointing)
        timer = _step_timer()
        trainer.add_callback(timer)
        trainer.train()
    return {"s_step": _step_times(timer)}


def _generate_raw(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pallm.train.collate import prompt_inputs

    cfg, speech, rows = _setup(args)
    model, tok = speech.model, speech.tokenizer
    model.eval()
    batch = rows[: cfg.eval.batch_size]
    began = time.perf_counter()
    enc = prompt_inputs(speech.processor, [r["prompt"] for r in batch], [r["audio"] for r in batch])
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)  # fmt: skip
    took = time.perf_counter() - began
    new = int((ids[:, enc["input_ids"].size(1) :] != tok.pad_token_id).sum())
    return {"s_batch": took, "tokens": new}


def _generate(args: argparse.Namespace) -> dict[str, Any]:
    from pallm.train import evaluate

    cfg, speech, rows = _setup(args)
    batch = rows[: cfg.eval.batch_size]
    began = time.perf_counter()
    evaluate.generate(speech, batch, args.new_tokens, cfg.eval.batch_size)  # greedy: the raw loop's very tokens
    return {"s_batch": time.perf_counter() - began}


def _grpo_raw(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pallm.train.collate import prompt_inputs

    cfg, speech, rows = _setup(args)
    model, tok = speech.model, speech.tokenizer
    group = cfg.rl.num_generations
    prompts = rows[: cfg.rl.batch_size * cfg.rl.grad_accum // group]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.rl.learning_rate)
    times = []
    for _ in range(args.rl_steps + 1):
        began = time.perf_counter()
        enc = prompt_inputs(speech.processor, [r["prompt"] for r in prompts for _ in range(group)],
                            [r["audio"] for r in prompts for _ in range(group)])  # fmt: skip
        model.eval()
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=cfg.rl.max_completion_length, do_sample=True,
                                 temperature=cfg.rl.temperature, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)  # fmt: skip
        model.train()
        mask = torch.cat([enc["attention_mask"], (ids[:, enc["input_ids"].size(1) :] != tok.pad_token_id).long()], 1)
        keep = ids.size(1) - enc["input_ids"].size(1)
        audio = {"input_features": enc["input_features"], "feature_attention_mask": enc["feature_attention_mask"]}
        for start in range(0, ids.size(0), cfg.rl.batch_size):
            part = slice(start, start + cfg.rl.batch_size)
            fwd = {"input_ids": ids[part], "attention_mask": mask[part], **{k: v[part] for k, v in audio.items()}}
            if cfg.rl.beta > 0:
                with torch.no_grad(), _adapters_off(model):
                    model(**fwd, use_cache=False)
            logits = model(**fwd, use_cache=False).logits[:, -keep - 1 : -1].float()
            logps = torch.log_softmax(logits, -1).gather(-1, ids[part, -keep:, None]).squeeze(-1)
            (-(logps * mask[part, -keep:]).sum() / mask[part, -keep:].sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return {"s_step": statistics.median(times[1:])}


def _adapters_off(model: Any) -> Any:
    """The reference model of a LoRA policy: the same weights with the adapters off (TRL does the same)."""
    import contextlib

    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def _grpo(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from pallm.train.grpo import grpo_trainer
    from pallm.train.steps import reward_functions

    cfg, speech, rows = _setup(args)
    prompts = rows[: cfg.rl.batch_size * cfg.rl.grad_accum // cfg.rl.num_generations]
    settings = cfg.rl.model_copy(update={"max_steps": args.rl_steps + 1, "save_steps": 10_000})
    with tempfile.TemporaryDirectory() as out:
        trainer = grpo_trainer(speech, prompts * (args.rl_steps + 1), reward_functions(cfg), settings, Path(out),
                               cfg.seed, args.checkpointing)  # fmt: skip
        timer = _step_timer()
        trainer.add_callback(timer)
        trainer.train()
    return {"s_step": _step_times(timer)}


PHASES = {"sft-raw": _sft_raw, "sft": _sft, "generate-raw": _generate_raw, "generate": _generate,
          "grpo-raw": _grpo_raw, "grpo": _grpo}  # fmt: skip


def run_phase(args: argparse.Namespace, phase: str, malloc: bool, checkpointing: bool) -> dict[str, Any]:
    """One phase in a fresh process: its figures and its peak RSS (GiB)."""
    cmd = [sys.executable, __file__, "--phase", phase, "--config", str(args.config), "--dataset", str(args.dataset),
           "--base", str(args.base), "--steps", str(args.steps), "--rl-steps", str(args.rl_steps),
           "--new-tokens", str(args.new_tokens)]  # fmt: skip
    if checkpointing:
        cmd.append("--checkpointing")
    env = {**os.environ, **(MALLOC if malloc else {})}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"{phase} failed:\n{proc.stderr[-3000:]}")
    return {"phase": phase, "malloc": malloc, "checkpointing": checkpointing,
            **json.loads(proc.stdout.strip().splitlines()[-1])}  # fmt: skip


def _figure(m: dict[str, Any]) -> str:
    if "s_step" in m:
        return f"{m['s_step']:.2f} s a step"
    return f"{m['s_batch']:.1f} s a batch" + (
        f" ({m['tokens'] / m['s_batch']:.0f} new tokens/s)" if "tokens" in m else ""
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs/train-offline.yaml")
    ap.add_argument("--dataset", type=Path, default=ROOT / "bench/.cache/ravdess-train/dataset")
    ap.add_argument("--work", type=Path, default=ROOT / "bench/.cache/bench-train")
    ap.add_argument("--steps", type=int, default=4, help="timed SFT steps per phase (after one untimed)")
    ap.add_argument("--rl-steps", type=int, default=2, help="timed GRPO steps per phase (after one untimed)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--only",
        action="append",
        choices=("sft", "generate", "grpo"),
        help="run only these phases and their raw references (repeatable)",
    )
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:  # a child: one phase, one JSON line
        out = PHASES[args.phase](args)
        out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(json.dumps(out))
        return
    if not (args.dataset / "manifest.json").is_file():
        sys.exit(f"{args.dataset} is not a built dataset; bench/train_ravdess.py builds one there")

    from pallm.model import build
    from pallm.train.config import TrainConfig

    cfg = TrainConfig.load(args.config)
    args.base = args.work / "base"
    if not (args.base / "config.json").is_file():  # the initial model once (the GGUF conversion takes 30 s)
        build(cfg.model.model_copy(update={"lora": None}), seed=cfg.seed).save(args.base)
    ckpt = cfg.model.gradient_checkpointing
    # Every phase as a run goes (the fixed mmap threshold, the config's checkpointing), then SFT's two raw
    # variants that say where the memory goes: glibc's own threshold, and checkpointing the other way.
    plan = [(p, True, ckpt) for p in PHASES] + [(p, malloc, c) for malloc, c in ((False, ckpt), (True, not ckpt),
                                                (False, not ckpt)) for p in ("sft-raw", "sft")]  # fmt: skip
    found = [run_phase(args, *p) for p in plan if p[0].startswith(tuple(args.only or PHASES))]
    print(f"{cfg.name}: SFT batch {cfg.sft.batch_size}, GRPO {cfg.rl.batch_size * cfg.rl.grad_accum} completions "
          f"a step, generation batch {cfg.eval.batch_size} x {args.new_tokens} tokens; "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'all')}")  # fmt: skip
    print(
        "\n| phase | fixed mmap threshold | gradient checkpointing | time | peak RSS |\n| --- | --- | --- | --- | --- |"
    )
    for m in found:
        print(f"| {m['phase']} | {'yes' if m['malloc'] else 'no'} | {'yes' if m['checkpointing'] else 'no'} | "
              f"{_figure(m)} | {m['peak_gib']:.1f} GiB |")  # fmt: skip
    print("\n| ours against raw | fixed mmap threshold | gradient checkpointing | throughput ratio |\n"
          "| --- | --- | --- | --- |")  # fmt: skip
    by = {(m["phase"], m["malloc"], m["checkpointing"]): m for m in found}
    for ours in ("sft", "generate", "grpo"):
        for malloc in (True, False):
            for c in (ckpt, not ckpt):
                a, b = by.get((f"{ours}-raw", malloc, c)), by.get((ours, malloc, c))
                if a and b:
                    unit = "s_step" if "s_step" in a else "s_batch"
                    said = {True: "yes", False: "no"}
                    print(f"| {ours} | {said[malloc]} | {said[c]} | {a[unit] / b[unit]:.2f} |")


if __name__ == "__main__":
    main()
