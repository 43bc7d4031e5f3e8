"""Load Mimi + LM + tokenizer from a Hugging Face repo, a local directory or a generated tiny checkpoint.

Everything goes through moshi's own `CheckpointInfo`; we only resolve files first (so a missing one is named)
and check what moshi does not (config vs weights, tokenizer size), so a bad checkpoint fails at load time.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from torch import nn

from serve_app.constants import FRAME_SAMPLES, SAMPLE_RATE
from serve_app.engine import personaplex
from serve_app.engine.personaplex import PersonaPlexCheckpoint, VoicePrompt
from serve_app.engine.quantize import QuantizationUnsupported, check_supported, quantize_lm
from serve_app.engine.spec import ModelSpec
from serve_app.engine.tiny import ensure_tiny_checkpoint

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
_CONFIG_FIELDS_SHOWN = ("dim", "num_layers", "n_q", "dep_q", "card", "text_card", "depformer_dim")


class CheckpointError(Exception):
    """The checkpoint cannot be served; the message names the file or config field at fault."""


@dataclass
class LoadedModel:
    mimi: MimiModel
    lm: LMModel
    """In eval mode, on `device`, in `dtype`."""
    tokenizer: Any
    """A sentencepiece.SentencePieceProcessor (sentencepiece ships no type information)."""
    lm_gen_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    source: str = ""
    """Human-readable origin, for logs."""
    config: dict[str, Any] = field(default_factory=dict)
    """The LMModel kwargs actually used."""
    model_type: str = "moshi"
    """config.json `model_type`: moshi, stt (Kyutai STT: text out only), hibiki, ..."""
    stt_config: dict[str, Any] = field(default_factory=dict)
    """config.json `stt_config` (audio_silence_prefix_seconds, audio_delay_seconds) of an STT model."""
    voices: dict[str, VoicePrompt] = field(default_factory=dict)
    """Voice prompts by name (PersonaPlex: serve_app/engine/personaplex.py); empty for other models."""

    @property
    def text_only(self) -> bool:
        """The LM generates no audio (dep_q 0, as Kyutai STT): nothing to decode, text is the output."""
        return int(self.lm.dep_q) == 0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise CheckpointError(f"invalid device {device!r}: {exc}") from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # CPUs here have no bf16 hardware: fp32 is faster there; bf16 is what the weights ship in for GPUs.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def load_model(spec: ModelSpec) -> LoadedModel:
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    try:
        check_supported(spec.quantize, device)  # before minutes of loading
    except QuantizationUnsupported as exc:
        raise CheckpointError(str(exc)) from exc
    if spec.tiny_seed is not None:
        directory = ensure_tiny_checkpoint(spec.tiny_seed, kind=spec.tiny_kind)
        logger.warning(
            "using a generated tiny %s checkpoint (random weights, seed %d): output is noise",
            spec.tiny_kind,
            spec.tiny_seed,
        )
        info, source = (
            _local_checkpoint(directory),
            f"tiny {spec.tiny_kind} seed {spec.tiny_seed} ({directory})",
        )
    elif spec.local_dir is not None:
        info, source = _local_checkpoint(spec.local_dir), str(spec.local_dir)
    else:
        assert spec.hf_repo is not None  # guaranteed by ModelSpec
        info = _hf_checkpoint(spec.hf_repo, spec.revision)
        source = spec.hf_repo + (f"@{spec.revision}" if spec.revision else "")
    loaded = _instantiate(info, device, dtype, source)
    if spec.quantize != "none":
        quantize_lm(loaded.lm, spec.quantize)
    logger.info("loaded %s on %s (%s, quantize %s)", source, device, dtype, spec.quantize)
    return loaded


# --- resolving files ---------------------------------------------------------------------------------------


def _read_config(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return raw


def _file_names(config: dict[str, Any]) -> dict[str, str | None]:
    """The same defaults moshi's `CheckpointInfo.from_hf_repo` applies."""
    return {
        "moshi_name": config.get("moshi_name", loaders.MOSHI_NAME),
        "mimi_name": config.get("mimi_name", loaders.MIMI_NAME),
        "tokenizer_name": config.get("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
        "mimi_config_name": config.get("mimi_config_name"),
        "lora_name": config.get("lora_name"),
    }


def _resolve_all(config_path: Path, resolve: Callable[[str], Path]) -> loaders.CheckpointInfo:
    names = _file_names(_read_config(config_path))
    paths: dict[str, Path | None] = {}
    for key, name in names.items():
        if name is None:
            paths[key] = None
            continue
        try:
            path = resolve(name)
        except CheckpointError:
            raise
        except Exception as exc:  # hub errors come in many types; all mean "this file is not available"
            raise CheckpointError(f"cannot get {name!r} (config.json field {key!r}): {exc}") from exc
        if not path.is_file():
            raise CheckpointError(f"missing file {path} (config.json field {key!r})")
        paths[key] = path
    try:
        # All paths are explicit, so moshi parses config.json and resolves nothing from the hub itself.
        info = loaders.CheckpointInfo.from_hf_repo(
            str(config_path.parent),
            moshi_weights=paths["moshi_name"],
            mimi_weights=paths["mimi_name"],
            tokenizer=paths["tokenizer_name"],
            config_path=config_path,
            mimi_config_path=paths["mimi_config_name"],
            lora_weights=paths["lora_name"],
        )
        if info.model_type != personaplex.MODEL_TYPE:
            return info
        voices = personaplex.resolve_voices(config_path.parent, resolve)
        return PersonaPlexCheckpoint(**vars(info), voices=voices)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc


def _local_checkpoint(directory: Path) -> loaders.CheckpointInfo:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"missing file {config_path} (LM config)")

    def resolve(name: str) -> Path:
        return Path(name.removeprefix("file://")) if name.startswith("file://") else directory / name

    return _resolve_all(config_path, resolve)


