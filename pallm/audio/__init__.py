"""Audio: decoding any common format to 16 kHz mono float, levels, and the audio stage."""
