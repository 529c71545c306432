"""The engine: loading models, sampling, the generation loop and the thread that owns torch."""