def _hf_checkpoint(repo: str, revision: str | None) -> loaders.CheckpointInfo:
    try:
        config_path = Path(hf_hub_download(repo, CONFIG_NAME, revision=revision))
    except RemoteEntryNotFoundError:
        # Legacy repos have no config.json; moshi then assumes the 7B layout and its default file names.
        logger.warning("%s has no config.json; assuming the Moshi 7B layout", repo)
        try:
            return loaders.CheckpointInfo.from_hf_repo(repo, revision=revision)
        except Exception as exc:
            raise CheckpointError(f"{repo}: {exc}") from exc
    except Exception as exc:
        raise CheckpointError(
            f"cannot get {CONFIG_NAME} of {repo!r}"
            f"{'@' + revision if revision else ''}: {exc} (offline runs need the repo in the HF cache)"
        ) from exc

    def resolve(name: str) -> Path:
        return loaders.hf_get(name, repo, revision=revision)

    return _resolve_all(config_path, resolve)


# --- checking and instantiating ----------------------------------------------------------------------------


def _instantiate(
    info: loaders.CheckpointInfo, device: torch.device, dtype: torch.dtype, source: str
) -> LoadedModel:
    if isinstance(info, PersonaPlexCheckpoint):
        return _instantiate_personaplex(info, device, dtype, source)
    lm_config: dict[str, Any] = dict(info.lm_config if info.lm_config is not None else loaders._lm_kwargs)
    mimi_config: dict[str, Any] = info.mimi_config if info.mimi_config is not None else loaders._mimi_config

    tokenizer = _load_tokenizer(info.tokenizer)
    lm_shape = _meta_lm(lm_config)
    _check_tokenizer(tokenizer, info.tokenizer, lm_shape)
    _check_weights(lm_shape, info.moshi_weights, "config.json", _lm_summary(lm_config))
    mimi_shape = _meta_mimi(mimi_config)
    _check_mimi(mimi_shape, lm_shape)
    _check_weights(mimi_shape, info.mimi_weights, "the Mimi config", _mimi_summary(mimi_config))

    try:
        lm = info.get_moshi(device=device, dtype=dtype)
        mimi = info.get_mimi(device=device)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: loading weights failed: {exc}") from exc
    lm.eval()
    mimi.eval()
    return LoadedModel(
        mimi=mimi,
        lm=lm,
        tokenizer=tokenizer,
        lm_gen_config=dict(info.lm_gen_config),
        device=device,
        dtype=dtype,
        source=source,
        config=lm_config,
        model_type=info.model_type,
        stt_config=dict(info.stt_config),
    )


def _instantiate_personaplex(
    info: PersonaPlexCheckpoint, device: torch.device, dtype: torch.dtype, source: str
) -> LoadedModel:
    """moshiko's kwargs (config.json has no architecture), the depformer's 8 agent steps, the voices."""
    kwargs = personaplex.lm_kwargs(info.lm_config or {})
    mimi_config: dict[str, Any] = info.mimi_config if info.mimi_config is not None else loaders._mimi_config
    tokenizer = _load_tokenizer(info.tokenizer)
    lm_shape = _meta_lm(kwargs)
    _check_tokenizer(tokenizer, info.tokenizer, lm_shape)
    mimi_shape = _meta_mimi(mimi_config)
    _check_mimi(mimi_shape, lm_shape)
    _check_weights(mimi_shape, info.mimi_weights, "the Mimi config", _mimi_summary(mimi_config))
    assert info.voices is not None
    try:
        lm = personaplex.load_lm(info.moshi_weights, kwargs, device, dtype)
        mimi = loaders.get_mimi(info.mimi_weights, mimi_config, num_codebooks=lm.dep_q, device=device)
        voices = personaplex.load_voices(info.voices, lm)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: loading failed: {exc}") from exc
    mimi.eval()
    return LoadedModel(
        mimi=mimi,
        lm=lm,
        tokenizer=tokenizer,
        lm_gen_config=dict(info.lm_gen_config),
        device=device,
        dtype=dtype,
        source=source,
        config=kwargs,
        model_type=info.model_type,
        voices=voices,
    )


