"""Generated tiny Moshi checkpoints: moshi's own classes at toy size, random weights, real on-disk format.

They let the whole stack run and be tested with no GPU and no network; they sound like noise. Two kinds:
`moshi` (the speech-to-speech layout: text + 8 generated and 8 heard codebooks) and `stt` (Kyutai STT's
layout: `model_type: stt`, no generated audio, dep_q 0, only heard codebooks, an `stt_config`); its text
is random, but it runs the loader, LMGen and Mimi paths a real kyutai/stt checkpoint runs. A third,
`personaplex`, is built by serve_app/engine/tiny_persona.py.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sentencepiece
import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMGen, LMModel
from moshi.quantization.core_vq import EuclideanCodebook
from safetensors.torch import save_file
from torch import nn

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when the generated checkpoint changes, so cached copies are rebuilt."""

LM_NAME = "model.safetensors"
MIMI_NAME = "mimi.safetensors"
MIMI_CONFIG_NAME = "mimi_config.json"
TOKENIZER_NAME = "tokenizer.model"
TEXT_PADDING_ID = 3
TEXT_VOCAB = 128

# Real codebook structure (n_q 16, dep_q 8, card 2048, the 7B delays), toy width and depth.
_TINY_LM_OVERRIDES: dict[str, Any] = {
    "dim": 128,
    "text_card": TEXT_VOCAB,
    "num_heads": 4,
    "num_layers": 2,
    "depformer_dim": 64,
    "depformer_dim_feedforward": int(4.125 * 64),
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
}

# Speaking/silence shaping (see _shape_text_head): residual-stream offsets along one random direction u.
# They are starting points: _calibrate_runs moves them so each state is left with _SWITCH_PROB per step.
_PAD_STATE_OFFSET = 1.15
_WORD_STATE_OFFSET = -0.9
_CODE_NOISE_STD = 0.7
_PAD_LOGIT_GAIN = 30.0
_SWITCH_PROB = 0.06
_RESIDUAL_WRITERS = re.compile(r"(out_projs\.\d+|linear_out|linear2)$")
"""Linear layers whose output is added to the main residual stream (attention out, feed-forward out)."""
TinyKind = Literal["moshi", "stt", "personaplex"]

# Kyutai STT's layout (kyutai/stt-1b-en_fr: n_q 32, dep_q 0) at toy size: every codebook is heard audio.
_TINY_STT_OVERRIDES: dict[str, Any] = {"n_q": 8, "dep_q": 0, "delays": [0] * 9}
TINY_STT_CONFIG: dict[str, float] = {"audio_silence_prefix_seconds": 0.16, "audio_delay_seconds": 0.48}
"""Real checkpoints say 0.5 s of text delay (1B) or 2.5 s (2.6B); the prefix is kept short (2 frames)
so tests stay fast yet exercise the prefix path."""
_CALIBRATION_ROWS = 16
_CALIBRATION_STEPS = 40


def tiny_lm_config() -> dict[str, Any]:
    """LMModel kwargs of the tiny LM (moshi's 7B kwargs with small sizes)."""
    return {**copy.deepcopy(loaders._lm_kwargs), **_TINY_LM_OVERRIDES}


def tiny_mimi_config() -> dict[str, Any]:
    """Mimi config of the small codec: same 24 kHz / 12.5 Hz / 2048-bin framing, ~1 M parameters."""
    cfg: dict[str, Any] = copy.deepcopy(loaders._mimi_config)
    cfg["seanet"].update(n_filters=8, dimension=128)
    cfg["quantizer"].update(dimension=16, input_dimension=128, output_dimension=128)
    cfg["transformer"].update(
        d_model=128,
        num_heads=4,
        num_layers=1,
        dim_feedforward=512,
        input_dimension=128,
        output_dimensions=[128],
    )
    return cfg


