"""Start and stop the embedded Triton server (the one the nvidia-pytriton wheel carries).

DESIGN §3: the wheel ships ``tritonserver`` 2.51 with the Python backend only. The backend's stub
must sit in the backend folder, the wheel's bundled libraries must be on ``LD_LIBRARY_PATH``, and
the stub finds its site-packages from the first ``python3`` on ``PATH`` — so the server is started
with this interpreter's ``bin/`` first on ``PATH`` and the Python models run inside this virtual
environment. The stub embeds the system ``libpython3.X`` (Debian's ``libpython3.11`` here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class ServerError(RuntimeError):
    pass


TRITON_DEFAULT_CUDA_POOL = 64 * 2**20  # Triton's own --cuda-memory-pool-byte-size per GPU
# Largest tensors held at once in one pool: the outputs of a BLS stage's chunks until bls_stage
# joins them, and the input in flight. Four cover a full dynamic batch with views (8 requests × 6
# items = 48 items: three chunks at max batch 16) plus its input.
POOL_TENSORS_IN_FLIGHT = 4
POOL_FLAG = "--cuda-memory-pool-byte-size"


def cuda_pool_bytes(max_batch: int, item_shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Triton's CUDA memory pool for a GPU whose largest stage tensor is ``max_batch`` items of
    ``item_shape``: the Python backend shares this pool with its stub processes and passes GPU
    tensors in it by offset; one outside it needs a CUDA IPC handle of its own, opened per tensor
    (Triton's 64 MiB default holds five 1024×1024×3 float images)."""
    return max(TRITON_DEFAULT_CUDA_POOL, POOL_TENSORS_IN_FLIGHT * max_batch * math.prod(item_shape) * itemsize)


def repository_cuda_pools(repository: str | Path) -> dict[int, int]:
    """{GPU: pool bytes} for the KIND_GPU models of a repository: sized by each GPU's largest FP32
    tensor at its model's max_batch_size (tensors with variable dims are not stage tensors)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    pools: dict[int, int] = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        on_gpu = [group for group in config.instance_group if group.kind == mc.ModelInstanceGroup.KIND_GPU]
        gpus = {gpu for group in on_gpu for gpu in group.gpus}
        shapes = [tuple(t.dims) for t in (*config.input, *config.output) if t.data_type == mc.TYPE_FP32]
        sizes = [cuda_pool_bytes(max(config.max_batch_size, 1), s) for s in shapes if all(d > 0 for d in s)]
        for gpu in gpus:
            pools[gpu] = max(pools.get(gpu, TRITON_DEFAULT_CUDA_POOL), *sizes)
    return pools


def cuda_pool_args(repository: str | Path, extra_args: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``--cuda-memory-pool-byte-size=GPU:BYTES`` for each GPU the repository's models use, unless
    ``extra_args`` size the pool themselves."""
    if any(a.split("=")[0] == POOL_FLAG for a in extra_args):
        return ()
    return tuple(f"{POOL_FLAG}={gpu}:{size}" for gpu, size in sorted(repository_cuda_pools(repository).items()))


def pytriton_paths() -> tuple[Path, Path]:
    """(``pytriton/tritonserver`` folder, ``nvidia_pytriton.libs`` folder) of the installed wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ServerError("the embedded Triton server needs the nvidia-pytriton wheel (pip install nvidia-pytriton)")
    package = Path(spec.origin).parent
    return package / "tritonserver", package.parent / "nvidia_pytriton.libs"


def backend_directory(cache: Path) -> Path:
    """A backends folder holding the Python backend with this interpreter's stub copied in."""
    server_dir, _ = pytriton_paths()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no Python backend stub for Python {version}")
    python = cache / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in [*(server_dir / "backends" / "python").glob("*.*"), stub]:
        target = python / source.name
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
    return cache / "backends"


def _terminate_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM if the launching process dies, so a killed
    test run or CLI never leaves a server (and its backend stubs) behind."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: all held open while picked, since the kernel may hand
    a just-closed port out again and Triton refuses to start with two listeners on one port."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


class EmbeddedTritonServer:
    """``with EmbeddedTritonServer(repo) as server: … server.grpc_url …`` — stops by itself on exit."""

    def __init__(
        self,
        repository: str | Path,
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        log_file: str | Path | None = None,
        cache_dir: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
        binary: str | Path | None = None,
        http_host: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.host = host
        picked = iter(free_ports(3))
        self.grpc_port = grpc_port or next(picked)
        self.http_port = http_port or next(picked)
        self.metrics_port = metrics_port or next(picked)
        self.log_file = Path(log_file) if log_file else self.repository.parent / "tritonserver.log"
        self.cache_dir = Path(cache_dir) if cache_dir else self.repository.parent / ".triton"
        self.extra_args = extra_args
        self.binary = Path(binary) if binary else None
        self.http_host = host if http_host is None else http_host
        self.env = dict(env or {})  # more environment for Triton and its stubs
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._loopback(self.http_host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return self._loopback(self.host)

    @staticmethod
    def _loopback(host: str) -> str:
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    def command(self) -> list[str]:
        if self.binary is not None:  # an installed Triton (the NGC image) with its own backends
            program = [str(self.binary), f"--model-repository={self.repository}"]
        else:
            server_dir, _ = pytriton_paths()
            program = [
                str(server_dir / "bin" / "tritonserver"),
                f"--model-repository={self.repository}",
                f"--backend-directory={backend_directory(self.cache_dir)}",
            ]
        return [
            *program,
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.http_host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--log-verbose=0",
            *cuda_pool_args(self.repository, self.extra_args),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        # torch.compile's caches (ProtectConfig.compile) beside the repository, kept across restarts:
        # a warm cache brings the compiled synthesis's start-up from about a minute to seconds
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.cache_dir / "inductor"))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if self.binary is not None:
            return env
        _, libs = pytriton_paths()
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        return env

    def start(self) -> EmbeddedTritonServer:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "wb")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
        log.close()
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def live(self, timeout_s: float = 5.0) -> bool:
        """Whether tritonserver answers its liveness endpoint (models aside)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/live", timeout=timeout_s) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 600.0) -> EmbeddedTritonServer:
        """Until every model is loaded: a compiled model's warm-up takes minutes on a cold cache."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # Triton drains in-flight requests on SIGTERM
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait(5)

    def __enter__(self) -> EmbeddedTritonServer:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
