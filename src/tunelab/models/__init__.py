"""Models: the built-in catalogue, GGUF conversion, loading (built-in name, HF folder, .gguf), quantization."""
