"""Measured cues made comparable (per-speaker z-scores) and speakable (the cue vocabulary)."""
