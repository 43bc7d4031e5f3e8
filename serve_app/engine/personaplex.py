"""NVIDIA PersonaPlex checkpoints: Moshi 7B fine-tuned to follow a role text and a voice prompt.

Same streams, Mimi, tokenizer and `_lm_kwargs` as moshiko (moshi 0.2.13), except that the depformer ships
16 steps (8 agent codebooks, then 8 for the user) and `config.json` holds only
`{"model_type": "personaplex", "version": ...}`, so moshi's `CheckpointInfo` cannot build it. The first 8
depformer steps are exactly the agent's (agent steps never attend to the user steps), so we keep those and
load with the stock kwargs: the engine sees a plain Moshi LM with dep_q 8.

Voices ship as `voices.tgz` (or an extracted `voices/`): one `.pt` per voice, `{"embeddings": [T, 1, 1, D]
summed input embeddings of the voice prompt's rows, "cache": the reference generator's [1, 17, 4] token
ring after them}`. Sources: ../shared/notes/personaplex.md; sglang-omni's port (`timeline.py`) for how the
rows line up.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from moshi.models import loaders
from moshi.models.lm import LMModel
from safetensors import safe_open

from serve_app.engine.voice_names import DEFAULT_VOICE

__all__ = [
    "DEFAULT_VOICE",
    "MODEL_TYPE",
    "PROMPT_SILENCE_FRAMES",
    "SILENCE_CODES",
    "SINE_CODES",
    "PersonaPlexCheckpoint",
    "VoicePrompt",
    "lm_kwargs",
    "load_lm",
    "load_voices",
    "pick_voice",
    "resolve_voices",
    "voice_tail_codes",
    "wrap_system_tags",
]

MODEL_TYPE = "personaplex"
SILENCE_CODES = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
"""Mimi codes of digital silence (reference lm.py SILENCE_TOKENS): the agent's audio outside the voice."""
SINE_CODES = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
"""Mimi codes of a 440 Hz sine frame (reference SINE_TOKENS): the user's audio during the prompt."""
PROMPT_SILENCE_FRAMES = 6
"""0.5 s of silence after the voice prompt and after the role text (reference `audio_silence_frame_cnt`)."""
SYSTEM_TAG = "<system>"
VOICES_ARCHIVE = "voices.tgz"
VOICES_DIR = "voices"
REFERENCE_RING = 4
"""Width of the reference generator's token ring (max delay + 3), hence of a voice file's `cache`."""
UNKNOWN = -1
_CONFIG_ONLY = {
    "model_type",
    "version",
    "moshi_name",
    "mimi_name",
    "mimi_config_name",
    "tokenizer_name",
    "lora_name",
    "lm_gen_config",
    "tts_config",
    "stt_config",
    "model_id",
}
_PER_STEP = re.compile(
    r"^(depformer_in|linears|depformer_norms|depformer\.layers\.\d+\.gating"
    r"|depformer\.layers\.\d+\.self_attn\.(?:in|out)_projs)\.(\d+)\."
)
_FUSED = re.compile(r"^depformer\.layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)$")
_EMB = re.compile(r"^depformer_emb\.(\d+)\.")


@dataclasses.dataclass
class PersonaPlexCheckpoint(loaders.CheckpointInfo):
    """moshi's CheckpointInfo (its files resolved) plus where the voice prompts are."""

    voices: Path | None = None


@dataclasses.dataclass(frozen=True)
class VoicePrompt:
    """One packaged voice: the input rows of its prompt, and the codes the rows after it still read."""

    name: str
    embeddings: torch.Tensor
    """[T, D] in the LM's dtype and device: the inputs of prompt positions 0..T-1."""
    tail_codes: npt.NDArray[np.int64]
    """[2, 8]: the agent codes of the voice's last two frames (T-1 and T; UNKNOWN where not kept)."""

    @property
    def frames(self) -> int:
        """Frames of the voice prompt: its rows plus the last frame, whose row is built from tokens."""
        return int(self.embeddings.shape[0]) + 1


def wrap_system_tags(text: str) -> str:
    """The role text as the reference feeds it: `<system> {text} <system>`."""
    cleaned = text.strip()
    if cleaned.startswith(SYSTEM_TAG) and cleaned.endswith(SYSTEM_TAG) and len(cleaned) > len(SYSTEM_TAG):
        return cleaned
    return f"{SYSTEM_TAG} {cleaned} {SYSTEM_TAG}"


# --- the LM ------------------------------------------------------------------------------------------------


def lm_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """moshiko's LMModel kwargs, with any architecture key config.json gives (a tiny checkpoint's sizes).

    dep_q is always the agent's 8 codebooks (n_q // 2), whatever the file ships."""
    kwargs: dict[str, Any] = copy.deepcopy(loaders._lm_kwargs)
    kwargs.update({k: v for k, v in config.items() if k not in _CONFIG_ONLY})
    kwargs.pop("depformer_causal", None)  # deprecated key the reference keeps; moshi 0.2.13 drops it
    kwargs["dep_q"] = int(kwargs["n_q"]) // 2
    return kwargs


def _shipped_steps(keys: list[str]) -> int:
    steps = {int(m.group(2)) for key in keys if (m := _PER_STEP.match(key)) and m.group(1) == "depformer_in"}
    return max(steps) + 1 if steps else 0


