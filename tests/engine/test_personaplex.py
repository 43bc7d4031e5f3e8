"""Loading PersonaPlex checkpoints: config.json without an architecture, a 16-step depformer cut to the
agent's 8 steps (exactly: the agent's codes do not change), voices from voices.tgz or voices/, and errors
that name the missing file."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from moshi.models import loaders
from moshi.models.lm import LMGen
from safetensors import safe_open

from serve_app.engine import personaplex
from serve_app.engine.loader import CheckpointError, LoadedModel, load_model
from serve_app.engine.personaplex import lm_kwargs, pick_voice, wrap_system_tags
from serve_app.engine.spec import ModelSpec
from serve_app.engine.tiny import build_tiny_checkpoint
from serve_app.engine.tiny_persona import TINY_VOICES
from tests.engine.support import TINY_SEED
from tests.engine.test_loader import _fake_hf_cache, hf_cache  # noqa: F401  (a fixture)


def test_the_7b_config_gives_moshikos_kwargs_with_8_agent_steps() -> None:
    kwargs = lm_kwargs({"version": "7b-v1"})
    assert kwargs == {**loaders._lm_kwargs, "dep_q": 8}
    assert lm_kwargs({"version": "7b-v1", "depformer_causal": True, "dep_q": 16})["dep_q"] == 8


def test_tiny_checkpoint_has_the_real_layout(tiny_persona_dir: Path) -> None:
    config = json.loads((tiny_persona_dir / "config.json").read_text())
    assert config["model_type"] == "personaplex" and "dep_q" not in config and "n_q" not in config
    names = {p.name for p in tiny_persona_dir.iterdir()}
    assert {loaders.MOSHI_NAME, loaders.MIMI_NAME, loaders.TEXT_TOKENIZER_NAME, "voices.tgz"} <= names
    with safe_open(str(tiny_persona_dir / loaders.MOSHI_NAME), "pt") as handle:  # type: ignore[no-untyped-call]
        keys = set(handle.keys())
        fused = handle.get_slice("depformer.layers.0.self_attn.in_proj_weight").get_shape()
    assert {f"depformer_in.{i}.weight" for i in range(16)} <= keys and "depformer_emb.14.weight" in keys
    assert fused == [16 * 3 * 64, 64]  # 16 steps of fused q, k, v
    with tarfile.open(tiny_persona_dir / "voices.tgz") as archive:
        assert sorted(archive.getnames()) == sorted(f"voices/{name}.pt" for name in TINY_VOICES)


def test_tiny_checkpoint_is_deterministic(tiny_persona_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_checkpoint(tmp_path / "again", TINY_SEED, "personaplex")
    for path in sorted(tiny_persona_dir.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_loads_with_the_agent_steps_and_voices(tiny_persona: LoadedModel, tiny_persona_dir: Path) -> None:
    lm = tiny_persona.lm
    assert tiny_persona.model_type == "personaplex" and lm.dep_q == 8 and lm.n_q == 16
    assert len(lm.depformer_in) == 8 and len(lm.linears) == 8 and len(lm.depformer_emb) == 7
    assert tiny_persona.mimi.num_codebooks == 8
    assert {name: v.frames for name, v in tiny_persona.voices.items()} == TINY_VOICES
    voice = tiny_persona.voices["NATM1"]
    assert voice.embeddings.shape == (TINY_VOICES["NATM1"] - 1, lm.dim)
    assert voice.tail_codes.shape == (2, 8) and voice.tail_codes[0, 0] == personaplex.UNKNOWN
    with safe_open(str(tiny_persona_dir / loaders.MOSHI_NAME), "pt") as handle:  # type: ignore[no-untyped-call]
        fused = handle.get_tensor("depformer.layers.1.self_attn.in_proj_weight")
        weights = lm.state_dict()
        assert torch.equal(
            weights["depformer.layers.1.self_attn.in_projs.7.weight"], fused.view(16, -1, 64)[7]
        )
        assert torch.equal(weights["linears.7.weight"], handle.get_tensor("linears.7.weight"))
        assert "depformer.layers.1.self_attn.in_projs.8.weight" not in weights


def test_the_cut_depformer_samples_the_same_agent_codes(
    tiny_persona_dir: Path, tiny_persona: LoadedModel
) -> None:
    """The 16-step depformer's first 8 codes are the 8-step one's: the agent steps never see the user's."""
    with safe_open(str(tiny_persona_dir / loaders.MOSHI_NAME), "pt") as handle:  # type: ignore[no-untyped-call]
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    full = loaders.get_moshi_lm(
        None, lm_kwargs={**tiny_persona.config, "dep_q": 16}, device="cpu", dtype=torch.float32
    )
    full.load_state_dict(state)
    full.eval()
    generator = torch.Generator().manual_seed(0)
    transformer_out = torch.randn(4, 1, tiny_persona.lm.dim, generator=generator)
    text = torch.tensor([3, 0, 17, 40])
    cut = LMGen(tiny_persona.lm, use_sampling=False).depformer_step(text, transformer_out)
    whole = LMGen(full, use_sampling=False).depformer_step(text, transformer_out)
    assert whole.shape == (4, 16) and cut.shape == (4, 8)
    assert torch.equal(whole[:, :8], cut)


