"""Tiny randomly initialised models in the real on-disk layouts, so the whisperx and pyannote code paths run offline.

No real weights exist here, so the outputs mean nothing acoustically; the files, formats and loaders are the real ones.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

if TYPE_CHECKING:
    from pyannote.audio import Model

# A character vocabulary like facebook/wav2vec2-base-960h's, lowercased: CTC blank first, "|" between words.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|"]
CHARACTERS = [*string.ascii_lowercase, "'"]

# pyannote picks its speaker-embedding loader by substrings of the checkpoint path ("speechbrain", "nvidia",
# "wespeaker" would send it to another toolkit), so the folders built here must avoid those words.
_FOREIGN_TOOLKITS = ("speechbrain", "nvidia", "wespeaker")

EMBEDDING_DIMENSION = 32
PLDA_DIMENSION = 16


def build_tiny_aligner(folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny random wav2vec2 CTC model with its processor into `folder`, loadable by whisperx.load_align_model."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_file),
        unk_token="<unk>",
        pad_token="<pad>",
        word_delimiter_token="|",
        bos_token="<s>",
        eos_token="</s>",
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)

    # Total conv stride 320 (20 ms frames) as in the real base model, at a fraction of the width and depth.
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16),
        conv_stride=(5, 4, 4, 4),
        conv_kernel=(10, 8, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        pad_token_id=vocab["<pad>"],
        ctc_loss_reduction="mean",
    )
    with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the RNG of whatever runs next
        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(config)
    model.eval().save_pretrained(folder)
    return folder


def _save_pyannote_checkpoint(model: Model, path: Path) -> None:
    """Write a checkpoint the way Lightning's trainer.save_checkpoint lays it out, which Model.from_pretrained reads."""
    import lightning

    checkpoint = {
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
    }
    # Adds the "pyannote.audio" block: versions, architecture (module, class) and task specifications.
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def _tiny_segmentation() -> Model:
    """Powerset PyanNet as in segmentation-3.0 (3 local speakers, at most 2 at once), 5 s windows, tiny LSTM."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    segmentation = PyanNet(
        sincnet={"stride": 10},
        lstm={"hidden_size": 16, "num_layers": 1, "bidirectional": True, "monolithic": True},
        linear={"hidden_size": 16, "num_layers": 1},
    )
    segmentation.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=5.0,
        min_duration=5.0,
        warm_up=(0.0, 0.0),
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    segmentation.setup()  # adds the task-dependent classifier, as on_load_checkpoint will
    with torch.no_grad():
        # Powerset class 0 is "nobody speaks". Lean the random classifier towards single speakers so that any
        # input yields speech (hence turns), while the random weights still move between the three speakers.
        segmentation.classifier.bias.copy_(torch.tensor([-4.0, 2.0, 1.5, 1.5, -4.0, -4.0, -4.0]))
    return segmentation.eval()


def _tiny_embedding() -> Model:
    """X-vector on 20 MFCCs with a 32-d output; pyannote fixes its TDNN widths, so it is the largest part (11 MB)."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import XVectorMFCC

    embedding = XVectorMFCC(mfcc={"n_mfcc": 20, "melkwargs": {"n_mels": 40}}, dimension=EMBEDDING_DIMENSION)
    embedding.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0, min_duration=0.5
    )
    return embedding.eval()


def build_tiny_diarizer(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny random pyannote speaker-diarization pipeline in `folder`; returns the path of its config.yaml.

    Same layout as pyannote/speaker-diarization-community-1 (segmentation/, embedding/, plda/ beside config.yaml,
    referenced as $model/...), so pyannote resolves every part locally.
    """
    if any(word in str(folder).lower() for word in _FOREIGN_TOOLKITS):
        raise ValueError(f"{folder}: pyannote would load the embedding with another toolkit; rename the folder")
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the RNG of whatever runs next
        torch.manual_seed(seed)
        segmentation = _tiny_segmentation()
        embedding = _tiny_embedding()
    _save_pyannote_checkpoint(segmentation, folder / "segmentation" / "pytorch_model.bin")
    _save_pyannote_checkpoint(embedding, folder / "embedding" / "pytorch_model.bin")

    # PLDA for VBx clustering: identity-like transforms of the right shapes (files as in community-1's plda/).
    rng = np.random.default_rng(seed)
    lda, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_DIMENSION, PLDA_DIMENSION)))
    (folder / "plda").mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "plda" / "xvec_transform.npz",
        mean1=np.zeros(EMBEDDING_DIMENSION),
        mean2=np.zeros(PLDA_DIMENSION),
        lda=lda,
    )
    np.savez(
        folder / "plda" / "plda.npz",
        mu=np.zeros(PLDA_DIMENSION),
        tr=np.eye(PLDA_DIMENSION),
        psi=np.linspace(2.0, 0.5, PLDA_DIMENSION),
    )

    config = {
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {
                "clustering": "VBxClustering",
                "segmentation": "$model/segmentation",
                "embedding": "$model/embedding",
                "plda": "$model/plda",
                "embedding_exclude_overlap": True,
                "segmentation_batch_size": 8,
                "embedding_batch_size": 8,
            },
        },
        # community-1's hyper-parameters: they only set how speakers are grouped, never whether speech is found.
        "params": {
            "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
            "segmentation": {"min_duration_off": 0.0},
        },
    }
    config_yaml = folder / "config.yaml"
    config_yaml.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config_yaml