def build_tiny_checkpoint(directory: Path, seed: int, kind: TinyKind = "moshi") -> Path:
    """Write a complete checkpoint directory (same layout as a real Moshi repo) and return it.

    Deterministic in `seed`, on any machine: built on one torch thread, since the calibration runs the LM
    and a matmul split over more threads rounds differently. Different seeds give different weights and
    tokenizers.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if kind == "personaplex":  # its own module: it builds on the prompt code, which imports this one
            from serve_app.engine.tiny_persona import build_tiny_personaplex

            return build_tiny_personaplex(directory, seed)
        return _build(directory, seed) if kind == "moshi" else _build_stt(directory, seed)
    finally:
        torch.set_num_threads(threads)


def _build(directory: Path, seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER_NAME).write_bytes(train_tokenizer(seed))
    lm_cfg = tiny_lm_config()
    mimi_cfg = tiny_mimi_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = loaders.get_moshi_lm(None, lm_kwargs=lm_cfg, device="cpu", dtype=torch.float32)
        generator = torch.Generator().manual_seed(seed + 1)
        direction = _shape_text_head(lm, generator)
        _calibrate_runs(lm, direction, generator)
        save_file(_contiguous(lm.state_dict()), str(directory / LM_NAME))
        mimi = loaders.get_mimi(None, mimi_cfg, device="cpu")
        randomise_codebooks(mimi, generator)
        save_file(_contiguous(mimi.state_dict()), str(directory / MIMI_NAME))
    _write_configs(
        directory,
        lm_cfg,
        mimi_cfg,
        model_type="moshi",
        lm_gen_config={"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25},
        model_id={"name": "tiny-random", "seed": seed, "format": FORMAT_VERSION},
    )
    return directory


def _write_configs(directory: Path, lm_cfg: dict[str, Any], mimi_cfg: dict[str, Any], **fields: Any) -> None:
    """config.json (the LM kwargs, the file names, then `fields`) and the Mimi config, as real repos have."""
    (directory / MIMI_CONFIG_NAME).write_text(json.dumps(mimi_cfg, indent=2))
    config = {
        **lm_cfg,
        "moshi_name": LM_NAME,
        "mimi_name": MIMI_NAME,
        "mimi_config_name": MIMI_CONFIG_NAME,
        "tokenizer_name": TOKENIZER_NAME,
        **fields,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def _build_stt(directory: Path, seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER_NAME).write_bytes(train_tokenizer(seed))
    lm_cfg = {**tiny_lm_config(), **_TINY_STT_OVERRIDES}
    mimi_cfg = tiny_mimi_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = loaders.get_moshi_lm(None, lm_kwargs=lm_cfg, device="cpu", dtype=torch.float32)
        save_file(_contiguous(lm.state_dict()), str(directory / LM_NAME))
        mimi = loaders.get_mimi(None, mimi_cfg, device="cpu")
        randomise_codebooks(mimi, torch.Generator().manual_seed(seed + 1))
        save_file(_contiguous(mimi.state_dict()), str(directory / MIMI_NAME))
    _write_configs(
        directory,
        lm_cfg,
        mimi_cfg,
        model_type="stt",
        stt_config=TINY_STT_CONFIG,
        lm_gen_config={"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
        model_id={"name": "tiny-random-stt", "seed": seed, "format": FORMAT_VERSION},
    )
    return directory


def default_cache_dir() -> Path:
    env = os.environ.get("MOSHI_REALTIME_CACHE")
    return Path(env) / "tiny" if env else Path.home() / ".cache" / "moshi-realtime" / "tiny"


def ensure_tiny_checkpoint(seed: int, cache_dir: Path | None = None, kind: TinyKind = "moshi") -> Path:
    """Return the cached tiny checkpoint of `kind` for `seed`, generating it on first use.

    Built in a private temp dir and renamed into place, so concurrent processes never see half a checkpoint;
    the loser of a race discards its copy.
    """
    root = cache_dir if cache_dir is not None else default_cache_dir()
    prefix = "seed" if kind == "moshi" else f"{kind}-seed"
    final = root / f"{prefix}-{seed}-v{FORMAT_VERSION}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-{seed}-", dir=root))
    try:
        build_tiny_checkpoint(tmp, seed, kind)
        try:
            tmp.rename(final)
            logger.info("generated tiny checkpoint (random weights) at %s", final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def train_tokenizer(seed: int) -> bytes:
    """A unigram sentencepiece model on generated pseudo-words, with Moshi's special ids (pad = 3)."""
    rng = np.random.default_rng(seed)
    consonants, vowels = list("bcdfghjklmnprstvwz"), list("aeiou")
    syllables = [c + v for c in consonants for v in vowels] + [
        c + v + "n" for c in consonants[:6] for v in vowels
    ]
    words = ["".join(rng.choice(syllables, size=int(rng.integers(1, 4)))) for _ in range(300)]
    lines = [" ".join(rng.choice(words, size=int(rng.integers(4, 12)))) for _ in range(600)]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=TEXT_VOCAB,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=TEXT_PADDING_ID,
        num_threads=1,  # multi-threaded training is not reproducible
        minloglevel=2,
    )
    return out.getvalue()


