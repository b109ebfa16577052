"""Offline conversion of safetensors checkpoints to GGUF (see issue: converter)."""
