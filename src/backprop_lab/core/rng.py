"""Named, independent random streams derived from one configured seed.

Every random draw in the core goes through a ``numpy.random.Generator`` made here, never the
global ``np.random`` state. Each stream name gets its own ``SeedSequence`` child (the name's
bytes form the spawn key, so two names can never collide), which is why drawing more
initial weights (a wider net) leaves the data, the shuffling and the gradient-check
directions bit-identical.
"""

from __future__ import annotations

import numpy as np

#: The streams the project uses; any other non-empty name also works (e.g. in notebooks).
STREAMS = ("data", "init", "shuffle", "gradcheck")


def make_rng(seed: int, stream: str) -> np.random.Generator:
    """Return a PCG64 generator for ``(seed, stream)``; the same pair always gives the same draws."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream must be a non-empty name such as one of {STREAMS}, got {stream!r}")
    seq = np.random.SeedSequence(int(seed), spawn_key=tuple(stream.encode("utf-8")))
    return np.random.Generator(np.random.PCG64(seq))
