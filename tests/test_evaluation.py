"""The instruments that tell whether a model listens, on real RAVDESS clips: the supervised baselines, a run's
report with its headline, `pallm evaluate` on a second dataset, and `pallm listen`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, run_cli

from pallm.dataset import read_manifest
from pallm.train import baselines, steps
from pallm.train.config import ModelConfig, TrainConfig
from pallm.train.data import examples
from pallm.train.listen import listen, resolve_model
from pallm.train.metrics import score

pytest.importorskip("trl", reason="training needs the train extra: pip install -e '.[train]'")


def _ids(dataset: Path, split: str) -> set[str]:
    shards = [s for s in read_manifest(dataset)["shards"] if s["split"] == split]
    return {i for s in shards for i in pq.read_table(dataset / s["path"], columns=["id"])["id"].to_pylist()}


def _held_out(dataset: Path) -> list[dict]:
    cfg = TrainConfig(eval={"splits": ["validation", "test"]})
    return [e for e in steps.eval_examples(dataset, cfg) if e["task"] == "understand"]


@pytest.mark.parametrize("name", baselines.BASELINES)
def test_baselines_fit_on_training_rows_only_and_hear_angry_from_calm(
    name: str, angry_calm: Path, tmp_path: Path
) -> None:
    encoder = ModelConfig(family="offline", encoder="tiny.en", encoder_cache=str(tmp_path / "frames"))
    encode = None
    if name == baselines.ENCODER_PROBE:
        from pallm.model import frozen_encoder

        encode = frozen_encoder(encoder)
    fitted = baselines.fit_baseline(name, angry_calm, ["train"], encode)
    assert set(fitted.fitted_ids) == _ids(angry_calm, "train"), "every training row, and only those"
    held_out = _held_out(angry_calm)
    assert held_out and not {e["id"] for e in held_out} & set(fitted.fitted_ids)
    texts = baselines.predict_rows(fitted, angry_calm, held_out, encode)
    from pallm.train.evaluate import answer_rows

    answers = answer_rows(held_out, texts)
    s = score([a["emotion"] for a in answers], [a["pred_emotion"] for a in answers])
    assert s.labels == ("angry", "calm") and s.n == 32
    assert s.ua_ci[0] > 0.5, f"{name}: emotion UA {s.ua:.2f} {s.ua_ci} does not beat chance (0.5)"


def test_the_encoder_probe_needs_a_frozen_encoder() -> None:
    from pallm.model import frozen_encoder

    assert frozen_encoder(ModelConfig(family="qwen2-audio")) is None
    with pytest.raises(ValueError, match="frozen audio encoder"):
        baselines.featuriser(baselines.ENCODER_PROBE, None)


@pytest.fixture(scope="module")
def tiny_run(prefect_server: dict[str, str], trainable: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole `pallm train` run of the tiny configuration on real clips (actors 9 and 13 train, 5 evaluates)."""
    root = tmp_path_factory.mktemp("tiny-run")
    cfg = yaml.safe_load((ROOT / "configs" / "train-tiny.yaml").read_text())
    cfg["sft"].update(max_steps=4, batch_size=2, save_steps=4)
    cfg["rl"].update(max_steps=2, batch_size=2, num_generations=2, max_completion_length=8)
    cfg["eval"].update(splits=["validation"], limit=4, max_new_tokens=8)
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "run"
    proc = run_cli(["train", "--dataset", str(trainable), "--out", str(out), "--config", str(root / "tiny.yaml")],
                   prefect_server)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_the_training_report_leads_with_baselines_swapped_audio_and_intervals(tiny_run: Path) -> None:
    evals = tiny_run / "eval"
    assert {p.stem for p in evals.glob("*.json")} >= {*steps.SYSTEMS, "changes"}
    acoustic = json.loads((evals / "acoustic.json").read_text())
    assert acoustic["fitted_on"] == {"splits": ["train"], "rows": 12}, "actors 9 and 13, six clips each"
    assert acoustic["emotion"]["ravdess/validation"]["n"] == 4, "the models' rows"
    probe = json.loads((evals / "encoder-probe.json").read_text())
    assert "trains with it" in probe["not_applicable"], "the tiny Qwen2-Audio trains its encoder"
    for model in steps.MODELS:
        m = json.loads((evals / f"{model}.json").read_text())
        swapped = m["swapped"]["emotion"]["ravdess/validation"]
        assert swapped["n"] == 4 and len(swapped["ua_ci"]) == 2
        heard = [json.loads(line) for line in (evals / f"{model}.swapped.jsonl").read_text().splitlines()]
        assert all(h["swapped_from"] != h["id"] for h in heard)
    s = json.loads((evals / "after-sft.json").read_text())["sentiment"]["ravdess/validation"]
    assert s["ua_ci"][0] <= s["ua"] <= s["ua_ci"][1]
    changes = json.loads((evals / "changes.json").read_text())
    assert {c["change"] for c in changes} >= {"SFT", "RL", "after-rl − acoustic", "swapping the audio (after-rl)"}
    report = (tiny_run / "report.md").read_text()
    headline = report.split("## Headline")[1].split("## Changes")[0]
    assert "| system | n | sentiment UA [95% CI] | emotion UA [95% CI] | UA with swapped audio" in headline
    for system in ("words-only", "acoustic", *steps.MODELS):
        assert f"| {system} | 4 |" in headline
    assert "Chance: sentiment UA" in headline and "RL changed sentiment UA by" in headline
    assert "Above chance (the whole 95% interval)" in headline


