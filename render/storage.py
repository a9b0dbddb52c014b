"""Where datasets live: small fsspec helpers for local folders and remote URLs.

Every output goes through here, so a dataset can be written to ``out/tiny``,
``file:///data/tiny``, ``s3://bucket/tiny`` or (in one process) ``memory://tiny`` alike.
Writes are atomic: bytes go to a temporary name beside the target, then are renamed (local
file systems) or moved (object stores, where an upload itself is atomic). A reader never
sees a half-written file. Local files get the mode a plain ``open()`` would give them
(``0o666`` less the process umask), so a dataset in a shared folder is as readable as
any other file its writer creates.

    from render import storage
    storage.write_bytes(storage.join("s3://bucket/tiny", "index.json"), data)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

logger = logging.getLogger("phieat.render")

# Object stores: how long a new lock waits before reading itself back (see ``lock``).
LOCK_SETTLE_S = 2.0


class StorageError(RuntimeError):
    """A dataset location cannot be read or written as asked."""


class LockedError(StorageError):
    """Another build holds the lock of this dataset version."""


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path)`` for a local path or any fsspec URL."""
    try:
        fs, path = fsspec.core.url_to_fs(str(url))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open {url!r}: {exc}") from exc
    return fs, path


def is_local(url: str) -> bool:
    return isinstance(url_to_fs(url)[0], LocalFileSystem)


def is_process_local(url: str) -> bool:
    """True for ``memory://``: other processes (Ray workers) cannot see what is written there."""
    return url_to_fs(url)[0].protocol in ("memory", ("memory",))


def join(url: str, *names: str) -> str:
    """Join path parts onto a folder path or URL with ``/``."""
    out = str(url).rstrip("/")
    for name in names:
        out = f"{out}/{name.strip('/')}"
    return out


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def size(url: str) -> int:
    fs, path = url_to_fs(url)
    return int(fs.size(path))


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise StorageError(f"{url} does not exist") from exc


def read_json(url: str) -> Any:
    data = read_bytes(url)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{url} is not valid JSON: {exc}") from exc


def list_names(url: str) -> list[str]:
    """Base names of the files directly inside a folder/prefix (empty if it does not exist)."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        return []
    return sorted(Path(p.rstrip("/")).name for p in fs.ls(path, detail=False))


def _tmp_name(path: str) -> str:
    parent, _, name = path.rstrip("/").rpartition("/")
    tmp = f".{name}.tmp-{uuid.uuid4().hex[:12]}"
    return f"{parent}/{tmp}" if parent else tmp


def remove_temporaries(url: str) -> list[str]:
    """Delete the temporary files ``_publish`` leaves in folder ``url`` when its writer was
    killed between writing and renaming (a SIGKILLed worker cannot clean up). Only safe while
    nothing else writes there: call it under the folder's build lock. Returns the names."""
    removed = []
    for name in list_names(url):
        if name.startswith(".") and ".tmp-" in name:
            remove(join(url, name))
            removed.append(name)
    return removed


def process_umask() -> int:
    """The process umask, read without changing it (``/proc`` on Linux; elsewhere set and
    restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` less the umask."""
    return 0o666 & ~process_umask()


