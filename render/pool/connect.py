"""Connecting to Ray: a cluster at ``RAY_ADDRESS`` / ``address=``, or a local Ray on this
machine's cores (``ensure_ray``), and disconnecting (``shutdown_ray``).

``ray.init`` replaces the program's SIGTERM handler; ``ensure_ray`` puts back the one the
program installed (the CLI's clean stop). ``RenderPool`` (``render.pool.driver``) connects
through here when it is created.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import ray
import ray.exceptions

from render.errors import ClusterError


def _program_signal_handlers() -> dict[int, Any]:
    """SIGTERM/SIGINT handlers the program installed itself (Python callables), if any."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if callable(handler) and handler is not signal.default_int_handler:
            handlers[sig] = handler
    return handlers


_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def _token_notice_filter(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    num_gpus: int | None = None,
) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local Ray on this machine.

    ``num_cpus`` / ``num_gpus`` (local Ray only) default to what the machine has. A local
    Ray keeps Ray's default, token authentication on (unless ``RAY_AUTH_MODE`` says
    otherwise); only Ray's notice about it is left out. ``ray.init`` replaces the SIGTERM
    handler with its own; a handler the program installed before (the CLI's clean stop) is
    put back.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    handlers = _program_signal_handlers()
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            mode = os.environ.get("RAY_AUTH_MODE", "unset")
            raise ClusterError(
                f"cannot connect to the Ray cluster at {address} ({first_line(exc)}); with "
                f"RAY_AUTH_MODE {mode}: a cluster with token authentication needs "
                "RAY_AUTH_MODE=token here and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token "
                "(docs/cluster.md, Authentication); else check the address and that the head runs"
            ) from None
    else:
        # The notice that a new local Ray keeps Ray's default (token authentication on, the
        # token in ~/.ray/auth_token) says nothing a one-machine build needs to act on.
        token_log = logging.getLogger(_TOKEN_LOGGER)
        token_log.addFilter(_token_notice_filter)
        try:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
        finally:
            token_log.removeFilter(_token_notice_filter)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def shutdown_ray() -> None:
    """Disconnect from (or stop the local) Ray."""
    if ray.is_initialized():
        ray.shutdown()


def first_line(exc: BaseException) -> str:
    """The last non-empty line of an error's message (where Ray puts the cause), for logs."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
