"""Training the paralinguistics-aware speech LLM: data, answer format, rewards, metrics (SFT and RL come next)."""
