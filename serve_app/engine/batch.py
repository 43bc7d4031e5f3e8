"""B independent Moshi sessions in lockstep: one Mimi encode, one LMGen step, one Mimi decode per tick.

Follows the verified recipe of docs/ENGINE_FACTS.md ("The tick"): per-slot reset masks, exec masks for slots
without a frame (paused, never fed invented silence), -2 placeholder rows clamped before decode.
A text-only model (Kyutai STT: dep_q 0) runs the same tick without the decode: its frames carry text and
no audio, one per input frame, after the checkpoint's silence prefix (stepped, never returned).
A Moshi slot's frames also carry each step's record (serve_app/engine/history.py); a slot opened with a
`ResumeWindow` is rebuilt from them (serve_app/engine/rebuild.py) before it steps again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from moshi.models.lm import LMGen

from serve_app.constants import FRAME_S, FRAME_SAMPLES
from serve_app.engine.errors import NoFreeSlot, RebuildFailed
from serve_app.engine.forced_text import ForcedText
from serve_app.engine.history import HistorySpec, ResumeWindow
from serve_app.engine.loader import LoadedModel
from serve_app.engine.port import EngineFrame
from serve_app.engine.prompt import PromptPlan, PromptPrefill
from serve_app.engine.prompt_cache import PromptCache
from serve_app.engine.rebuild import SlotRebuild, history_spec
from serve_app.engine.spec import SamplingParams

logger = logging.getLogger(__name__)

__all__ = ["BatchedEngine", "NoFreeSlot", "text_pieces"]

_Mask = npt.NDArray[np.bool_]
_NO_PCM = np.zeros(0, np.float32)
_NO_PCM.flags.writeable = False
_NO_RECORDS = np.zeros((0, 0), np.int32)
_NO_RECORDS.flags.writeable = False

WARMUP_TICKS = 5
"""Enough for CUDAGraphed (1 eager call, then capture) to have captured encode, step and decode."""


@dataclass
class _Slot:
    open: bool = False
    generation: int = 0
    """Bumped on every open, so output of a tick that raced a close/reopen is dropped."""
    starting: bool = False
    """The session's first frame is still to come: reset its rows on the tick that steps it."""
    frames: deque[npt.NDArray[np.float32]] = field(default_factory=deque)
    due: deque[float] = field(default_factory=deque)
    """When each queued frame is due on the real-time schedule (monotonic s), parallel to `frames`."""
    last_due: float = float("-inf")
    partial: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    hidden: int = 0
    """Queued frames whose output is not returned (the silence prefix of an STT stream)."""
    rebuilding: bool = False
    """The slot's state is being rebuilt: its queued frames wait (not stepped, not late)."""
    records: list[npt.NDArray[np.int32]] = field(default_factory=list)
    """Records of the steps not yet attached to a returned frame."""
    prompted: bool = False
    """Its LM row holds a prompt (serve_app/engine/prompt.py): its first tick resets Mimi's rows only."""

    def clear(self) -> None:
        self.rebuilding = self.prompted = False
        self.records.clear()
        self.frames.clear()
        self.due.clear()
        self.last_due = float("-inf")
        self.partial = np.zeros(0, np.float32)
        self.hidden = 0


def text_pieces(tokenizer: Any, size: int, silent_ids: set[int]) -> list[str | None]:
    """Text for each token id: the piece with "▁" as a space, None for padding and non-pieces."""
    vocab = int(tokenizer.vocab_size())
    pieces: list[str | None] = []
    for token in range(size):
        special = token in silent_ids or token >= vocab
        if (
            special
            or tokenizer.is_control(token)
            or tokenizer.is_unknown(token)
            or tokenizer.is_unused(token)
        ):
            pieces.append(None)
        else:
            pieces.append(str(tokenizer.id_to_piece(token)).replace("▁", " "))
    return pieces


