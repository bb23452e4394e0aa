# Demo image for k8s/overlays/cpu-demo: the embedded Triton server (nvidia-pytriton's 2.51) with the
# built-in tiny model, installed exactly as the README installs it (scripts/install.sh). The pod
# builds the tiny bundle and its repository into /app/build at start. Build from the repository root:
#   docker build -f docker/cpu-demo.Dockerfile -t anonymixer-cpu-demo:0.1.0 .
#   docker run --rm -p 8001:8001 anonymixer-cpu-demo:0.1.0
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY . /app
# install.sh: torch 2.13.0 (CPU build), the project with its demo extra, the MTCNN weights. The
# image's own python3.11 is built shared, so the Python backend stub finds libpython3.11.so.1.0.
RUN bash scripts/install.sh /opt/venv \
    && /opt/venv/bin/pip uninstall -y -q pytest ruff mypy opencv-python-headless \
    && mkdir -p /app/build && chown 1000:1000 /app/build

USER 1000:1000
EXPOSE 8000 8001 8002 8003
ENTRYPOINT ["anonymixer", "serve"]
CMD ["--host=0.0.0.0", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--health-port=8003"]
