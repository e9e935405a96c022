#!/usr/bin/env bash
# Fetch the wheels a lent GPU machine lacks for benchmarks/device_round2.sh into .whl/ (ignored by
# git, carried with the device tool's `carry: [".whl"]`). The device's python3 is 3.12 with torch but
# an older transformers and no pydantic; the versions here are the ones the local venv (and so the
# test suite) runs. About 18 MB; run it here, where PyPI is reachable: bash benchmarks/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
packages=()
for name in transformers peft huggingface_hub httpx2 httpcore2 truststore pydantic pydantic_core \
            pydantic-settings annotated-types typing-inspection python-dotenv; do
    packages+=("$name==$(version "$name")")
done
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
rm -rf .whl && mkdir .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${packages[@]}"
ls .whl
du -sh .whl
