"""Prompt frames (PersonaPlex's voice + role text) and their one-pass prefill into a live batch row.

A prompt is teacher-forced frames before the dialogue: every input of every frame is known in advance.
Moshi's LM reads one row of K tokens per position (text, dep_q agent codebooks, the user's codebooks) and
stream k of frame f sits at position f + delay_k (the initial token where position <= delay_k). LMGen's
step o consumes row o and writes what it generates (text, agent audio) at position o + 1, the user codes
it is given at o + delay_k. A prompt of N frames is N such steps, all forced: the text and agent audio of
positions 1..N (position N, just past the prompt, holds PAD and silence codes), the user codes of frames
0..N-1. The reference (NVIDIA/personaplex `step_system_prompts`) runs them one 80 ms step at a time, the
depformer included; here the temporal transformer runs over all N rows in a few causal chunks (positions
from 0, the depformer skipped: every output is forced), and LMGen's ring is written as the N steps leave it.

A packaged voice's rows are not tokens but summed input embeddings (personaplex.py): the voice's first
frames enter the transformer as those vectors.

`PromptPrefill` follows the discipline of serve_app/engine/rebuild.py: a scratch batch-of-one state
(swapped in for each chunk on the tick thread, swapped out after), then the result is put into the slot's
row of the live state in place. Its scratch KV cache holds only the prompt's positions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from moshi.models.lm import LMGen, LMModel
from moshi.modules.transformer import StreamingTransformer

from serve_app.engine import personaplex
from serve_app.engine.personaplex import VoicePrompt
from serve_app.engine.prompt_cache import PromptCache, PromptKey, PromptState, self_attentions
from serve_app.engine.rebuild import LM_CHUNK_STEPS

__all__ = [
    "PromptFrames",
    "PromptPlan",
    "PromptPrefill",
    "embed_rows",
    "persona_frames",
    "persona_plan",
    "plan_prompt",
    "step_framewise",
]

UNKNOWN = personaplex.UNKNOWN
FRAMEWISE_CHUNK_STEPS = 4
"""Full batch steps per chunk of a frame-by-frame prompt: each costs about a tick."""


@dataclass(frozen=True)
class PromptFrames:
    """The prompt's frames, undelayed: what each stream carries at each 80 ms frame."""

    text: npt.NDArray[np.int64]
    """[N] text token per frame."""
    agent: npt.NDArray[np.int64]
    """[N, dep_q] the model's own audio codes (UNKNOWN inside a voice given as embeddings)."""
    user: npt.NDArray[np.int64]
    """[N, n_q - dep_q] the user's audio codes."""
    voice: VoicePrompt | None = None
    """Its embeddings replace the rows of positions 0..voice.frames - 2."""


def persona_frames(
    voice: VoicePrompt | None, role_ids: list[int], *, pad: int, silence_frames: int = 6
) -> PromptFrames:
    """PersonaPlex's prompt: voice, silence, `<system> ... <system>` one token per frame, silence.

    Text is PAD except the role tokens; the agent plays the voice, then silence codes; the user is a sine."""
    voiced = voice.frames if voice is not None else 0
    total = voiced + 2 * silence_frames + len(role_ids)
    text = np.full(total, pad, np.int64)
    text[voiced + silence_frames : voiced + silence_frames + len(role_ids)] = role_ids
    agent = np.tile(np.array(personaplex.SILENCE_CODES, np.int64), (total, 1))
    if voice is not None:
        agent[:voiced] = UNKNOWN
        agent[voiced - 2 : voiced] = voice.tail_codes
    user = np.tile(np.array(personaplex.SINE_CODES, np.int64), (total, 1))
    return PromptFrames(text, agent, user, voice)


