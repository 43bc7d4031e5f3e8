import io
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import sentencepiece
import torch
from safetensors.torch import load_file

from serve_app.engine.loader import CheckpointError, LoadedModel, load_model
from serve_app.engine.spec import ModelSpec
from serve_app.engine.tiny import (
    FORMAT_VERSION,
    LM_NAME,
    MIMI_CONFIG_NAME,
    MIMI_NAME,
    TEXT_PADDING_ID,
    TOKENIZER_NAME,
)
from tests.engine.support import TINY_SEED


def _assert_same_weights(model: LoadedModel, directory: Path) -> None:
    lm_state, mimi_state = model.lm.state_dict(), model.mimi.state_dict()
    for key, value in load_file(directory / LM_NAME).items():
        assert torch.equal(lm_state[key], value), key
    for key, value in load_file(directory / MIMI_NAME).items():
        assert torch.equal(mimi_state[key], value), key


def test_local_dir_round_trip(tiny_dir: Path, tiny_model: LoadedModel) -> None:
    _assert_same_weights(tiny_model, tiny_dir)
    assert tiny_model.device == torch.device("cpu") and tiny_model.dtype == torch.float32  # auto on CPU
    assert not tiny_model.lm.training and not tiny_model.mimi.training
    assert tiny_model.tokenizer.vocab_size() == 128 and tiny_model.tokenizer.pad_id() == TEXT_PADDING_ID
    assert tiny_model.lm_gen_config == {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25}


def test_tiny_seed_spec_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOSHI_REALTIME_CACHE", str(tmp_path))
    model = load_model(ModelSpec(tiny_seed=TINY_SEED, dtype="bfloat16"))
    cached = tmp_path / "tiny" / f"seed-{TINY_SEED}-v{FORMAT_VERSION}"
    assert cached.is_dir()
    assert model.dtype == torch.bfloat16 and model.lm.text_emb.weight.dtype == torch.bfloat16


def _fake_hf_cache(cache: Path, repo: str, source: Path) -> Path:
    """The layout huggingface_hub writes: models--org--name/{snapshots/<commit>/..., refs/main}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return root / "snapshots" / commit


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # huggingface_hub reads these env vars at import; its constants are what hf_hub_download consults.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_hf_repo_from_offline_cache(tiny_dir: Path, hf_cache: Path) -> None:
    _fake_hf_cache(hf_cache, "acme/tiny-moshi", tiny_dir)
    model = load_model(ModelSpec(hf_repo="acme/tiny-moshi"))
    _assert_same_weights(model, tiny_dir)
    assert model.source == "acme/tiny-moshi"


def test_hf_repo_missing_file_is_named(tiny_dir: Path, hf_cache: Path) -> None:
    snapshot = _fake_hf_cache(hf_cache, "acme/tiny-moshi", tiny_dir)
    (snapshot / MIMI_NAME).unlink()
    with pytest.raises(CheckpointError, match=rf"{MIMI_NAME}.*mimi_name"):
        load_model(ModelSpec(hf_repo="acme/tiny-moshi"))


def test_hf_repo_not_cached(hf_cache: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json.*acme/absent"):
        load_model(ModelSpec(hf_repo="acme/absent"))


@pytest.fixture
def broken(tiny_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint to damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "broken"))


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("config.json", r"missing file .*config\.json"),
        (LM_NAME, rf"missing file .*{LM_NAME} \(config.json field 'moshi_name'\)"),
        (MIMI_NAME, rf"missing file .*{MIMI_NAME} \(config.json field 'mimi_name'\)"),
        (MIMI_CONFIG_NAME, rf"missing file .*{MIMI_CONFIG_NAME} \(config.json field 'mimi_config_name'\)"),
        (TOKENIZER_NAME, rf"missing file .*{TOKENIZER_NAME} \(config.json field 'tokenizer_name'\)"),
    ],
)
def test_missing_file(broken: Path, name: str, message: str) -> None:
    (broken / name).unlink()
    with pytest.raises(CheckpointError, match=message):
        load_model(ModelSpec(local_dir=broken))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(ModelSpec(local_dir=tmp_path / "nowhere"))


def test_config_dim_does_not_match_weights(broken: Path) -> None:
    _edit_json(broken / "config.json", dim=256)
    with pytest.raises(
        CheckpointError, match=rf"{LM_NAME} does not match config\.json \(dim=256.*shape mismatch"
    ):
        load_model(ModelSpec(local_dir=broken))


def test_config_n_q_does_not_match_weights(broken: Path) -> None:
    config = json.loads((broken / "config.json").read_text())
    _edit_json(broken / "config.json", n_q=14, delays=config["delays"][:-2])
    with pytest.raises(CheckpointError, match=r"n_q=14.*tensors the config has no place for, e\.g\. emb\.14"):
        load_model(ModelSpec(local_dir=broken))


def test_invalid_config(broken: Path) -> None:
    _edit_json(broken / "config.json", delays=[0, 1])
    with pytest.raises(CheckpointError, match=r"config\.json does not describe a valid Moshi LM"):
        load_model(ModelSpec(local_dir=broken))


def test_unreadable_config(broken: Path) -> None:
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: cannot read config"):
        load_model(ModelSpec(local_dir=broken))


def test_mimi_config_does_not_match_weights(broken: Path) -> None:
    config = json.loads((broken / MIMI_CONFIG_NAME).read_text())
    config["seanet"]["n_filters"] = 16
    (broken / MIMI_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=rf"{MIMI_NAME} does not match the Mimi config \(.*n_filters=16"
    ):
        load_model(ModelSpec(local_dir=broken))


def test_tokenizer_smaller_than_text_vocabulary(broken: Path) -> None:
    out = io.BytesIO()
    lines = [f"word{i} word{i * 7 % 13} thing{i % 5}" for i in range(300)]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=32,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    (broken / TOKENIZER_NAME).write_bytes(out.getvalue())
    with pytest.raises(
        CheckpointError, match=r"has 32 pieces but the LM's text vocabulary \(config.json text_card\) is 128"
    ):
        load_model(ModelSpec(local_dir=broken))


def test_corrupt_files(broken: Path) -> None:
    (broken / TOKENIZER_NAME).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable sentencepiece model"):
        load_model(ModelSpec(local_dir=broken))


def test_corrupt_weights(broken: Path) -> None:
    (broken / LM_NAME).write_bytes(b"\x01")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(ModelSpec(local_dir=broken))