def test_voices_from_an_extracted_directory(tiny_persona_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_persona_dir, tmp_path / "ckpt"))
    with tarfile.open(copy / "voices.tgz") as archive:
        archive.extractall(copy, filter="data")
    (copy / "voices.tgz").unlink()
    (copy / "voices" / "NATF0.pt").unlink()
    model = load_model(ModelSpec(local_dir=copy, device="cpu"))
    assert sorted(model.voices) == ["NATM1", "VARF2"]


def test_missing_voices_are_named(tiny_persona_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_persona_dir, tmp_path / "ckpt"))
    (copy / "voices.tgz").unlink()
    with pytest.raises(CheckpointError, match=r"missing file .*voices\.tgz.*voice prompts"):
        load_model(ModelSpec(local_dir=copy, device="cpu"))


def test_missing_weights_are_named(tiny_persona_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_persona_dir, tmp_path / "ckpt"))
    (copy / loaders.MOSHI_NAME).unlink()
    with pytest.raises(CheckpointError, match=rf"missing file .*{loaders.MOSHI_NAME}.*moshi_name"):
        load_model(ModelSpec(local_dir=copy, device="cpu"))


def test_corrupt_voice_is_named(tiny_persona_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_persona_dir, tmp_path / "ckpt"))
    (copy / "voices.tgz").unlink()
    (copy / "voices").mkdir()
    (copy / "voices" / "BROKEN.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"BROKEN\.pt is not a PersonaPlex voice prompt"):
        load_model(ModelSpec(local_dir=copy, device="cpu"))


def test_from_the_hub_cache(tiny_persona_dir: Path, hf_cache: Path) -> None:  # noqa: F811
    _fake_hf_cache(hf_cache, "acme/tiny-personaplex", tiny_persona_dir)
    model = load_model(ModelSpec(hf_repo="acme/tiny-personaplex"))
    assert model.model_type == "personaplex" and sorted(model.voices) == sorted(TINY_VOICES)
    assert model.source == "acme/tiny-personaplex"


def test_tiny_seed_spec_builds_and_caches_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOSHI_REALTIME_CACHE", str(tmp_path))
    model = load_model(ModelSpec(tiny_seed=5, tiny_kind="personaplex", device="cpu"))
    assert model.model_type == "personaplex" and sorted(model.voices) == sorted(TINY_VOICES)
    assert any(p.name.startswith("personaplex-seed-5-") for p in (tmp_path / "tiny").iterdir())


def test_voice_names_and_role_text(tiny_persona: LoadedModel) -> None:
    assert pick_voice(tiny_persona.voices, "VARF2.pt").name == "VARF2"
    assert pick_voice(tiny_persona.voices, None).name == "NATF0"  # no NATF2 here: the first by name
    with pytest.raises(KeyError, match=r"unknown voice 'NATF9'; voices: NATF0, NATM1, VARF2"):
        pick_voice(tiny_persona.voices, "NATF9")
    assert wrap_system_tags("  be kind ") == "<system> be kind <system>"
    assert wrap_system_tags("<system> x <system>") == "<system> x <system>"
