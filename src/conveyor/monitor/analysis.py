"""Failure analysis for the monitor: fingerprints (defined in :mod:`conveyor.history.fingerprint`,
where the history recorder computes them without importing the monitor)."""

from ..history.fingerprint import Frame, fingerprint, frames, is_library, normalize_message, top_frame

__all__ = ["Frame", "fingerprint", "frames", "is_library", "normalize_message", "top_frame"]
