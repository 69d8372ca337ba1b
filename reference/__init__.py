"""The official qwen-tts package as a peer: run in its own environment (.venv-ref) by parity tests and benchmarks."""
