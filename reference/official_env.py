"""Import the official `qwen_tts` package in its own lean virtual environment.

The package imports its 25 Hz tokenizer at module level, which needs sox, onnxruntime and a CUDA build of torchaudio;
none of them is used by the 12 Hz models, so they are registered as empty modules (with a `__spec__`, because
transformers probes them with `importlib.util.find_spec`).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types


def _stub(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__path__ = []  # a package, so that submodule imports resolve to further stubs
    sys.modules[name] = module
    return module


def import_qwen_tts() -> types.ModuleType:
    for name in ("sox", "onnxruntime", "torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi"):
        if name not in sys.modules:
            _stub(name)
    sys.modules["torchaudio"].compliance = sys.modules["torchaudio.compliance"]
    sys.modules["torchaudio.compliance"].kaldi = sys.modules["torchaudio.compliance.kaldi"]
    import qwen_tts

    return qwen_tts
