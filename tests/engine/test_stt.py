"""Kyutai STT's layout on the engine: a generated STT-shaped checkpoint through the real loader, text-only
frames from batched slots, each slot token for token what Kyutai's own single-stream loop produces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from moshi.models.lm import LMGen

from serve_app.asr.config import GREEDY
from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.history import ResumeWindow
from serve_app.engine.loader import CheckpointError, LoadedModel, load_model
from serve_app.engine.spec import ModelSpec
from serve_app.engine.startup import start_runner
from serve_app.engine.tiny import TINY_STT_CONFIG, build_tiny_checkpoint
from tests.engine.support import noise

STT_SEED = 77
PREFIX_FRAMES = round(TINY_STT_CONFIG["audio_silence_prefix_seconds"] / 0.08)


@pytest.fixture(scope="module")
def stt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("stt") / "ckpt", STT_SEED, kind="stt")


@pytest.fixture(scope="module")
def stt_model(stt_dir: Path) -> LoadedModel:
    return load_model(ModelSpec(local_dir=stt_dir, device="cpu"))


def kyutai_loop(model: LoadedModel, audio: np.ndarray) -> list[int]:
    """Text tokens of Kyutai's reference loop (delayed-streams-modeling's stt_from_file_pytorch.py): the
    silence prefix, then the audio frame by frame through mimi.encode and LMGen.step at temperature 0."""
    lm_gen = LMGen(model.lm, temp=0, temp_text=0)
    silence = torch.zeros(1, 1, FRAME_SAMPLES)
    chunks = [silence] * PREFIX_FRAMES + list(torch.from_numpy(audio).view(1, 1, -1).split(FRAME_SAMPLES, -1))
    tokens: list[int] = []
    with torch.no_grad(), model.mimi.streaming(1), lm_gen.streaming(1):
        for chunk in chunks:
            out = lm_gen.step(model.mimi.encode(chunk))
            if out is not None:
                tokens.append(int(out[0, 0, 0]))
    return tokens[PREFIX_FRAMES:]


def test_the_generated_checkpoint_has_kyutai_stt_s_shape(stt_model: LoadedModel) -> None:
    assert stt_model.model_type == "stt" and stt_model.text_only
    assert stt_model.lm.dep_q == 0 and stt_model.lm.depformer is None
    assert stt_model.stt_config == TINY_STT_CONFIG
    assert stt_model.mimi.num_codebooks == stt_model.lm.n_q  # every codebook is heard audio


def test_batched_slots_match_kyutai_s_loop_token_for_token(stt_model: LoadedModel) -> None:
    first, second = noise(12, seed=1), noise(9, seed=2)
    expected = {"first": kyutai_loop(stt_model, first), "second": kyutai_loop(stt_model, second)}
    got: dict[str, list[int]] = {"first": [], "second": []}
    texts: list[str | None] = []
    with BatchedEngine(stt_model, slots=3, sampling=GREEDY) as engine:
        engine.warmup()
        slots = {"first": engine.open_slot()}
        engine.push(slots["first"], first)
        for tick in range(30):
            if tick == 4:  # a second session joins mid-stream, in another row of the batch
                slots["second"] = engine.open_slot()
                engine.push(slots["second"], second)
            frames = engine.tick()
            for name, slot in slots.items():
                if slot in frames:
                    got[name].append(int(engine.last_tokens[slot][0]))
                    assert frames[slot].pcm.size == 0  # text only: nothing decoded, nothing sent
                    if name == "first":
                        texts.append(frames[slot].text)
    assert got == expected
    assert len(got["first"]) == 12 and len(got["second"]) == 9  # one frame out per frame in; prefix hidden
    assert any(texts), "the random STT should still produce some text"
    assert engine.text_delay_s == TINY_STT_CONFIG["audio_delay_seconds"]


def test_a_model_deployment_refuses_an_stt_checkpoint_and_the_asr_a_moshi_one(stt_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="needs a Moshi checkpoint that speaks"):
        start_runner(ModelSpec(local_dir=stt_dir, device="cpu"), slots=1, max_slots=1, sampling=GREEDY)
    with pytest.raises(CheckpointError, match="needs a text-only STT checkpoint"):
        start_runner(
            ModelSpec(tiny_seed=1, device="cpu"), slots=1, max_slots=1, sampling=GREEDY, text_only=True
        )


def test_a_text_only_models_slots_cannot_be_rebuilt(stt_model: LoadedModel) -> None:
    """Sessions of a streaming ASR are not moved between replicas (their turns fail over instead)."""
    silence = np.zeros(0, np.float32)
    window = ResumeWindow(1, np.zeros((1, 9), np.int32), silence, silence, 0.0)
    with BatchedEngine(stt_model, slots=1, sampling=GREEDY) as engine:
        assert engine.history_spec is None
        with pytest.raises(ValueError, match="cannot be rebuilt"):
            engine.open_slot(resume=window)
