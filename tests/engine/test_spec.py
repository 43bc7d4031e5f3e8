from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.engine.spec import ModelSpec, SamplingParams


def test_sampling_defaults_are_moshis() -> None:
    params = SamplingParams()
    assert (
        params.use_sampling,
        params.temp,
        params.temp_text,
        params.top_k,
        params.top_k_text,
        params.seed,
    ) == (
        True,
        0.8,
        0.7,
        250,
        25,
        42424242,
    )
    with pytest.raises(ValidationError):
        params.temp = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [{"hf_repo": "kyutai/moshiko-pytorch-bf16"}, {"local_dir": Path("/x")}, {"tiny_seed": 0}],
)
def test_one_source_is_accepted(kwargs: dict[str, object]) -> None:
    spec = ModelSpec.model_validate(kwargs)
    assert spec.device == "auto" and spec.dtype == "auto"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"hf_repo": "a/b", "tiny_seed": 1},
        {"local_dir": "/x", "tiny_seed": 1},
        {"local_dir": "/x", "revision": "v1"},
    ],
)
def test_sources_are_exclusive(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModelSpec.model_validate(kwargs)


def test_unknown_dtype_rejected() -> None:
    with pytest.raises(ValidationError):
        ModelSpec(tiny_seed=0, dtype="float16")  # type: ignore[arg-type]