def test_pallm_evaluate_scores_every_system_of_a_run_on_another_dataset(
    tiny_run: Path, angry_calm: Path, prefect_server: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "eval-angry-calm"
    proc = run_cli(["evaluate", "--run", str(tiny_run), "--dataset", str(angry_calm), "--out", str(out),
                    "--limit", "3"], prefect_server)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["systems"] == list(steps.SYSTEMS)
    for system in steps.SYSTEMS:
        theirs, ours = (json.loads((d / f"{system}.json").read_text()) for d in (tiny_run / "eval", out))
        assert set(ours) == set(theirs), system
        for task in ("sentiment", "emotion"):
            if "not_applicable" in ours:
                continue
            assert set(ours[task]) == {"ravdess/test", "ravdess/train", "ravdess/validation"}, "every split"
            for group in ours[task].values():
                assert set(group) == set(theirs[task]["ravdess/validation"]) and group["n"] == 3
    acoustic = json.loads((out / "acoustic.json").read_text())
    assert acoustic["fitted_on"]["rows"] == 12, "fitted on the run's training split, not the new dataset"
    report = (out / "report.md").read_text()
    assert report.startswith("# Evaluation of pallm-tiny on") and "### ravdess/test" in report

    again = run_cli(["evaluate", "--run", str(tiny_run), "--dataset", str(angry_calm), "--out", str(out),
                     "--splits", "test,nope"], prefect_server)  # fmt: skip
    assert again.returncode == 2 and "has no split nope" in again.stderr


def test_pallm_listen_answers_real_clips_in_any_format_and_names_a_file_that_is_not_audio(
    tiny_run: Path, trainable: Path, ravdess16k: Path, tmp_path: Path, prefect_server: dict[str, str]
) -> None:
    clip = next(iter(sorted((ravdess16k / "Actor_05").glob("*.wav"))))
    flac = tmp_path / "clip.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), str(flac)], check=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio\n" * 20)
    wav = tmp_path / clip.name
    shutil.copy(clip, wav)

    model = resolve_model(tiny_run)
    assert model.path == tiny_run / "rl" / "model", "a run folder means its final model"
    assert resolve_model(tiny_run / "sft" / "model").config.family == "qwen2-audio"
    results = list(listen(model, [wav, notes, flac]))
    assert [r["path"] for r in results] == [str(wav), str(notes), str(flac)]
    assert "not a readable audio file" in results[1]["error"]
    answer, lossless = results[0], results[2]
    assert {k: v for k, v in answer.items() if k != "path"} == {k: v for k, v in lossless.items() if k != "path"}

    # The same answers as the evaluation gives the same clip: the trained prompts, the same audio.
    from pallm.model import build
    from pallm.train.evaluate import generate

    rows = [e for e in examples(trainable, splits=["validation"]) if e["id"] == f"ravdess/{clip.stem}"]
    speech = build(model.config, checkpoint=model.path)
    expected = dict(zip([r["task"] for r in rows], generate(speech, rows, model.max_new_tokens, 8), strict=True))
    assert answer["reply"] == expected["reply"].strip()
    assert answer["reasoning"] in expected["understand"]

    proc = run_cli(["listen", "--model", str(tiny_run), str(wav), str(notes)], prefect_server)
    assert proc.returncode == 1, "a clip failed"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {notes}: not a readable audio file")
    for field in ("reasoning:", "cues:", "sentiment:", "emotion:", "reply:"):
        assert f"  {field}" in proc.stdout
    folder = tiny_run / "rl" / "model"
    as_json = run_cli(["listen", "--json", "--max-new-tokens", "8", "--model", str(folder), str(wav)], prefect_server)
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["reply"] == answer["reply"]


def test_listen_reads_clips_as_the_corpora_are_read_and_names_what_it_cannot(ravdess48k: Path, tmp_path: Path) -> None:
    import io

    import numpy as np
    import soundfile as sf

    from pallm.audio.decode import DecodeError
    from pallm.train.listen import read_clip

    stereo = next(p for p in sorted(ravdess48k.rglob("*.wav")) if sf.info(p).channels == 2)
    samples, rate = sf.read(io.BytesIO(read_clip(stereo)))
    assert rate == 16_000 and samples.ndim == 1, "mixed down and resampled to what the models take"
    assert abs(len(samples) / rate - sf.info(stereo).duration) < 0.01
    long = tmp_path / "long.wav"
    sf.write(long, np.full(16_000 * 31, 0.01, np.float32), 16_000)
    (tmp_path / "empty.wav").write_bytes(b"")
    for path, reason in ((long, "the model hears at most 30 s"), (tmp_path / "empty.wav", "empty file"),
                         (tmp_path / "missing.wav", "file not found")):  # fmt: skip
        with pytest.raises(DecodeError, match=reason):
            read_clip(path)
