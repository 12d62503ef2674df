"""Multi-host start-up: `jax.distributed.initialize` from flags, auto-detection, a timeout.

    t5x-lite train --coordinator_address 10.0.0.1:1234 --num_processes 4 --process_id 0 ...

The flag names are `jax.distributed.initialize`'s. Without them, a TPU pod slice or a SLURM
job is detected by JAX itself (`jax.distributed.initialize()` with no arguments); a single
process needs nothing. On CPU the cross-process collectives use gloo. The rendezvous gives up
after `timeout` seconds with an error naming the coordinator, instead of hanging.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import jax

log = logging.getLogger(__name__)

_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: int = 300,
) -> None:
    """Join the other processes of this job (a no-op for a plain single-process run)."""
    explicit = coordinator_address is not None
    if not explicit and not any(k in os.environ for k in _CLUSTER_ENV):
        return
    if explicit and (num_processes is None or process_id is None):
        raise ValueError("--coordinator_address needs --num_processes and --process_id")
    if explicit and process_id != 0:
        # jax aborts the process when its rendezvous times out; probe first so an unreachable
        # coordinator is a clear error instead.
        _wait_for_coordinator(coordinator_address, timeout)
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id, initialization_timeout=timeout
        )
    except Exception as e:  # jax raises a bare RuntimeError / XlaRuntimeError here
        where = coordinator_address or "the auto-detected coordinator"
        raise ConnectionError(
            f"could not join the job through {where} within {timeout} s "
            f"(process {process_id} of {num_processes}): {e}"
        ) from e
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _wait_for_coordinator(address: str, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={address!r}: expected HOST:PORT")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"could not join the job through {address}: no coordinator answered within "
                    f"{timeout} s ({e}); start process 0 there, or check the address and port"
                ) from e
            time.sleep(1)
