"""`pipeline.chunking.WindowStream`: windows cut from a stream of decoded blocks are the windows
`encoder.signal.windows` cuts from the whole file, samples included, wherever the blocks break."""

from __future__ import annotations

import numpy as np
import pytest

from matpac_cli.encoder.signal import windows
from matpac_cli.pipeline.chunking import WindowStream


@pytest.mark.parametrize("n", [399, 400, 97_520, 97_679, 97_680, 195_040, 195_041, 224_000])
@pytest.mark.parametrize("block", [1_000, 97_520, 97_280, 160_001])
def test_window_stream_equals_windows(n, block):
    """Windows cut from a stream of blocks equal `windows()` on the whole, samples included."""
    x = np.random.default_rng(5).uniform(-1, 1, n).astype(np.float32)  # distinct samples: a shift shows
    ws = WindowStream(608)
    got = []
    for a in range(0, n, block):
        got += ws.push(x[a : a + block])
    got += ws.finish()
    assert [w for w, _ in got] == windows(n, 608)
    for w, samples in got:
        np.testing.assert_array_equal(samples, x[w.start : w.start + w.length])
