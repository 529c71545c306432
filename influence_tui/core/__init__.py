"""The UI-free core of Influence.

Nothing under ``influence_tui.core`` imports textual, rich, fastapi or uvicorn; a test imports it in a
subprocess and checks. Heavy packages (torch, transformers) are imported lazily, only by the engine.
"""
