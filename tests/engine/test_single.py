import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.loader import LoadedModel
from serve_app.engine.single import SingleStream
from serve_app.engine.spec import SamplingParams
from tests.engine.support import noise


def test_single_stream_steps_like_the_stock_server(tiny_model: LoadedModel) -> None:
    frames = noise(4, seed=0).reshape(4, FRAME_SAMPLES)
    with SingleStream(tiny_model, SamplingParams(use_sampling=False)) as stream:
        outputs = [stream.step(frame) for frame in frames]
        assert outputs[0] is None  # moshi's acoustic delay: nothing on a session's first step
        for out in outputs[1:]:
            assert out is not None
            tokens, pcm = out
            assert tokens.shape == (9,) and (tokens[1:] >= 0).all() and pcm.shape == (FRAME_SAMPLES,)
        stream.reset()
        again = [stream.step(frame) for frame in frames]
    for first, second in zip(outputs[1:], again[1:], strict=True):
        assert first is not None and second is not None
        np.testing.assert_array_equal(first[0], second[0])  # reset = a fresh session
        with pytest.raises(ValueError, match="one frame"):
            stream.step(np.zeros(100, np.float32))
