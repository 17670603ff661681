"""An OpenAI-compatible server: one base model in memory, LoRA-family adapters hot-swapped, dynamic batching.

Layout after vLLM's entrypoints/openai: protocol.py (OpenAI's request/response shapes), routes/ (one thin router
per endpoint), service.py (the work, held on app.state), engine.py (the batching generation thread), registry.py
(which model ids are served and what they load), app.py (the app factory and middleware), server.py (uvicorn).
"""
