# Production image for k8s/overlays/gpu: NVIDIA's Triton with this project's Python models and
# CUDA torch in a venv. The Python backend's stub takes its site-packages from the first python3 on
# PATH (DESIGN §3), so the venv goes first on PATH. NGC 25.01 is Triton 2.54 on Ubuntu 24.04,
# whose Python (3.12) the stub is built for. Build from the repository root:
#   docker build -f docker/gpu.Dockerfile -t registry.example.com/anonymixer/triton-gpu:0.1.0 .
# The model repository is not in the image: build it with
#   python -m exporter repository --bundle DIR --target tensorrt|onnxruntime --gpus 0 --out …
# and put it on the PVC or in the object store (k8s/README.md).
FROM nvcr.io/nvidia/tritonserver:25.01-py3

ENV VIRTUAL_ENV=/opt/anonymixer \
    PATH=/opt/anonymixer/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV"
# torch first, pinned as scripts/install.sh pins it (the default PyPI build is the CUDA one)
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md /src/
COPY anonymixer /src/anonymixer
COPY exporter /src/exporter
COPY optimizer_backend /src/optimizer_backend
COPY apps /src/apps
# no [gpu] extra: Triton's own onnxruntime/TensorRT backends serve the networks; the Python models
# need torch and this project (onnxruntime-gpu beside onnxruntime would clash)
RUN pip install /src && rm -rf /src

# triton-server (uid 1000) is the NGC image's own non-root user; k8s runs it with a read-only root.
USER 1000:1000
EXPOSE 8000 8001 8002 8003
# The same launcher as everywhere (anonymixer serve): NGC's tritonserver under the supervisor, which
# reloads a model whose stub died and serves /health/ready and /health/live on 8003.
ENTRYPOINT ["anonymixer", "serve"]
CMD ["--repository=/models", "--host=0.0.0.0", "--tritonserver=/opt/tritonserver/bin/tritonserver"]
