"""Weight loaders for the native models: GGUF files (packed as stored) and safetensors folders (memory-mapped)."""