def _load_tokenizer(path: Path) -> Any:
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable sentencepiece model: {exc}") from exc


def _meta_lm(lm_config: dict[str, Any]) -> LMModel:
    """The LM as the config describes it, without memory (to compare shapes with the weights file)."""
    try:
        with torch.device("meta"):
            return loaders.get_moshi_lm(None, lm_kwargs=lm_config, device="meta", dtype=torch.float32)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise CheckpointError(f"config.json does not describe a valid Moshi LM: {exc!r}") from exc


def _meta_mimi(mimi_config: dict[str, Any]) -> MimiModel:
    try:
        with torch.device("meta"):
            return loaders.get_mimi(None, mimi_config, device="meta", num_codebooks=8)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise CheckpointError(f"Mimi config does not describe a valid Mimi: {exc!r}") from exc


def _check_tokenizer(tokenizer: Any, path: Path, lm: LMModel) -> None:
    vocab = int(tokenizer.vocab_size())
    emitted = max(lm.text_card, lm.text_linear.out_features)
    if vocab < emitted:
        # moshi does not check this; the LM would sample ids the tokenizer cannot decode, mid-session.
        raise CheckpointError(
            f"tokenizer {path.name} has {vocab} pieces but the LM's text vocabulary (config.json text_card) "
            f"is {emitted}: they do not belong together"
        )
    if lm.text_padding_token_id >= emitted:
        raise CheckpointError(
            f"config.json existing_text_padding_id={lm.text_padding_token_id} is outside text_card={emitted}"
        )


def _check_mimi(mimi: MimiModel, lm: LMModel) -> None:
    if mimi.sample_rate != SAMPLE_RATE or mimi.frame_size != FRAME_SAMPLES:
        raise CheckpointError(
            f"Mimi config gives {mimi.sample_rate} Hz / {mimi.frame_size}-sample frames; "
            f"the server needs {SAMPLE_RATE} Hz / {FRAME_SAMPLES}"
        )
    if mimi.cardinality != lm.card:
        raise CheckpointError(
            f"Mimi config quantizer bins={mimi.cardinality} but config.json card={lm.card}: "
            "they do not belong together"
        )
    needed = max(lm.dep_q, lm.n_q - lm.dep_q)
    if mimi.total_codebooks < needed:
        raise CheckpointError(
            f"Mimi config quantizer n_q={mimi.total_codebooks} but config.json needs {needed} codebooks"
        )


def _lm_summary(config: dict[str, Any]) -> str:
    return ", ".join(f"{key}={config[key]}" for key in _CONFIG_FIELDS_SHOWN if key in config)


def _mimi_summary(config: dict[str, Any]) -> str:
    seanet, quantizer, transformer = config["seanet"], config["quantizer"], config["transformer"]
    return (
        f"seanet dimension={seanet.get('dimension')} n_filters={seanet.get('n_filters')}, "
        f"quantizer n_q={quantizer.get('n_q')} dimension={quantizer.get('dimension')}, "
        f"transformer d_model={transformer.get('d_model')} num_layers={transformer.get('num_layers')}"
    )


def _check_weights(expected: nn.Module, weights: Path, config_name: str, summary: str) -> None:
    """Compare tensor names and shapes in the safetensors header with the model the config describes."""
    if weights.suffix not in (".safetensors", ".sft", ".sfts"):
        return  # legacy torch pickles are checked by moshi's strict load
    try:
        found = _safetensors_shapes(weights)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file: {exc}") from exc
    wanted = {key: tuple(t.shape) for key, t in expected.state_dict().items()}
    missing = sorted(set(wanted) - set(found))
    unexpected = sorted(set(found) - set(wanted))
    mismatched = [
        f"{key}: file {list(found[key])} vs config {list(wanted[key])}"
        for key in sorted(set(wanted) & set(found))
        if found[key] != wanted[key]
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches, e.g. {'; '.join(mismatched[:3])}")
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file, e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} tensors the config has no place for, e.g. {', '.join(unexpected[:3])}"
        )
    raise CheckpointError(f"{weights.name} does not match {config_name} ({summary}): " + "; ".join(problems))


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (u64 little-endian length, then JSON), without the data."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError("file too short")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100_000_000:
            raise ValueError(f"implausible header length {length}")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return {
        key: tuple(int(d) for d in entry["shape"]) for key, entry in header.items() if key != "__metadata__"
    }
