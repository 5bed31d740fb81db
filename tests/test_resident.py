"""Worker-resident stages: copies of a stage sent to one process share one loaded model, keyed by its settings,
and the holder frees what it keeps."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
from test_speech import clips, wav_row

from pallm import resident
from pallm.config import SpeechConfig
from pallm.resident import Resident, Residents, for_process, release_process, summarize_loads
from pallm.speech.stage import speech_stage


class Model:
    """A stand-in for a loaded model: it only knows whether it was freed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Other(Model):
    """A second kind of model, which is kept beside the first."""


@pytest.fixture
def process_residents() -> Iterator[Residents]:
    release_process()
    yield for_process()
    release_process()


def test_one_object_per_key_and_a_new_key_of_the_same_kind_frees_the_old() -> None:
    held = Residents()
    first = held.get("whisper-a", Model("a"))
    assert held.get("whisper-a", Model("a again")) is first  # the second copy works through the first
    other = held.get("teacher-x", Other("x"))
    assert len(held) == 2 and not first.closed
    second = held.get("whisper-b", Model("b"))  # other settings: built anew, and the old model is freed
    assert first.closed and not second.closed and not other.closed and len(held) == 2
    held.release()
    assert second.closed and other.closed and len(held) == 0


def test_an_unpickled_copy_binds_to_the_process_object(process_residents: Residents) -> None:
    local = Resident("k", Model("local"))
    assert local.target.name == "local" and len(process_residents) == 0  # where it was made, it is its object
    a, b = pickle.loads(pickle.dumps(local)), pickle.loads(pickle.dumps(local))
    assert a.target is b.target and a.name == "local" and len(process_residents) == 1
    release_process()
    assert a.target.closed
    assert not pickle.loads(pickle.dumps(local)).target.closed  # a fresh holder after release


def test_copies_of_the_speech_stage_load_whisper_once_per_process(
    ravdess16k: Path, process_residents: Residents
) -> None:
    pytest.importorskip("whisperx", reason="the speech extra is not installed: pip install -e '.[asr]'")
    stage = speech_stage("tiny.en", SpeechConfig(threads=os.cpu_count() or 1))
    rows = [wav_row(sf.read(p, dtype="float32")[0]) for p in clips(ravdess16k, (1,), 2)]
    copies = [pickle.loads(pickle.dumps(stage)) for _ in range(3)]  # three chunk tasks arriving at one worker
    outputs = [c.process(rows) for c in copies]
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0][0]["transcript"]
    loads = [x.as_dict() for c in copies for x in c.process.loads.take()]
    assert [(x["model"], x["loads"]) for x in summarize_loads(loads)] == [("whisper tiny.en", 1)]

    changed = speech_stage("tiny.en", SpeechConfig(threads=1, beam_size=2))  # other settings, another key
    assert changed.process.key != stage.process.key
    kept = copies[0].process.target
    fresh = pickle.loads(pickle.dumps(changed)).process
    assert fresh.target is not kept and kept._transcriber is None  # the old model was freed
    assert len(process_residents) == 1


def test_the_dask_plugin_holds_a_worker_residents_and_frees_them() -> None:
    distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install -e '.[dask]'")
    from flows.residents import ResidentsPlugin

    blob = pickle.dumps(Resident("k", Model("m")))

    def bind(blob: bytes) -> tuple[bool, int]:
        copy = pickle.loads(blob)
        copy.target  # noqa: B018 - binding is the point
        held = distributed.get_worker().plugins[resident.PLUGIN_NAME].residents
        return for_process() is held, len(held)

    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        client.register_plugin(ResidentsPlugin(), name=resident.PLUGIN_NAME)
        assert client.submit(bind, blob, pure=False).result() == (True, 1)
        assert client.submit(bind, blob, pure=False).result() == (True, 1)  # the second task finds the first's
        (worker,) = lc.workers.values()  # in this process: its plugin's holder can be looked at directly
        model = worker.plugins[resident.PLUGIN_NAME].residents.get("k", Model("not kept"))
        assert model.name == "m" and not model.closed
        client.unregister_worker_plugin(resident.PLUGIN_NAME)
        assert model.closed  # teardown freed it
        gone = client.run(lambda dask_worker: resident.PLUGIN_NAME in dask_worker.plugins)
        assert not any(gone.values())