@dataclass(frozen=True)
class PromptPlan:
    """Everything the N forced steps consume and leave, derived from the frames (numpy, no model state)."""

    key: PromptKey
    rows: npt.NDArray[np.int64]
    """[N, K]: the row step o consumes (UNKNOWN in the rows given as embeddings)."""
    embeddings: torch.Tensor | None
    """[E, D]: the inputs of steps 0..E-1 (a voice), in the LM's dtype and device."""
    forced: npt.NDArray[np.int64]
    """[N, 1 + dep_q]: the text and agent tokens step o writes at position o + 1 (delays applied)."""
    user: npt.NDArray[np.int64]
    """[N, n_q - dep_q]: the user codes given to step o."""
    ring: npt.NDArray[np.int64]
    """[K, max_delay + 2]: LMGen's delayed-token ring after the N steps."""

    @property
    def steps(self) -> int:
        return int(self.rows.shape[0])

    @property
    def embedded(self) -> int:
        return 0 if self.embeddings is None else int(self.embeddings.shape[0])


def plan_prompt(lm: LMModel, frames: PromptFrames, key: PromptKey) -> PromptPlan:
    """Lay the frames out on positions exactly as LMGen would write and read them over N steps."""
    delays = [int(d) for d in lm.delays]
    dep_q, k_total = int(lm.dep_q), len(delays)
    count = int(frames.text.shape[0])
    if count < 1:
        raise ValueError("a prompt needs at least one frame")
    context = max((int(a.context or 0) for a in self_attentions(lm.transformer)), default=0)
    if context and count > context:
        raise ValueError(f"a prompt of {count} frames does not fit the LM's context of {context}")
    # Frame N, just past the prompt: PAD and silence for the model (the user's is never read).
    silence = np.array(personaplex.SILENCE_CODES, np.int64)
    last_agent = silence if dep_q == silence.size else frames.agent[-1]
    past = np.concatenate([[lm.text_padding_token_id], last_agent, frames.user[-1]])
    table_frames = np.concatenate(
        [np.concatenate([frames.text[:, None], frames.agent, frames.user], axis=1), past[None]]
    ).astype(np.int64)
    initial = lm._get_initial_token().reshape(-1).cpu().numpy()
    table = np.empty_like(table_frames)  # [N + 1, K]: position p, stream k = frame p - delay_k
    for k, delay in enumerate(delays):
        table[: delay + 1, k] = initial[k]
        table[delay + 1 :, k] = table_frames[1 : count + 1 - delay, k]
    ring_size = max(delays) + 2
    ring = np.full((k_total, ring_size), int(lm.ungenerated_token_id), np.int64)
    for step in range(max(0, count - ring_size - 1), count):
        ring[: 1 + dep_q, (step + 1) % ring_size] = table[step + 1, : 1 + dep_q]
        for k in range(1 + dep_q, k_total):
            ring[k, (step + delays[k]) % ring_size] = frames.user[step, k - 1 - dep_q]
    embeddings = None if frames.voice is None else frames.voice.embeddings
    embedded = 0 if embeddings is None else int(embeddings.shape[0])
    rows = table[:count].copy()
    if (rows[embedded:] == UNKNOWN).any() or (ring == UNKNOWN).any():
        raise ValueError("the prompt leaves unknown tokens where the LM reads them")
    forced = table[1 : count + 1, : 1 + dep_q].copy()
    forced[forced == UNKNOWN] = 0  # written by steps whose successors read embeddings: never read
    return PromptPlan(key, rows, embeddings, forced, frames.user.copy(), ring)


def persona_plan(
    lm: LMModel,
    tokenizer: Any,
    voices: dict[str, VoicePrompt],
    *,
    voice: str | None,
    instructions: str | None,
    model_key: str,
) -> PromptPlan:
    """The plan of a PersonaPlex session: `voice` by name (None: the default), `instructions` as role text
    (None or blank: no role text). KeyError names an unknown voice and lists the voices."""
    chosen = personaplex.pick_voice(voices, voice)
    role = instructions.strip() if instructions else ""
    ids = [int(i) for i in tokenizer.encode(personaplex.wrap_system_tags(role))] if role else []
    frames = persona_frames(chosen, ids, pad=int(lm.text_padding_token_id))
    return plan_prompt(lm, frames, (model_key, chosen.name, role))


# --- the LM's input ----------------------------------------------------------------------------------------


