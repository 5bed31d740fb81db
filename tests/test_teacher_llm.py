"""The teacher against a real local LLM: SmolLM2-135M-Instruct behind llama-cpp-python's server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from teacher_helpers import build, quarantined, rows, small_tree

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    local = pytest.importorskip("pallm.teacher.local")
    try:
        gguf = local.packaged_gguf()
        pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    with local.llama_server(gguf, log=tmp_path_factory.mktemp("llama") / "server.log") as url:
        yield url


def test_real_llm_answers_every_clip_in_the_schema(llama_url: str, ravdess16k: Path, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    ids = small_tree(ravdess16k, root, actors=(1,), per_actor=5)
    final = build(root, tmp_path / "out", {"backend": "openai", "base_url": llama_url, "model": "smollm2"})
    got, bad = rows(tmp_path / "out"), quarantined(tmp_path / "out")
    assert sorted([r["id"] for r in got] + [q["id"] for q in bad]) == ids
    assert all(q["stage"] == "teacher" and q["reason"] for q in bad)
    assert len(got) >= 4  # a weak model, but JSON mode keeps its answers parseable
    for r in got:
        assert r["teacher"]["model"] == "smollm2" and r["teacher"]["prompt_tokens"] > 300
        assert r["rationale"] and r["reply"] and r["words_only_reply"]
        # llama.cpp refuses json_schema (HTTP 500); the client falls back to JSON mode with the schema,
        # which llama.cpp enforces with a grammar: every cited cue is one the clip's audio was measured with
        assert r["cited_cues"] and set(r["cited_cues"]) <= set(r["cue_words"]), (r["cited_cues"], r["cue_words"])
        assert not r["checks"]["unsupported_cues"] or not set(r["checks"]["unsupported_cues"]) & set(r["cited_cues"])
        assert r["teacher_label"] in ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
        assert set(r["checks"]) == {"grounded", "agrees", "well_formed", "unsupported_cues", "problems", "repaired",
                                    "first_grounded", "first_well_formed"}  # fmt: skip
        # A repaired task's answer fails fewer checks than the first did, so it never makes a row worse.
        assert r["checks"]["well_formed"] >= r["checks"]["first_well_formed"]
    assert "Written by `smollm2` (openai backend)" in final["card"]
    assert "| ravdess | understand@2 judge@1 reply@1 words_only@2 | " in final["card"]  # before/after by version
