"""Serving an LLM resource's checkpoints with vLLM on GPU (the ``gpu`` extra), without restarting runners.

    server = VLLMServer("/ckpt/base", served_names=["support-model:v1", "support-model"]).start()
    sync = VLLMAdapterSync(store, "support-model", server.base_url, server=server).start()

Runners call the server with ``model=f"{name}:v{version}"`` (the version the rollout resolved), or
with ``NAME`` / ``NAME@label`` for whatever a label points at, exactly as with the CPU model server
(``serving/model_server.py``). :class:`VLLMAdapterSync` keeps vLLM's served names in step with the
resource:

* **LoRA adapter versions** (a checkpoint folder with ``adapter_config.json``) are loaded into the
  running server through its dynamic-LoRA endpoint (``POST /v1/load_lora_adapter`` with
  ``{"lora_name", "lora_path"}``; the server must run with ``--enable-lora`` and
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, which :class:`VLLMServer` sets): each version as
  ``NAME:vN``, and each followed label as ``NAME@label`` (``NAME`` too for the default label).
  When a label moves, its alias is loaded again from the new version's folder in place
  (``load_inplace``; on a vLLM without it, unloaded first with ``/v1/unload_lora_adapter``). Old
  unlabelled versions beyond ``keep`` are unloaded.
* **Full checkpoints** cannot be swapped into a running vLLM: when the default label moves to one,
  the sync restarts the serving process on it (:meth:`VLLMServer.restart`), serving it as
  ``NAME:vN``, ``NAME`` and ``NAME@label``. Requests fail while it restarts (tens of seconds to
  minutes for a large model); runners retry them (the OpenAI client's ``max_retries``) and never
  restart. Without a ``server`` to restart, the sync logs what to do.

Nothing here imports vLLM: the server is a child process (``vllm serve``), talked to over HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from agentstream.process.lifecycle import terminate
from agentstream.process.ports import free_port
from agentstream.resources.store import ResourceStore
from agentstream.schemas import PRODUCTION, ResourceVersion

from .checkpoints import CheckpointError, adapter_base, checkpoint_path, is_adapter, served_name
from .llama_cpp import models_answer

logger = logging.getLogger(__name__)

__all__ = ["VLLMAdapterSync", "VLLMServer"]


def _vllm_executable() -> list[str]:
    """``vllm`` of this environment (beside the interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name("vllm")
    found = str(beside) if beside.exists() else shutil.which("vllm")
    if found is None:
        raise RuntimeError("vLLM is not installed: pip install 'agentstream[gpu]' (GPU machines only)")
    return [found]


class VLLMServer:
    """``vllm serve`` in a child process, with runtime LoRA updates enabled.

    Args:
        model: the base checkpoint folder (or a model id in the local Hugging Face cache).
        served_names: the names requests may use for the base model (``--served-model-name``).
        port: 0 picks a free one.
        enable_lora: serve LoRA adapters (loaded later through the dynamic-LoRA endpoint).
        max_lora_rank, max_loras: vLLM's LoRA limits (rank of the largest adapter; adapters in one batch).
        gpu_memory_utilization: the share of GPU memory vLLM may take.
        extra_args: more ``vllm serve`` flags, passed as they are.
        log_path: where the server's output goes.
        executable: the ``vllm`` command; default the one beside this interpreter, else on PATH.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        served_names: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        enable_lora: bool = True,
        max_lora_rank: int = 64,
        max_loras: int = 4,
        gpu_memory_utilization: float = 0.85,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        executable: Sequence[str] | None = None,
    ) -> None:
        self.model = str(model)
        self.served_names = list(served_names)
        self.host = host
        self.port = port
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.gpu_memory_utilization = gpu_memory_utilization
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self.executable = list(executable) if executable is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        """The ``vllm serve`` command line."""
        args = [
            *(self.executable or _vllm_executable()),
            "serve",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--gpu-memory-utilization",
            str(self.gpu_memory_utilization),
        ]
        if self.served_names:
            args += ["--served-model-name", *self.served_names]
        if self.enable_lora:
            args += [
                "--enable-lora",
                "--max-lora-rank",
                str(self.max_lora_rank),
                "--max-loras",
                str(self.max_loras),
            ]
        return args + self.extra_args

    def environment(self) -> dict[str, str]:
        return {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}

    def start(self, timeout: float = 900.0) -> Self:
        """Start the server; returns once ``/v1/models`` answers (loading a large model takes minutes)."""
        self.port = self.port or free_port()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            self.command(),
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(f"vllm serve exited with {code}; see {self.log_path or 'its output'}")
            if models_answer(self.base_url, 2.0):
                return self
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vllm serve not ready within {timeout:.0f}s; see {self.log_path or 'its output'}")

    def restart(self, model: str | Path, served_names: Sequence[str], timeout: float = 900.0) -> Self:
        """Serve another full checkpoint: stop, then start on ``model`` (same host and port)."""
        self.stop()
        self.model, self.served_names = str(model), list(served_names)
        return self.start(timeout)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, 30.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


@dataclass(frozen=True)
class _Served:
    path: str
    version: int


class VLLMAdapterSync:
    """Follows an LLM resource and keeps a running vLLM's adapters (and, with ``server``, its full
    checkpoint) in step with its versions and labels.

    Args:
        store: a following :class:`ResourceStore`.
        resource: the LLM resource.
        base_url: the vLLM server's ``.../v1``.
        labels: labels served as ``NAME@label`` aliases.
        default_label: the label plain ``NAME`` follows.
        keep: unlabelled adapter versions kept loaded (the newest).
        server: the :class:`VLLMServer` to restart when the default label moves to a full checkpoint.
        base_model: only adapters trained on this base are loaded (their ``config["base_model"]``, else
            their own ``base_model_name_or_path``); default the model ``server`` serves, else no check.
    """

    def __init__(
        self,
        store: ResourceStore,
        resource: str,
        base_url: str,
        *,
        labels: Sequence[str] = (PRODUCTION, "candidate"),
        default_label: str = PRODUCTION,
        keep: int = 4,
        server: VLLMServer | None = None,
        base_model: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.store = store
        self.resource = resource
        self.base_url = base_url.rstrip("/")
        self.labels = list(dict.fromkeys([default_label, *labels]))
        self.default_label = default_label
        self.keep = keep
        self.server = server
        self.base_model = base_model
        self.timeout = timeout
        #: what this sync has loaded into vLLM: served name -> adapter folder and version
        self.loaded: dict[str, _Served] = {}
        self.full_checkpoint: int | None = None
        self.errors: list[str] = []
        self._wake: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # ---- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Sync now, then again after every change of the resource (on a thread of its own: HTTP
        calls never run on the store's reader thread)."""
        self.store.on_change(self._changed)
        self._thread = threading.Thread(target=self._run, name=f"vllm-sync-{self.resource}", daemon=True)
        self._thread.start()
        self._wake.put(True)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.put(False)
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _changed(self, record: Any) -> None:
        if getattr(record, "resource_name", None) == self.resource:
            self._wake.put(True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._wake.get(timeout=30.0):
                    return
            except queue.Empty:  # a periodic retry of whatever failed
                if not self.errors:
                    continue
            while not self._wake.empty():  # a burst of changes: one sync
                if not self._wake.get_nowait():
                    return
            try:
                self.sync()
            except Exception:
                logger.exception("vLLM sync of %s failed", self.resource)

    # ---- syncing ----------------------------------------------------------------------------------------
    def desired(self) -> tuple[dict[str, _Served], ResourceVersion | None]:
        """The adapters that should be loaded (served name -> folder), and the full checkpoint the
        default label points at (``None`` if it points at an adapter, or nowhere)."""
        if self.resource not in self.store.names():
            return {}, None
        state = self.store.state(self.resource)
        adapters: dict[int, str] = {}  # the adapters vLLM can load: trained on the base it serves
        foreign: set[int] = set()
        for number, version in state.versions.items():
            try:
                path = checkpoint_path(version)
            except CheckpointError:
                continue
            if is_adapter(path):
                if self._fits(version, path):
                    adapters[number] = str(path)
                else:
                    foreign.add(number)
        labelled = {label: state.label_version(label) for label in self.labels}
        for label, target in labelled.items():
            if target in foreign:
                logger.warning(
                    "%s@%s is v%d, an adapter of another base model than vLLM serves: not loaded",
                    self.resource,
                    label,
                    target,
                )
        wanted: dict[str, _Served] = {}
        kept = sorted(adapters, reverse=True)[: self.keep]
        for number in sorted(set(kept) | {v for v in labelled.values() if v in adapters}):
            wanted[f"{self.resource}:v{number}"] = _Served(adapters[number], number)
        for label, target in labelled.items():
            if target is not None and target in adapters:
                wanted[f"{self.resource}@{label}"] = _Served(adapters[target], target)
                if label == self.default_label:
                    wanted[self.resource] = _Served(adapters[target], target)
        default = labelled.get(self.default_label)
        full = (
            state.versions.get(default)
            if default is not None and default not in adapters and default not in foreign
            else None
        )
        if full is not None:
            try:
                checkpoint_path(full)
            except CheckpointError:
                full = None
        return wanted, full

    def sync(self) -> None:
        """Load, re-point and unload adapters until vLLM serves what the resource says; restart the
        server when the default label moved to a full checkpoint."""
        with self._lock:
            wanted, full = self.desired()
            errors: list[str] = []
            if full is not None and full.version != self.full_checkpoint:
                self._serve_full(full, errors)
            for name in [n for n in self.loaded if n not in wanted]:
                if self._unload(name, errors):
                    del self.loaded[name]
            for name, served in wanted.items():
                if self.loaded.get(name) != served and self._load(name, served, errors):
                    self.loaded[name] = served
            self.errors = errors

    def _fits(self, version: ResourceVersion, path: Path) -> bool:
        """Whether an adapter was trained on the base model vLLM serves (when that is known)."""
        served = self.base_model or (self.server.model if self.server is not None else None)
        if served is None:
            return True
        try:
            base = adapter_base(version, path)
        except (CheckpointError, OSError, ValueError):
            return False
        return base.rstrip("/") == served.rstrip("/")

    def _serve_full(self, version: ResourceVersion, errors: list[str]) -> None:
        path = checkpoint_path(version)
        names = [served_name(version), self.resource] + [
            f"{self.resource}@{label}"
            for label in self.labels
            if self.store.find(self.resource, label) == version
        ]
        if self.server is None:
            message = (
                f"{served_name(version)} is a full checkpoint: restart vLLM on {path} serving "
                f"{names} (VLLMAdapterSync(server=...) does it)"
            )
            logger.warning(message)
            errors.append(message)
            return
        if self.server.model.rstrip("/") != str(path).rstrip("/"):
            logger.info("restarting vLLM on %s (full checkpoint %s)", path, served_name(version))
            self.server.restart(path, names)
            self.loaded.clear()  # a new process has no adapters
        self.full_checkpoint = version.version

    def _load(self, name: str, served: _Served, errors: list[str]) -> bool:
        """Serve ``served`` as ``name``. A version name (``NAME:vN``) already loaded is that same
        immutable version; an alias is replaced in place (``load_inplace``, so requests never see it
        missing), or, on a vLLM without in-place loading, unloaded and loaded again."""
        alias = name != f"{self.resource}:v{served.version}"
        body: dict[str, Any] = {"lora_name": name, "lora_path": served.path}
        if alias:
            body["load_inplace"] = True
        status, text = self._post("/load_lora_adapter", body)
        if status == 400 and "already been loaded" in text:
            if not alias:
                status = 200
            elif self._unload(name, errors):
                status, text = self._post("/load_lora_adapter", {"lora_name": name, "lora_path": served.path})
        if status == 200:
            logger.info("vLLM serves %s from %s", name, served.path)
            return True
        errors.append(f"load {name} from {served.path}: HTTP {status}: {text[:300]}")
        logger.warning("vLLM did not load %s: HTTP %s %s", name, status, text[:300])
        return False

    def _unload(self, name: str, errors: list[str]) -> bool:
        status, text = self._post("/unload_lora_adapter", {"lora_name": name})
        if status == 200 or status == 404:  # 404: not loaded (any more): the goal all the same
            return True
        errors.append(f"unload {name}: HTTP {status}: {text[:300]}")
        return False

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as e:
            return 0, f"unreachable: {e}"
