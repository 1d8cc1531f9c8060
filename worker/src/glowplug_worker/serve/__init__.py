"""`glowplug-worker serve`: an OpenAI-compatible model server whose cold start is timed phase by
phase (import, config, load, warmup) and sped up by switchable optimizations (flags).

Nothing here is imported by `glowplug-worker prefetch`; torch and transformers are imported only
inside the timed `import` phase (see `startup/phases.py`)."""
