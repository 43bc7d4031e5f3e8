from __future__ import annotations

import numpy as np

from serve_app.session.input_buffer import InputBuffer


def test_append_take_clear() -> None:
    buffer = InputBuffer(max_ms=1000)
    buffer.append(np.full(2400, 0.5, np.float32))
    buffer.append(np.zeros(0, np.float32))
    assert buffer.duration_ms == 100
    pcm = buffer.take()
    assert pcm.dtype == np.int16 and len(pcm) == 2400 and pcm[0] == 16384
    assert buffer.duration_ms == 0 and len(buffer.take()) == 0
    buffer.append(np.zeros(100, np.float32))
    buffer.clear()
    assert buffer.duration_ms == 0


def test_only_the_newest_audio_is_kept() -> None:
    buffer = InputBuffer(max_ms=100)  # 2400 samples
    buffer.append(np.full(2000, 0.1, np.float32))
    buffer.append(np.full(1000, 0.2, np.float32))
    assert buffer.duration_ms == 100
    pcm = buffer.take()
    assert len(pcm) == 2400 and pcm[0] == round(0.1 * 32768) and pcm[-1] == round(0.2 * 32768)
    assert np.count_nonzero(pcm == round(0.1 * 32768)) == 1400
    buffer.append(np.full(5000, 0.3, np.float32))
    assert buffer.duration_ms == 100