class BatchedEngine:
    """Fixed number of slots over one Mimi + one LMGen; `tick()` steps every slot that has a full frame.

    `push` and the slot calls may come from any thread; `tick` runs on one (the runner's).
    """

    def __init__(self, model: LoadedModel, *, slots: int, sampling: SamplingParams) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._model = model
        self._sampling = sampling
        self._slots = [_Slot() for _ in range(slots)]
        self._lock = threading.Lock()  # slot table and audio buffers
        self._tick_lock = threading.Lock()  # model streaming state: one tick at a time
        lm = model.lm
        self.scripts = ForcedText.for_model(lm, model.tokenizer, slots)
        """Scripted speech (serve_app/engine/forced_text.py): `scripts.start(slot, text)`, `.cancel(slot)`."""
        self.prompt_cache = PromptCache()
        self._lm_gen = LMGen(
            model.lm,
            **sampling.lm_gen_kwargs(),
            support_out_of_sync=True,  # otherwise one slot's reset blanks a step for every slot
            on_text_hook=self.scripts,
        )
        self._pieces = text_pieces(
            model.tokenizer,
            max(lm.text_card, lm.text_linear.out_features) + 1,
            {lm.text_padding_token_id, lm.end_of_text_padding_id},
        )
        self._streams = ExitStack()
        try:
            with torch.no_grad():
                self._streams.enter_context(model.mimi.streaming(slots))
                self._streams.enter_context(self._lm_gen.streaming(slots))
        except BaseException:
            # e.g. out of memory while allocating KV caches: moshi leaves the half-built states attached,
            # and the model could never stream again. Detach them all.
            self._streams.close()
            for module in (self._lm_gen, model.lm, model.mimi):
                module._stop_streaming()
            raise
        self._audio = np.zeros((slots, 1, FRAME_SAMPLES), np.float32)
        self.text_only = model.text_only
        prefix_s = (
            float(model.stt_config.get("audio_silence_prefix_seconds", 0.0)) if model.text_only else 0.0
        )
        self._prefix_frames = round(prefix_s / FRAME_S)
        self.text_delay_s = (
            float(model.stt_config.get("audio_delay_seconds", 0.0)) if model.text_only else 0.0
        )
        """How far a text-only model's text trails the audio it transcribes (s)."""
        self.history_spec: HistorySpec | None = None if model.text_only else history_spec(model)
        """How much history a slot needs to be rebuilt (None: a text-only model's cannot be)."""
        self._rebuilds: dict[int, SlotRebuild | PromptPrefill] = {}
        self._cancelled: list[SlotRebuild | PromptPrefill] = []
        """Rebuilds of slots closed meanwhile: their scratch states are dropped on the tick thread."""
        self.last_tokens: dict[int, npt.NDArray[np.int64]] = {}
        """Per slot stepped validly in the last tick: [text, audio codes...] (for tests and diagnostics)."""
        self.ready = False
        self._closed = False
        # Sampling draws from torch's global RNG (moshi passes no generator), shared by every engine in the
        # process; a session's samples depend on its co-tenants anyway. Seeding makes a new engine repeatable.
        torch.manual_seed(sampling.seed)

    # --- slots ---------------------------------------------------------------------------------------------

    @property
    def slots_total(self) -> int:
        return len(self._slots)

    @property
    def slots_used(self) -> int:
        with self._lock:
            return sum(slot.open for slot in self._slots)

    def open_slot(self, resume: ResumeWindow | None = None) -> int:
        """Take a free slot for a new session, or, with `resume`, for one that stepped elsewhere before:
        the slot is rebuilt from the window (`rebuild_step`) and steps its queued input afterwards."""
        if resume is not None and self.history_spec is None:
            raise ValueError("a text-only model's slots cannot be rebuilt")
        with self._lock:
            free = [index for index, slot in enumerate(self._slots) if not slot.open]
            if not free:
                raise NoFreeSlot(f"all {len(self._slots)} slots are in use")
            index = free[0]
            slot = self._slots[index]
            slot.open = True
            slot.generation += 1
            slot.clear()
            if resume is None or resume.steps == 0:
                slot.starting = True
                self._queue_prefix(slot)
                return index
            slot.starting, slot.rebuilding = False, True
        try:
            job = SlotRebuild(self._model, self._lm_gen, index, len(self._slots), resume)
        except BaseException:
            self.close_slot(index)
            raise
        with self._lock:
            self._rebuilds[index] = job
        return index

    def _queue_prefix(self, slot: _Slot) -> None:
        """The STT checkpoint's leading silence, due at once (stepped as catch-up, output dropped)."""
        now = time.monotonic()
        for index in range(self._prefix_frames):
            slot.frames.append(np.zeros(FRAME_SAMPLES, np.float32))
            slot.last_due = now - (self._prefix_frames - index) * FRAME_S
            slot.due.append(slot.last_due)
        slot.hidden = self._prefix_frames

    def close_slot(self, slot: int) -> None:
        """Free the slot (idempotent). Its rows are reset when the slot's next session starts."""
        with self._lock:
            state = self._slot(slot)
            state.open = False
            state.clear()
            self.scripts.cancel(slot)
            job = self._rebuilds.pop(slot, None)
            if job is not None:
                self._cancelled.append(job)

    # --- rebuilding --------------------------------------------------------------------------------------

    @property
    def rebuilding(self) -> bool:
        """Some slot is being rebuilt (or a cancelled rebuild waits to be dropped)."""
        with self._lock:
            return bool(self._rebuilds or self._cancelled)

    def start_prompt(self, slot: int, plan: PromptPlan, *, framewise: bool = False) -> PromptPrefill:
        """Prefill a slot that has not stepped with a prompt (serve_app/engine/prompt.py), cached by
        `plan.key`, in chunks by `rebuild_step` between ticks; its queued input waits meanwhile."""
        with self._lock:
            state = self._slot(slot)
            if self.text_only or not state.open or not state.starting or state.rebuilding:
                raise ValueError(f"slot {slot} cannot take a prompt: closed, already stepped or busy")
            state.rebuilding = True
            job = self._rebuilds[slot] = PromptPrefill(
                self._model.lm, self._lm_gen, slot, plan, self.prompt_cache, framewise=framewise
            )
        return job

    def rebuild_step(self) -> SlotRebuild | None:
        """Run one chunk of the oldest rebuild or prompt (on the tick thread, between ticks). Returns a
        rebuild once complete (a prompt: None); its slot steps from the next tick on. Raises RebuildFailed."""
        with self._tick_lock:
            with self._lock:
                cancelled, self._cancelled = self._cancelled, []
                job = next(iter(self._rebuilds.values()), None)
            for stale in cancelled:
                stale.cancel()
            if job is None:
                return None
            try:
                done = job.step()
            except Exception as exc:
                job.cancel()
                with self._lock:
                    self._rebuilds.pop(job.slot, None)
                raise RebuildFailed(job.slot, f"rebuilding the slot failed: {exc}") from exc
            if not done:
                return None
            with self._lock:
                if self._rebuilds.get(job.slot) is job:
                    del self._rebuilds[job.slot]
                    self._slots[job.slot].rebuilding = False
                    self._slots[job.slot].prompted = isinstance(job, PromptPrefill)
            return job if isinstance(job, SlotRebuild) else None

    def push(self, slot: int, pcm: npt.NDArray[np.float32], now: float | None = None) -> int:
        """Queue 24 kHz mono audio of any length; it is cut into 1920-sample frames for the ticks.

        Returns the number of whole frames queued. Each frame is due on the session's real-time schedule:
        when it arrived, but never sooner than one frame period after the previous one (a client sending
        ahead of real time is not late when its frames wait).
        """
        arrived = time.monotonic() if now is None else now
        samples = np.asarray(pcm, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono audio of shape [n], got {samples.shape}")
        with self._lock:
            state = self._slot(slot)
            if not state.open:
                raise ValueError(f"slot {slot} is not open")
            data = np.concatenate([state.partial, samples]) if state.partial.size else samples
            whole = data.size - data.size % FRAME_SAMPLES
            for start in range(0, whole, FRAME_SAMPLES):
                state.frames.append(data[start : start + FRAME_SAMPLES].copy())
                state.last_due = max(arrived, state.last_due + FRAME_S)
                state.due.append(state.last_due)
            state.partial = data[whole:].copy()
            return whole // FRAME_SAMPLES

    def queued_frames(self, slot: int) -> int:
        with self._lock:
            return len(self._slot(slot).frames)

    def lateness(self, now: float | None = None) -> dict[int, float]:
        """Per open slot with queued input: how far its oldest frame is past its due time (s, ≥ 0 late)."""
        at = time.monotonic() if now is None else now
        with self._lock:
            return {
                i: at - s.due[0] for i, s in enumerate(self._slots) if s.open and s.due and not s.rebuilding
            }

    def _slot(self, slot: int) -> _Slot:
        if not 0 <= slot < len(self._slots):
            raise ValueError(f"no slot {slot}: this engine has {len(self._slots)}")
        return self._slots[slot]

    # --- stepping ------------------------------------------------------------------------------------------

    def tick(self) -> dict[int, EngineFrame]:
        """Step every open slot that has a full frame queued; return the frames produced this tick."""
        with self._tick_lock:
            if self._closed:
                raise RuntimeError("engine is closed")
            active, starting, prompted = (np.zeros(len(self._slots), bool) for _ in range(3))
            generations: dict[int, int] = {}
            with self._lock:
                for index, slot in enumerate(self._slots):
                    if slot.open and slot.frames and not slot.rebuilding:
                        self._audio[index, 0] = slot.frames.popleft()
                        slot.due.popleft()
                        active[index], starting[index], prompted[index] = True, slot.starting, slot.prompted
                        slot.starting = False
                        if slot.hidden:
                            slot.hidden -= 1
                        else:
                            generations[index] = slot.generation
            if not active.any():
                return {}
            self.scripts.active = active
            tokens, pcm, records = self._step(active, starting, starting & ~prompted)
            frames: dict[int, EngineFrame] = {}
            self.last_tokens = {}
            checked = 0 if self.text_only else 1  # the column that is -2 while nothing was generated
            with self._lock:
                for index, generation in generations.items():
                    slot = self._slots[index]
                    if not slot.open or slot.generation != generation:
                        continue
                    if records is not None:
                        slot.records.append(records[index])
                    script = self.scripts.emitted(index)
                    if tokens[index, checked] < 0:
                        continue
                    if pcm is None and not self.text_only:
                        continue
                    text = self._piece(int(tokens[index, 0])) if script is None else script.text
                    audio = _NO_PCM if pcm is None else pcm[index].copy()
                    history = np.stack(slot.records) if slot.records else _NO_RECORDS
                    slot.records.clear()
                    frames[index] = EngineFrame(
                        pcm=audio, text=text, speaking=text is not None, history=history,
                        scripted=script is not None, script_done=script is not None and script.done,
                    )  # fmt: skip
                    self.last_tokens[index] = tokens[index].copy()
            return frames

    def _piece(self, token: int) -> str | None:
        return self._pieces[token] if 0 <= token < len(self._pieces) else None

    def _step(
        self, active_np: _Mask, starting_np: _Mask, lm_reset_np: _Mask | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32] | None, npt.NDArray[np.int32] | None]:
        """docs/ENGINE_FACTS.md "The tick", steps 1-5.

        Returns tokens [B, 1+dep_q] (-2 where not generated), pcm [B, N] (None when nothing was decoded,
        always for a text-only model), and each row's record [B, K] (None for a text-only model).
        """
        mimi, lm_gen, device = self._model.mimi, self._lm_gen, self._model.device
        any_start = bool(starting_np.any())
        with torch.no_grad():
            active = torch.from_numpy(active_np).to(device)
            starting = torch.from_numpy(starting_np).to(device)
            audio = torch.from_numpy(self._audio).to(device)
            if any_start:
                mimi.reset_streaming(starting)
                lm_gen.reset_streaming(starting if lm_reset_np is None else torch.from_numpy(lm_reset_np))
            mimi.set_exec_mask(active)
            codes = mimi.encode(audio)  # idle rows hold stale audio but are masked: their state does not move
            if any_start and not self.text_only:
                # The first encoded frame carries the encoder's left padding; the stock server drops it the
                # same way (reset Mimi after the first encode), per slot here. Kyutai's STT loops do not
                # (their silence prefix absorbs it), so a text-only model keeps the state.
                mimi.reset_streaming(starting)
            lm_gen.set_exec_mask(active)
            out = lm_gen.step(codes)
            assert out is not None  # support_out_of_sync never returns None
            pcm: torch.Tensor | None = None
            if self.text_only:
                return out[:, :, 0].cpu().numpy(), None, None
            records = self._records(codes)
            valid = active & (out[:, 1, 0] >= 0)
            if bool(valid.any()):
                mimi.set_exec_mask(valid)
                pcm = mimi.decode(out[:, 1:].clamp(min=0))
            tokens = out[:, :, 0].cpu().numpy()
            return tokens, None if pcm is None else pcm[:, 0].float().cpu().numpy(), records

    def _records(self, codes: torch.Tensor) -> npt.NDArray[np.int32]:
        """This step's record per row: the tokens LMGen just sampled (as written to its ring, before the
        delays are undone), then the input codes (serve_app/engine/rebuild.py)."""
        state = self._lm_gen._streaming_state
        assert state is not None
        generated = self._model.lm.dep_q + 1
        ring = state.cache.shape[2]
        position = (state.offsets % ring)[:, None, None].expand(-1, generated, 1)
        sampled = state.cache[:, :generated].gather(2, position)[:, :, 0]
        needed = self._model.lm.num_codebooks - generated
        return torch.cat([sampled, codes[:, :needed, 0]], dim=1).to(torch.int32).cpu().numpy()

    def warmup(self) -> None:
        """Run a few full-batch ticks (captures CUDA graphs on GPU), then reset every row and reseed."""
        with self._tick_lock:
            with self._lock:
                if any(slot.open for slot in self._slots):
                    raise RuntimeError("warmup needs an idle engine")
            everyone = np.ones(len(self._slots), bool)
            rng = np.random.default_rng(0)
            for index in range(WARMUP_TICKS):
                self._audio[:] = rng.standard_normal(self._audio.shape).astype(np.float32) * 0.05
                self._step(everyone, everyone if index == 0 else ~everyone)
            with torch.no_grad():
                self._model.mimi.reset_streaming()
                self._lm_gen.reset_streaming()
            if self._model.device.type == "cuda":
                torch.cuda.synchronize(self._model.device)
            self._audio[:] = 0.0
            torch.manual_seed(self._sampling.seed)
            self.ready = True
        logger.info("engine warmed up: %d slots on %s", len(self._slots), self._model.device)

    def close(self) -> None:
        """Leave streaming mode so the model can be reused (e.g. by another engine in a benchmark)."""
        with self._tick_lock:
            if not self._closed:
                self._closed = True
                self.ready = False
                self._streams.close()

    def __enter__(self) -> BatchedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