@torch.no_grad()
def _shape_text_head(lm: LMModel, generator: torch.Generator) -> torch.Tensor:
    """Make the random LM alternate between silence and speech in runs, like a real speaker.

    A random LM picks a word piece almost every step, so a session would never stop "speaking". We carve
    out one random unit direction u of the main residual stream and give it a job:

    - every layer's residual writes (attention out_projs, gating linear_out) and every user-audio embedding
      get u projected out, so the u-component of the final stream is exactly: text-embedding term of the
      previous text token + a noise term from the model's own (sampled) audio codes;
    - the previous text token sets that term: +_PAD_STATE_OFFSET after padding (and at the start), and
      _WORD_STATE_OFFSET after a word piece;
    - each model-audio codebook embedding gets a random u-component, summing to noise of std
      _CODE_NOISE_STD per step;
    - the padding row of `text_linear` becomes _PAD_LOGIT_GAIN * u (other rows lose their u-component,
      ids 0-2 are zeroed so they are almost never picked), so padding wins when the u-component is positive.

    The text stream is thus a two-state Markov chain driven by the model's own feedback: after padding it
    stays silent, after a word it keeps talking, and a noise excursion flips it. _calibrate_runs then sets
    the two offsets so either state is left with probability ~_SWITCH_PROB per step: runs of ~15 frames
    (1.2 s) on average, often several seconds. Input audio does not affect when it speaks, only what.
    Returns u.
    """
    dim = lm.dim
    u = torch.randn(dim, generator=generator)
    u /= u.norm()

    def drop_u_from_rows(weight: torch.Tensor) -> None:  # rows . u = 0 (embeddings, output heads)
        weight -= torch.outer(weight @ u, u)

    def drop_u_from_outputs(weight: torch.Tensor) -> None:  # the layer writes nothing along u
        weight -= torch.outer(u, u @ weight)

    for name, module in lm.transformer.named_modules():
        if isinstance(module, nn.Linear) and _RESIDUAL_WRITERS.search(name):
            drop_u_from_outputs(module.weight)

    text_emb = lm.text_emb.weight
    drop_u_from_rows(text_emb)
    text_emb += _WORD_STATE_OFFSET * u
    text_emb[TEXT_PADDING_ID] += (_PAD_STATE_OFFSET - _WORD_STATE_OFFSET) * u
    text_emb[lm.text_initial_token_id] += (_PAD_STATE_OFFSET - _WORD_STATE_OFFSET) * u

    per_codebook = _CODE_NOISE_STD / math.sqrt(lm.dep_q)
    for index, emb in enumerate(lm.emb):
        assert isinstance(emb, nn.Embedding)
        drop_u_from_rows(emb.weight)
        if index < lm.dep_q:  # the model's own streams; user streams (index >= dep_q) stay neutral
            noise = torch.randn(emb.weight.shape[0], generator=generator)
            noise = (noise - noise.mean()) / noise.std()
            emb.weight += per_codebook * torch.outer(noise, u)

    head = lm.text_linear.weight
    drop_u_from_rows(head)
    head[TEXT_PADDING_ID] = _PAD_LOGIT_GAIN * u
    head[:TEXT_PADDING_ID] = 0.0
    return u


