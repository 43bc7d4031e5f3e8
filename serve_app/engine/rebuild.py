"""Rebuild one slot of a batched engine from a session's kept history, by multi-step prefill.

A Moshi slot's state is a function of what it stepped (serve_app/engine/history.py). Given the window
(records + input audio), a rebuild brings a free slot to that state without replaying it in real time:

1. Mimi's encoder: multi-step encodes of the last stepped input frames (its transformer's context,
   125 frames = 10 s); the codes they yield are dropped, the records hold the exact ones.
2. Mimi's decoder: multi-step decodes of the audio tokens the slot decoded last (same context).
3. The LM: `forward_text` over the delayed input sequence rebuilt from the records, in chunks (its KV
   cache); then LMGen's delayed-token ring and offset are written as its own steps would have left them.

moshi keeps one streaming state per module, batched over the engine's slots. The rebuild runs on a
separate batch-of-one state (swapped in for each chunk, swapped out after, between ticks), then copies it
into the slot's row of the live state in place (CUDA graphs captured on the live tensors stay valid).
Chunks are small, so the clock can interleave them with live ticks and the other slots keep real time.

Record columns follow the LM's codebook index k (K = 1 + dep_q + n_q): k = 0 is the text token and
1..dep_q the audio tokens *as sampled* at that step (before the delays are undone), then the n_q input
codes Mimi encoded for that step.

Exactness: the tokens fed are exact; the states are recomputed with other matrix shapes (T steps at once
instead of one), so floats differ in the last bits (docs/ENGINE_FACTS.md, "Rebuilding a slot", has the
measured agreement). Mimi's convolutions see the first frame of the window as the start of a stream.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from moshi.models.lm import LMGen
from moshi.modules.transformer import StreamingMultiheadAttention

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.history import HistorySpec, ResumeWindow
from serve_app.engine.loader import LoadedModel

__all__ = ["SlotRebuild", "history_spec", "rebuild_inputs"]

LM_CHUNK_STEPS = 64
"""LM steps per prefill chunk: one chunk must fit beside a live tick in the 80 ms period."""
MIMI_CHUNK_FRAMES = 16
"""Frames per Mimi encode/decode chunk. A chunk of T frames is 2T steps of Mimi's transformers; the whole
window (125 frames) fills their 250-step KV ring exactly once, so chunking it overwrites nothing."""


def _attention_context(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    for sub in module.modules():
        if isinstance(sub, StreamingMultiheadAttention):
            return int(sub.context or 0)  # None: unbounded (not in any shipped checkpoint)
    return 0


def history_spec(model: LoadedModel) -> HistorySpec:
    """How much history a slot of this model needs (records of the LM's context, Mimi's audio context)."""
    lm, mimi = model.lm, model.mimi
    steps_per_frame = max(1, round(mimi.encoder_frame_rate / mimi.frame_rate))
    mimi_context = max(
        _attention_context(mimi.encoder_transformer), _attention_context(mimi.decoder_transformer)
    )
    return HistorySpec(
        record_width=int(lm.num_codebooks),
        context_frames=max(1, _attention_context(lm.transformer) or 3000),
        audio_frames=max(1, mimi_context // steps_per_frame),
    )


@dataclasses.dataclass(frozen=True)
class RebuildInputs:
    """What the three prefills consume, derived from a window (numpy; tested against moshi's own loop)."""

    lm_inputs: npt.NDArray[np.int64]
    """[K, S]: the LM's input tokens for the last S steps, as LMGen would have gathered them."""
    ring: npt.NDArray[np.int64]
    """[K, CT]: LMGen's delayed-token ring after the last step."""
    encoder_audio: npt.NDArray[np.float32]
    decoder_codes: npt.NDArray[np.int64]
    """[dep_q, D]: the audio tokens the slot's Mimi decoded last (delays undone)."""


def rebuild_inputs(
    window: ResumeWindow,
    *,
    delays: list[int],
    dep_q: int,
    initial: npt.NDArray[np.int64],
    ungenerated: int,
    spec: HistorySpec,
) -> RebuildInputs:
    """Replays LMGen's cache arithmetic (moshi/models/lm.py `LMGen._step`) over the records."""
    n, records = window.steps, window.records.astype(np.int64)
    kept = len(records)
    first = n - kept  # the step of records[0]
    max_delay = max(delays)
    ring_size = max_delay + 2
    k_total = len(delays)
    # Where a step's token for codebook k is written: generated tokens one step on, input codes `delay` on.
    shift = np.array([1 if k <= dep_q else delays[k] for k in range(k_total)])

    # Input of step s for codebook k: the initial token while s <= delay_k, else the token written for s.
    start = 0 if first == 0 else first + int(shift.max())
    steps = np.arange(start, n)
    inputs = np.empty((k_total, len(steps)), np.int64)
    for k in range(k_total):
        source = steps - shift[k] - first
        init = steps <= delays[k]
        taken = records[np.clip(source, 0, max(kept - 1, 0)), k] if kept else np.zeros(len(steps), np.int64)
        inputs[k] = np.where(init, initial[k], taken)

    ring = np.full((k_total, ring_size), ungenerated, np.int64)
    for s in range(max(first, n - ring_size - 2), n):
        row = records[s - first]
        for k in range(k_total):
            ring[k, (s + shift[k]) % ring_size] = row[k]

    # Step u decoded the audio tokens written max_delay - delay_k steps before it, from u = max_delay on.
    lo = max(max_delay, first + max_delay, n - spec.audio_frames)
    decoded = np.arange(lo, n)
    codes = np.empty((dep_q, len(decoded)), np.int64)
    for k in range(1, dep_q + 1):
        codes[k - 1] = records[decoded - max_delay + delays[k] - first, k]

    # Mimi is reset after a Moshi slot's first encode: its encoder state starts at frame 1.
    stepped_frames = window.audio.size // FRAME_SAMPLES
    frames = min(stepped_frames, spec.audio_frames, max(0, n - 1))
    audio = window.audio[window.audio.size - frames * FRAME_SAMPLES :] if frames else window.audio[:0]
    return RebuildInputs(inputs, ring, audio.astype(np.float32), codes)


def _copy_row(dst: Any, src: Any, row: int, batch: int, seen: set[int]) -> None:
    """Copy a batch-of-one streaming state into row `row` of a batched one, in place, field by field."""
    if id(dst) in seen:
        return
    seen.add(id(dst))
    fields = dataclasses.fields(dst) if dataclasses.is_dataclass(dst) else ()
    names = [f.name for f in fields] or list(vars(dst))
    for name in names:
        if name in ("exec_mask", "batch_size", "device"):
            continue  # the live state's own: the clock sets the mask every tick
        a, b = getattr(dst, name, None), getattr(src, name, None)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            _copy_tensor_row(a, b, row, batch, name)
        elif _is_state_part(a) and type(a) is type(b):
            _copy_row(a, b, row, batch, seen)  # e.g. RingKVCache


def _is_state_part(value: Any) -> bool:
    """An object inside a state that holds per-slot tensors (not a CUDA graph, callback or exit stack)."""
    return hasattr(value, "__dict__") and not callable(value) and not isinstance(value, ExitStack)


def _copy_tensor_row(dst: torch.Tensor, src: torch.Tensor, row: int, batch: int, name: str) -> None:
    if dst.shape == src.shape:
        if batch == 1:
            dst.copy_(src)
        return  # not per-slot (e.g. LMGen's initial tokens)
    differing = [d for d, (x, y) in enumerate(zip(dst.shape, src.shape, strict=True)) if x != y]
    if len(differing) != 1 or dst.shape[differing[0]] != batch or src.shape[differing[0]] != 1:
        raise RuntimeError(f"cannot place streaming state {name} {tuple(src.shape)} into {tuple(dst.shape)}")
    dst.narrow(differing[0], row, 1).copy_(src)


class SlotRebuild:
    """One slot's rebuild, done a chunk at a time by `step()` on the engine's tick thread."""

    def __init__(
        self, model: LoadedModel, lm_gen: LMGen, slot: int, batch: int, window: ResumeWindow
    ) -> None:
        if lm_gen.cfg_coef != 1.0:
            raise ValueError("slots of a model with classifier-free guidance cannot be rebuilt")
        self._model, self._lm_gen, self.slot, self._batch = model, lm_gen, slot, batch
        self.window = window
        lm = model.lm
        self.spec = history_spec(model)
        self.inputs = rebuild_inputs(
            window,
            delays=list(lm.delays),
            dep_q=int(lm.dep_q),
            initial=lm._get_initial_token().reshape(-1).cpu().numpy(),
            ungenerated=int(lm.ungenerated_token_id),
            spec=self.spec,
        )
        self._modules: tuple[Any, ...] = (model.mimi, lm_gen, lm)
        self._scratch: list[dict[str, Any]] | None = None
        self._stack: ExitStack | None = None
        self._lm_done = 0
        self._work: list[Callable[[], None]] = [
            *self._mimi_chunks(self.inputs.encoder_audio.size // FRAME_SAMPLES, self._encode),
            *self._mimi_chunks(self.inputs.decoder_codes.shape[1], self._decode),
        ]
        self.started = time.perf_counter()
        self.compute_s = 0.0
        """Time spent in the rebuild's own chunks (excluding the live ticks between them)."""
        self.chunks = 0
        self.longest_chunk_s = 0.0
        self.done = False

    @property
    def lm_steps(self) -> int:
        return int(self.inputs.lm_inputs.shape[1])

    # --- state swapping --------------------------------------------------------------------------------

    def _live(self) -> list[dict[str, Any]]:
        return [m.get_streaming_state() for m in self._modules]

    def _install(self, states: list[dict[str, Any]]) -> None:
        for module, state in zip(self._modules, states, strict=True):
            module.set_streaming_state(state)

    def _open_scratch(self, live: list[dict[str, Any]]) -> None:
        self._install([dict.fromkeys(state) for state in live])  # detach the live states
        stack = ExitStack()
        try:
            stack.enter_context(self._model.mimi.streaming(1))
            stack.enter_context(self._lm_gen.streaming(1))  # enters the LM's own streaming(1)
        except BaseException:
            stack.close()
            self._install(live)
            raise
        mimi_state = self._model.mimi._streaming_state
        for graphed in ("graphed_tr_enc", "graphed_tr_dec", "graphed_encoder", "graphed_decoder"):
            wrapper = getattr(mimi_state, graphed, None)
            if wrapper is not None:
                wrapper.disable = True  # varying chunk shapes: never capture a graph for one rebuild
        self._scratch, self._stack = self._live(), stack

    def step(self) -> bool:
        """Run the next chunk (the caller holds the engine's tick lock); True once the slot is rebuilt."""
        if self.done:
            return True
        started = time.perf_counter()
        self.chunks += 1
        live = self._live()
        try:
            if self._scratch is None:
                self._open_scratch(live)
            else:
                assert self._scratch is not None
                self._install(self._scratch)
            with torch.no_grad():
                if self._work:
                    self._work.pop(0)()
                elif self._lm_done < self.lm_steps:
                    self._prefill_lm()
                else:
                    self._finish(live)
                    self.done = True
        finally:
            if not self.done:
                self._install(live)  # the live states go back whatever the chunk did
            took = time.perf_counter() - started
            self.compute_s += took
            self.longest_chunk_s = max(self.longest_chunk_s, took)
        return self.done

    def cancel(self) -> None:
        """Drop the scratch state (the caller holds the tick lock)."""
        if self._scratch is not None and self._stack is not None and not self.done:
            live = self._live()
            self._install(self._scratch)
            self._stack.close()
            self._install(live)
        self._scratch, self._stack, self.done = None, None, True

    # --- the work ----------------------------------------------------------------------------------------

    def _tensor(self, array: npt.NDArray[Any]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self._model.device)

    @staticmethod
    def _mimi_chunks(frames: int, run: Callable[[int, int], None]) -> list[Callable[[], None]]:
        return [
            functools.partial(run, start, min(frames, start + MIMI_CHUNK_FRAMES))
            for start in range(0, frames, MIMI_CHUNK_FRAMES)
        ]

    def _encode(self, start: int, end: int) -> None:
        audio = self.inputs.encoder_audio[start * FRAME_SAMPLES : end * FRAME_SAMPLES]
        self._model.mimi.encode(self._tensor(audio).reshape(1, 1, -1))

    def _decode(self, start: int, end: int) -> None:
        self._model.mimi.decode(self._tensor(self.inputs.decoder_codes[:, start:end])[None])

    def _prefill_lm(self) -> None:
        end = min(self.lm_steps, self._lm_done + LM_CHUNK_STEPS)
        chunk = self._tensor(self.inputs.lm_inputs[:, self._lm_done : end])[None]
        state = self._lm_gen._streaming_state
        assert state is not None
        self._model.lm.forward_text(chunk, state.condition_sum, state.condition_cross)
        self._lm_done = end

    def _finish(self, live: list[dict[str, Any]]) -> None:
        state = self._lm_gen._streaming_state
        assert state is not None and self._scratch is not None and self._stack is not None
        state.cache.copy_(self._tensor(self.inputs.ring)[None])
        state.offsets.fill_(self.window.steps)
        scratch = self._scratch
        for live_state, scratch_state in zip(live, scratch, strict=True):
            for name, dst in live_state.items():
                _copy_row(dst, scratch_state[name], self.slot, self._batch, set())
        self._stack.close()  # leaves the scratch streaming (sets the modules' states to None)
        self._install(live)
        self._scratch, self._stack = None, None