def load_lm(weights: Path, kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype) -> LMModel:
    """Build the LM from a PersonaPlex safetensors file, keeping the first dep_q depformer steps.

    Reads only the tensors (and rows of fused tensors) it keeps, straight onto the device."""
    keep = int(kwargs["dep_q"])
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(weights), framework="pt", device=str(device)) as handle:  # type: ignore[no-untyped-call]
        keys = list(handle.keys())
        shipped = _shipped_steps(keys)
        if shipped < keep:
            raise ValueError(f"{weights.name}: depformer has {shipped} steps, expected at least {keep}")
        for key in keys:
            per_step, emb = _PER_STEP.match(key), _EMB.match(key)
            if per_step is not None and int(per_step.group(2)) >= keep:
                continue
            if emb is not None and int(emb.group(1)) >= keep - 1:
                continue
            if _FUSED.match(key):
                rows = handle.get_slice(key).get_shape()[0]
                # Fused per-step weights: step i owns rows [i * rows / shipped, (i + 1) * rows / shipped).
                value = handle.get_slice(key)[: rows * keep // shipped]
            else:
                value = handle.get_tensor(key)
            state[key] = value.to(dtype) if value.dtype.is_floating_point else value
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta", dtype=dtype)
    try:
        lm.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights.name} does not match the PersonaPlex layout: {exc}") from exc
    lm.eval()
    return lm


# --- voices ------------------------------------------------------------------------------------------------


def resolve_voices(directory: Path, resolve: Callable[[str], Path]) -> Path:
    """An extracted `voices/` next to the checkpoint, else `voices.tgz` (fetched through `resolve`)."""
    extracted = directory / VOICES_DIR
    if extracted.is_dir():
        return extracted
    try:
        archive = resolve(VOICES_ARCHIVE)
    except Exception as exc:  # hub errors come in many types; all mean "not available"
        raise FileNotFoundError(
            f"missing {VOICES_ARCHIVE} (PersonaPlex voice prompts; no {VOICES_DIR}/ in {directory}): {exc}"
        ) from exc
    if not archive.is_file():
        raise FileNotFoundError(
            f"missing file {archive} (PersonaPlex voice prompts; no {VOICES_DIR}/ in {directory} either)"
        )
    return archive


def _voice_files(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.stem: p.read_bytes() for p in sorted(path.glob("*.pt"))}
    files: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive.getmembers():
            name = Path(member.name)
            if member.isfile() and name.suffix == ".pt":
                handle = archive.extractfile(member)
                if handle is not None:
                    files[name.stem] = handle.read()
    return files


def voice_tail_codes(cache: torch.Tensor, frames: int, delays: list[int]) -> npt.NDArray[np.int64]:
    """The agent codes of frames V-2 and V-1 from a voice file's ring (V = `frames`).

    Agent stream k of frame f sits at position f + delay_k, ring slot (f + delay_k) % 4; only those two
    frames are still read by the rows after the voice. (sglang-omni `voice_tail_codes_from_cache`.)"""
    ring = cache.reshape(len(delays), -1).to(torch.long).cpu().numpy()
    if ring.shape[1] != REFERENCE_RING:
        raise ValueError(f"voice cache has a ring of {ring.shape[1]} positions, expected {REFERENCE_RING}")
    agent = range(1, 1 + len(SILENCE_CODES))
    tail = np.full((2, len(SILENCE_CODES)), UNKNOWN, np.int64)
    for column, k in enumerate(agent):
        tail[1, column] = ring[k, (frames - 1 + delays[k]) % REFERENCE_RING]
        if delays[k] > 0:
            tail[0, column] = ring[k, (frames - 2 + delays[k]) % REFERENCE_RING]
    return tail


def load_voices(path: Path, lm: LMModel) -> dict[str, VoicePrompt]:
    """Every `.pt` voice under `path` (a directory or `voices.tgz`), on the LM's device and dtype."""
    try:
        files = _voice_files(path)
    except (OSError, tarfile.TarError) as exc:
        raise ValueError(f"{path}: cannot read the voice prompts: {exc}") from exc
    if not files:
        raise ValueError(f"{path}: no .pt voice prompts in it")
    voices: dict[str, VoicePrompt] = {}
    for name, data in sorted(files.items()):
        try:
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            embeddings = saved["embeddings"].reshape(saved["embeddings"].shape[0], -1)
            cache = saved["cache"]
        except Exception as exc:  # a corrupt pickle raises anything
            raise ValueError(f"{path}: voice {name}.pt is not a PersonaPlex voice prompt: {exc}") from exc
        if embeddings.shape[1] != lm.dim or embeddings.shape[0] < 1:
            raise ValueError(
                f"{path}: voice {name}.pt has embeddings {tuple(embeddings.shape)}; the LM's width is "
                f"{lm.dim}"
            )
        frames = int(embeddings.shape[0]) + 1
        voices[name] = VoicePrompt(
            name=name,
            embeddings=embeddings.to(device=lm.device, dtype=lm.dtype),
            tail_codes=voice_tail_codes(cache, frames, list(lm.delays)),
        )
    return voices


def pick_voice(voices: dict[str, VoicePrompt], name: str | None) -> VoicePrompt:
    """The voice by name (".pt" optional), the default when None; KeyError lists the voices."""
    if not voices:
        raise KeyError("this model has no voices")
    if name is None:
        name = DEFAULT_VOICE if DEFAULT_VOICE in voices else sorted(voices)[0]
    found = voices.get(name.removesuffix(".pt"))
    if found is None:
        raise KeyError(f"unknown voice {name!r}; voices: {', '.join(sorted(voices))}")
    return found