@torch.no_grad()
def _calibrate_runs(lm: LMModel, u: torch.Tensor, generator: torch.Generator) -> None:
    """Set the pad/word offsets from a short teacher-forced run, so every seed alternates alike.

    How often noise flips the state depends on the seed (which codes the depformer favours, the stream's
    RMS, how high the best word logit sits), so we measure instead of guessing: half the rows are forced to
    stay silent, half to keep speaking (random word pieces). For each step, `slack` is the offset at which
    padding would exactly tie the best word piece; the offsets become the quantiles of `slack` that leave
    each state with probability _SWITCH_PROB.
    """
    rows, half = _CALIBRATION_ROWS, _CALIBRATION_ROWS // 2
    first_word = TEXT_PADDING_ID + 1
    forced = torch.full((_CALIBRATION_STEPS, rows), TEXT_PADDING_ID, dtype=torch.long)
    forced[:, half:] = torch.randint(
        first_word, lm.text_card, (_CALIBRATION_STEPS, rows - half), generator=generator
    )
    streams: list[torch.Tensor] = []
    best_word: list[torch.Tensor] = []
    current = forced[0].clone()

    def force_text(token: torch.Tensor) -> None:  # LMGen feeds back and stores the token we write here
        token[:] = current

    def record_logits(logits: torch.Tensor) -> None:
        best_word.append(logits[:, 0, 0, first_word:].float().max(dim=-1).values)

    hook = lm.out_norm.register_forward_hook(lambda _m, args, _out: streams.append(args[0][:, 0].float()))
    lm_gen = LMGen(lm, on_text_hook=force_text, on_text_logits_hook=record_logits)
    try:
        with lm_gen.streaming(rows):
            for tokens in forced:
                current.copy_(tokens)
                user = torch.randint(0, lm.card, (rows, lm.n_q - lm.dep_q, 1), generator=generator)
                lm_gen.step(user)
    finally:
        hook.remove()
    x = torch.stack(streams)[2:]  # [steps, rows, dim]; the first steps still see the initial token
    rms = x.pow(2).mean(dim=-1).sqrt()
    offset = torch.full((rows,), _WORD_STATE_OFFSET)
    offset[:half] = _PAD_STATE_OFFSET
    noise = x @ u - offset  # the u-component is exactly offset + code noise
    slack = torch.stack(best_word)[2:] * rms / _PAD_LOGIT_GAIN - noise
    pad_offset = float(torch.quantile(slack[:, :half].flatten(), 1 - _SWITCH_PROB))
    word_offset = float(torch.quantile(slack[:, half:].flatten(), _SWITCH_PROB))
    if not pad_offset > word_offset:
        raise RuntimeError(f"tiny LM calibration failed: pad {pad_offset:.3f} <= word {word_offset:.3f}")
    text_emb = lm.text_emb.weight
    text_emb += (word_offset - _WORD_STATE_OFFSET) * u
    for token in (TEXT_PADDING_ID, lm.text_initial_token_id):
        text_emb[token] += (pad_offset - word_offset - _PAD_STATE_OFFSET + _WORD_STATE_OFFSET) * u


@torch.no_grad()
def randomise_codebooks(mimi: MimiModel, generator: torch.Generator) -> None:
    """Random Mimi codebooks: a fresh one is all zeros, so every frame would encode to code 0."""
    for module in mimi.modules():
        if isinstance(module, EuclideanCodebook):
            dim = module.embedding_sum.shape[1]
            module.embedding_sum.copy_(
                torch.randn(module.embedding_sum.shape, generator=generator) * (0.1 / math.sqrt(dim))
            )
            module.cluster_usage.fill_(1.0)
            module._initialized.fill_(1.0)
            module.register_buffer("_embedding", None, persistent=False)  # recomputed from embedding_sum