def embed_rows(lm: LMModel, rows: torch.Tensor) -> torch.Tensor:
    """[B, K, T] tokens -> [B, T, D] summed input embeddings, in `LMModel.forward_text`'s order (so a row
    embedded here is bit-identical to the one LMGen's step builds)."""
    summed: torch.Tensor | None = None
    for index in range(lm.num_audio_codebooks):
        audio: torch.Tensor = lm.emb[index](rows[:, index + lm.audio_offset])
        summed = audio if summed is None else summed + audio
    text: torch.Tensor = lm.text_emb(rows[:, 0])
    return text if summed is None else summed + text


def forward_embeddings(lm: LMModel, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`LMModel.forward_text` from input embeddings [B, T, D] instead of tokens."""
    out = lm.transformer(inputs)
    if lm.out_norm:
        out = lm.out_norm(out)
    return out, lm.text_linear(out)[:, None]


def _step_inputs(lm: LMModel, plan: PromptPlan, start: int, end: int) -> torch.Tensor:
    rows = np.where(plan.rows[start:end] == UNKNOWN, 0, plan.rows[start:end])
    tokens = torch.from_numpy(np.ascontiguousarray(rows.T)).to(lm.device)[None]
    inputs = embed_rows(lm, tokens)
    if plan.embeddings is not None and start < plan.embedded:
        inputs[0, : min(end, plan.embedded) - start] = plan.embeddings[start : min(end, plan.embedded)]
    return inputs


@torch.no_grad()
def step_framewise(
    lm_gen: LMGen,
    plan: PromptPlan,
    *,
    row: int = 0,
    start: int = 0,
    end: int | None = None,
    run_depformer: bool = False,
) -> None:
    """The reference: teacher-force steps [start, end) of the plan through a streaming LMGen, one step per
    frame, for one row of its batch (the others masked): text through `on_text_hook`, agent audio through
    `depformer_replace_tokens`, embedding rows fed in place of the gathered tokens. Step 0 resets the row.
    With `run_depformer` the depformer runs, as the reference's does, and only the text is forced (its
    audio is then sampled: only the timing compares). The caller owns the exec mask afterwards."""
    state, lm = lm_gen._streaming_state, lm_gen.lm_model
    assert state is not None
    batch, device = state.batch_size, lm.device
    mask = torch.zeros(batch, dtype=torch.bool, device=device)
    mask[row] = True
    if start == 0:
        lm_gen.reset_streaming(mask)
    lm_gen.set_exec_mask(mask)
    text = torch.zeros(1, dtype=torch.long, device=device)
    graphed, hook = state.graphed_main, lm_gen.on_text_hook

    def force(token: torch.Tensor) -> None:
        token[row : row + 1].copy_(text)

    lm_gen.on_text_hook = force
    try:
        for step in range(start, plan.steps if end is None else end):
            text.fill_(int(plan.forced[step, 0]))
            agent = torch.from_numpy(plan.forced[step, 1:]).to(device)[None, :, None].expand(batch, -1, -1)
            user = torch.from_numpy(plan.user[step]).to(device)[None, :, None].expand(batch, -1, -1)
            if step < plan.embedded:
                assert plan.embeddings is not None
                inputs = plan.embeddings[step][None, None].expand(batch, -1, -1)
                state.graphed_main = lambda *_args, x=inputs: forward_embeddings(lm, x)  # type: ignore[assignment]
            else:
                state.graphed_main = graphed
            lm_gen.step(user, depformer_replace_tokens=None if run_depformer else agent)
    finally:
        state.graphed_main, lm_gen.on_text_hook = graphed, hook


# --- the one-pass prefill ----------------------------------------------------------------------------------


@contextmanager
def _kv_capacity(transformer: StreamingTransformer, capacity: int) -> Iterator[None]:
    """Streaming states created meanwhile get KV rings of `capacity` positions (not the LM's context).
    The attention mask still uses the real context: a prompt shorter than it never reaches it."""
    attentions = self_attentions(transformer)
    contexts = [a.context for a in attentions]
    try:
        for attention in attentions:
            attention.context = capacity
        yield
    finally:
        for attention, context in zip(attentions, contexts, strict=True):
            attention.context = context


class PromptPrefill:
    """One slot's prompt, put into its row a chunk at a time by `step()` on the engine's tick thread: the
    cached state on a hit (one step), else chunked forwards in a scratch state, then captured (and cached).

    `framewise` instead steps the prompt one frame at a time through the live LMGen for the slot's row (the
    reference's way, for comparison: FRAMEWISE_CHUNK_STEPS full batch steps per chunk, never cached)."""

    def __init__(
        self,
        lm: LMModel,
        lm_gen: LMGen,
        slot: int,
        plan: PromptPlan,
        cache: PromptCache | None = None,
        *,
        framewise: bool = False,
    ) -> None:
        if lm_gen.cfg_coef != 1.0 or lm.fuser is not None:
            raise ValueError("prompts need an LM without conditioning or classifier-free guidance")
        self._lm, self._lm_gen, self.slot, self.plan = lm, lm_gen, slot, plan
        self.framewise = framewise
        self._cache = None if framewise else cache
        self.state: PromptState | None = self._cache.get(plan.key) if self._cache is not None else None
        self.cache_hit = self.state is not None
        self._scratch: dict[str, Any] | None = None
        self._stack: ExitStack | None = None
        self._done_steps = 0
        self.started = time.perf_counter()
        self.compute_s = 0.0
        """Time spent in the prefill's own chunks (excluding the live ticks between them)."""
        self.chunks = 0
        self.longest_chunk_s = 0.0
        self.done = False

    @property
    def lm_steps(self) -> int:
        return self.plan.steps

    def _swap(self, states: dict[str, Any]) -> dict[str, Any]:
        transformer = self._lm.transformer
        current = transformer.get_streaming_state()
        transformer.set_streaming_state(states)
        return current

    def step(self) -> bool:
        """Run the next chunk (the caller holds the tick lock); True once the row holds the prompt."""
        if self.done:
            return True
        started = time.perf_counter()
        self.chunks += 1
        try:
            with torch.no_grad():
                if self.framewise:
                    end = min(self.plan.steps, self._done_steps + FRAMEWISE_CHUNK_STEPS)
                    step_framewise(self._lm_gen, self.plan, row=self.slot, start=self._done_steps, end=end)
                    self._done_steps = end
                    self.done = end == self.plan.steps
                elif self.state is None:
                    self._forward_chunk()
                if self.state is not None:
                    self.state.install(self._lm.transformer, self._lm_gen, self.slot)
                    self.done = True
        finally:
            took = time.perf_counter() - started
            self.compute_s += took
            self.longest_chunk_s = max(self.longest_chunk_s, took)
        return self.done

    def _forward_chunk(self) -> None:
        transformer = self._lm.transformer
        if self._scratch is None:
            live = self._swap(dict.fromkeys(transformer.get_streaming_state()))
            try:
                with _kv_capacity(transformer, self.plan.steps):
                    self._stack = transformer.streaming(1)
            except BaseException:
                self._swap(live)
                raise
            self._scratch = transformer.get_streaming_state()
        else:
            live = self._swap(self._scratch)
        try:
            end = min(self.plan.steps, self._done_steps + LM_CHUNK_STEPS)
            transformer(_step_inputs(self._lm, self.plan, self._done_steps, end))
            self._done_steps = end
            if end == self.plan.steps:
                self.state = PromptState.capture(transformer, self.plan.ring, end)
                self._close_scratch()
                if self._cache is not None:
                    self._cache.put(self.plan.key, self.state)
        finally:
            self._swap(live)

    def _close_scratch(self) -> None:
        if self._stack is not None:
            self._stack.close()  # sets the transformer's states to None
        self._scratch, self._stack = None, None

    def cancel(self) -> None:
        """Drop the scratch state (the caller holds the tick lock)."""
        if self._scratch is not None and not self.done:
            live = self._swap(self._scratch)
            self._close_scratch()
            self._swap(live)
        self._scratch, self._stack, self.done = None, None, True
