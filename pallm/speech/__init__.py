"""Speech: whisperx transcription, word timestamps (Whisper's own or a wav2vec2 aligner), diarization."""
