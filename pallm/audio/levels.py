"""Signal levels: what loudness the speaker used, kept as a measurement instead of normalised away."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_S = 0.020
#: A frame counts as active when it is within this many dB of the loudest frame.
ACTIVE_RANGE_DB = 40.0
_FLOOR = 1e-10  # -200 dBFS: keeps log10 finite on digital silence


@dataclass(frozen=True)
class Levels:
    """Levels of a mono float signal in dBFS (0 dBFS = full scale)."""

    rms_dbfs: float
    peak_dbfs: float
    loudest_frame_dbfs: float
    active_fraction: float


def measure(x: np.ndarray, sample_rate: int) -> Levels:
    """RMS and peak level, the loudest 20 ms frame, and the fraction of frames near it."""
    if x.size == 0:
        return Levels(-200.0, -200.0, -200.0, 0.0)
    x = np.asarray(x, dtype=np.float32)
    n = max(1, int(FRAME_S * sample_rate))
    whole = (x.size // n) * n
    frames = x[:whole].reshape(-1, n) if whole else x.reshape(1, -1)
    energy = np.einsum("ij,ij->i", frames, frames).astype(np.float64) / frames.shape[1]
    tail = x[whole:]
    total = float(energy.sum() * frames.shape[1] + (np.dot(tail, tail) if whole else 0.0))
    rms = float(np.sqrt(total / x.size))
    peak = float(max(x.max(), -x.min()))
    frame_db = 10.0 * np.log10(np.maximum(energy, _FLOOR**2))
    loudest = float(frame_db.max())
    active = float(np.mean(frame_db >= loudest - ACTIVE_RANGE_DB))
    return Levels(_db(rms), _db(peak), loudest, active)


def _db(amplitude: float) -> float:
    return 20.0 * float(np.log10(max(amplitude, _FLOOR)))
