"""The HTTP server: OpenAI- and Ollama-compatible routes over one :class:`~influence_tui.core.engine.runner.EngineRunner`.

:func:`~influence_tui.server.app.create_app` builds the FastAPI app around a runner (and the model it serves);
``influence serve`` runs it with uvicorn. Nothing in ``influence_tui.core`` imports this package.
"""