def _publish(
    url: str, write_local: Callable[[Path], None], upload: Callable[[Any, str], None]
) -> None:
    """Make ``url`` appear whole or not at all: write a temporary name beside it, then rename
    (local) or move (remote). ``write_local(tmp_path)`` fills a local temporary file;
    ``upload(fs, tmp_path)`` puts the data at a remote temporary path."""
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(_tmp_name(str(target)))
        try:
            write_local(tmp)
            # Temporary files (mkstemp) are 0600: publish with the umask's mode instead.
            os.chmod(tmp, file_mode())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    parent = path.rstrip("/").rpartition("/")[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = _tmp_name(path)
    upload(fs, tmp)
    fs.mv(tmp, path)


def _write_synced(tmp: Path, chunks: Iterable[bytes]) -> None:
    with open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically (temporary name beside it, then rename/move)."""
    _publish(url, lambda tmp: _write_synced(tmp, [data]), lambda fs, tmp: fs.pipe_file(tmp, data))


def write_json(url: str, obj: Any, indent: int | None = 1) -> None:
    write_bytes(url, (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode("utf-8"))


def put_file(local_path: str | Path, url: str) -> None:
    """Publish a finished local file at ``url`` atomically (rename locally, upload remotely)."""

    def write_local(tmp: Path) -> None:
        if Path(local_path).stat().st_dev == tmp.parent.stat().st_dev:
            os.link(local_path, tmp)  # same device: no copy needed
            return
        with open(local_path, "rb") as src:
            _write_synced(tmp, iter(lambda: src.read(1 << 22), b""))

    _publish(url, write_local, lambda fs, tmp: fs.put_file(str(local_path), tmp))


def remove(url: str) -> None:
    fs, path = url_to_fs(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


# ----------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_stale(info: dict[str, Any]) -> bool:
    """A lock left by a dead process on this host is stale; others are trusted."""
    if info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    return isinstance(pid, int) and not _pid_alive(pid)


def _create_exclusive(path: str) -> int | None:
    """A write descriptor of a newly created file, or ``None`` if the file already exists."""
    try:
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None


def _create_remote(fs: fsspec.AbstractFileSystem, path: str, body: bytes) -> bool:
    """Write ``body`` at ``path`` unless something is there; ``False`` if it was.

    ``pipe_file(mode="create")`` is fsspec's exclusive create: a conditional write
    (``If-None-Match: *``) on stores whose fsspec backend supports it (recent s3fs), an
    exclusive open in ``memory://``, and check-then-write elsewhere, which the caller's
    read-back guards. A backend without the ``mode`` argument gets check-then-write too.
    """
    try:
        fs.pipe_file(path, body, mode="create")
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError):
        if fs.exists(path):
            return False
        fs.pipe_file(path, body)
    return True


def _read_lock(url: str) -> dict[str, Any]:
    try:
        held = json.loads(read_bytes(url))
    except (StorageError, json.JSONDecodeError):
        return {}
    return held if isinstance(held, dict) else {}


def lock_settle_s(url: str) -> float:
    """How long a new lock on ``url`` waits before reading itself back: 0 for local files
    (``O_EXCL`` is atomic), a moment for ``memory://`` (threads of one process), and
    ``LOCK_SETTLE_S`` for object stores (longer than a rival's check-to-write window)."""
    fs, _ = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        return 0.0
    return 0.05 if is_process_local(url) else LOCK_SETTLE_S


@contextlib.contextmanager
def lock(url: str, force: bool = False, settle_s: float | None = None) -> Iterator[dict[str, Any]]:
    """Hold ``url`` (a lock file) while the block runs; raises ``LockedError`` if taken.

    The lock file holds this process's host, pid and a unique token. Local files are
    created with ``O_EXCL``. Elsewhere the file is created with fsspec's exclusive create
    (atomic where the store supports conditional writes), then, after ``settle_s`` seconds
    (default ``lock_settle_s(url)``), read back: if a rival's token is there, both raced
    through a non-atomic create and the later writer keeps the lock. A lock left by a dead
    process on this host is taken over; ``force`` takes over any lock. On exit the file is
    removed only if it still holds this token.
    """
    token = uuid.uuid4().hex
    info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": token}
    body = json.dumps(info).encode("utf-8")
    fs, path = url_to_fs(url)
    local = isinstance(fs, LocalFileSystem)
    settle = lock_settle_s(url) if settle_s is None else settle_s
    for _ in range(2):
        if local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = _create_exclusive(path)
            created = fd is not None
            if fd is not None:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(body)
        else:
            created = _create_remote(fs, path, body)
        if created:
            if settle:
                time.sleep(settle)
                held = _read_lock(url)
                if held.get("token") != token:
                    raise LockedError(
                        f"{url} was taken at the same moment by pid {held.get('pid')} on "
                        f"{held.get('host')}: another build of this dataset started too. Let it "
                        "finish, or stop it and run this one again."
                    )
            break
        held = _read_lock(url)
        if force or _lock_is_stale(held):
            remove(url)
            continue
        raise LockedError(
            f"{url} is held by pid {held.get('pid')} on {held.get('host')} since "
            f"{time.ctime(held.get('since', 0))}: another build of this dataset is running. "
            "If it is not, delete the lock file or pass --force-unlock."
        )
    else:
        raise LockedError(f"could not take the lock {url}")
    try:
        yield info
    finally:
        held = _read_lock(url)
        if held.get("token") == token:
            remove(url)
        else:
            logger.warning(
                "%s no longer holds this build's token (taken over with --force-unlock?): "
                "left in place",
                url,
            )
