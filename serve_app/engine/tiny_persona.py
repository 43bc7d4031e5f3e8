"""A generated tiny PersonaPlex checkpoint: the real file layout at toy size, random weights.

What a real `nvidia/personaplex-7b-v1` directory holds, in the same formats: a `config.json` with no full
architecture (`model_type: personaplex`; only the toy sizes the 7B kwargs need overridden), the LM with a
16-step depformer and fused attention weights (`in_proj_weight`, `out_proj.weight`) under the real file
names, Mimi, the tokenizer, and `voices.tgz` of `voices/<name>.pt` files ({"embeddings": [T, 1, 1, D],
"cache": [1, 17, 4]}). The temporal weights are shaped like the tiny Moshi's (speech in runs); the voices
are random agent codes laid out as PersonaPlex's voice-prompt rows and embedded with the LM's own tables.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from moshi.models import loaders
from moshi.models.lm import LMModel
from safetensors.torch import save_file

from serve_app.engine import personaplex, tiny
from serve_app.engine.prompt import embed_rows
from serve_app.engine.voice_names import TINY_VOICE_FRAMES

__all__ = ["TINY_VOICES", "build_tiny_personaplex"]

TINY_VOICES = TINY_VOICE_FRAMES
"""Voice name -> voice-prompt frames (torch-free in voice_names.py: the ingress knows them unloaded)."""
_SHIPPED_STEPS = 16
_SPLIT = re.compile(r"^(.*\.self_attn)\.(in|out)_projs\.(\d+)\.weight$")


def build_tiny_personaplex(directory: Path, seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / loaders.TEXT_TOKENIZER_NAME).write_bytes(tiny.train_tokenizer(seed))
    lm_cfg = tiny.tiny_lm_config()
    mimi_cfg = tiny.tiny_mimi_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shipped = loaders.get_moshi_lm(
            None, lm_kwargs={**lm_cfg, "dep_q": _SHIPPED_STEPS}, device="cpu", dtype=torch.float32
        ).state_dict()
        # Shape the speaking runs on the 8-step model the server runs (LMGen needs the user codebooks).
        lm = loaders.get_moshi_lm(None, lm_kwargs=lm_cfg, device="cpu", dtype=torch.float32)
        lm.load_state_dict({key: shipped[key] for key in lm.state_dict()})
        generator = torch.Generator().manual_seed(seed + 1)
        direction = tiny._shape_text_head(lm, generator)
        tiny._calibrate_runs(lm, direction, generator)
        shipped.update(lm.state_dict())
        save_file(_fused(tiny._contiguous(shipped)), str(directory / loaders.MOSHI_NAME))
        mimi = loaders.get_mimi(None, mimi_cfg, device="cpu")
        tiny.randomise_codebooks(mimi, generator)
        save_file(tiny._contiguous(mimi.state_dict()), str(directory / loaders.MIMI_NAME))
        lm.eval()
        (directory / personaplex.VOICES_ARCHIVE).write_bytes(_voices_archive(lm, np.random.default_rng(seed)))
    (directory / tiny.MIMI_CONFIG_NAME).write_text(json.dumps(mimi_cfg, indent=2))
    config = {
        "model_type": personaplex.MODEL_TYPE,
        "version": "tiny-v1",
        **tiny._TINY_LM_OVERRIDES,
        "mimi_config_name": tiny.MIMI_CONFIG_NAME,
        "model_id": {"name": "tiny-random-personaplex", "seed": seed, "format": tiny.FORMAT_VERSION},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def _fused(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """moshi 0.2.13's per-step `in_projs.{i}.weight` back into the shipped fused tensors."""
    fused: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        match = _SPLIT.match(key)
        if match is None:
            fused[key] = value
            continue
        target = (
            f"{match.group(1)}.in_proj_weight"
            if match.group(2) == "in"
            else f"{match.group(1)}.out_proj.weight"
        )
        parts.setdefault(target, {})[int(match.group(3))] = value
    for target, steps in parts.items():
        fused[target] = torch.cat([steps[i] for i in range(len(steps))]).contiguous()
    return fused


@torch.no_grad()
def _voice_file(lm: LMModel, frames: int, rng: np.random.Generator) -> bytes:
    """A voice prompt as the reference saves it: the embedded input rows of positions 0..frames-2 (text
    PAD, the voice's agent codes, the user's sine, delayed) and the token ring after them (width 4)."""
    dep_q = int(lm.dep_q)
    delays = [int(d) for d in lm.delays]
    codes = rng.integers(0, lm.card, size=(frames + 1, dep_q))
    sine = np.tile(np.array(personaplex.SINE_CODES, np.int64), (frames + 1, 1))
    text = np.full((frames + 1, 1), lm.text_padding_token_id, np.int64)
    undelayed = np.concatenate([text, codes, sine], axis=1)
    initial = lm._get_initial_token().reshape(-1).numpy()
    rows = np.empty_like(undelayed)  # position p, stream k = frame p - delay_k
    for k, delay in enumerate(delays):
        rows[: delay + 1, k] = initial[k]
        rows[delay + 1 :, k] = undelayed[1 : frames + 1 - delay, k]
    embedded = embed_rows(lm, torch.from_numpy(rows[: frames - 1].T.copy())[None])[0]
    ring = np.zeros((len(delays), personaplex.REFERENCE_RING), np.int64)
    for position in range(frames - 3, frames + 1):
        ring[:, position % personaplex.REFERENCE_RING] = rows[position]
    out = io.BytesIO()
    torch.save({"embeddings": embedded[:, None, None].clone(), "cache": torch.from_numpy(ring)[None]}, out)
    return out.getvalue()


def _voices_archive(lm: LMModel, rng: np.random.Generator) -> bytes:
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as zipped,  # no timestamp: same bytes every build
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for name, frames in TINY_VOICES.items():
            data = _voice_file(lm, frames, rng)
            info = tarfile.TarInfo(f"{personaplex.VOICES_DIR}/{name}.pt")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()
