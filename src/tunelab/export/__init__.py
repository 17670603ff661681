"""Export a run: merged safetensors, the adapter in PEFT's format, or GGUF; each with a model card (README.md)."""
