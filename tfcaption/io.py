"""Every file tfcaption reads or writes goes through TensorFlow's filesystem.

`tf.io.gfile` speaks local paths, `gs://` (Cloud Storage, where TPU users keep
caches and checkpoints), `ram://` (in-memory, used by the tests) and whatever
else TensorFlow has a plugin for. `os.path` and `open` speak only the first.

Writes are atomic: a reader sees the old file or the whole new one, never half.
The temporary name carries the host and process id, so two workers writing
the same file at once (two `extract --shard` machines, two training workers)
never write into each other's temporary file. Cloud Storage renames a single
object atomically; a folder "rename" there is a copy, so a SavedModel version is
published by writing a marker file last (`versions(model_dir, marker)` lists
only the versions that hold it).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import socket

import tensorflow as tf

gfile = tf.io.gfile


def join(*parts: str) -> str:
    """os.path.join that keeps a URL scheme ("gs://b/x") intact."""
    return os.path.join(*parts)


def is_local(path: str) -> bool:
    """A path of the local filesystem rather than a URL ("gs://...", "ram://...")."""
    return "://" not in path


def abspath(path: str) -> str:
    """os.path.abspath for local paths; a URL is absolute already (and abspath
    would make "gs://b/x" into "<cwd>/gs:/b/x")."""
    return os.path.abspath(path) if is_local(path) else path


def normpath(path: str) -> str:
    """os.path.normpath ("a/b/../c" -> "a/c") that keeps a URL's "//"; tf.io.gfile
    resolves no ".." in a URL."""
    if is_local(path):
        return os.path.normpath(path)
    scheme, _, rest = path.partition("://")
    return f"{scheme}://{posixpath.normpath(rest)}"


def exists(path: str) -> bool:
    if path.startswith("ram://"):
        # TensorFlow's in-memory filesystem answers by prefix: "x.json" exists
        # there while only "x.json.tmp-..." does. Its folder listing is exact.
        parent, name = os.path.split(path.rstrip("/"))
        return gfile.exists(path) and name in listdir(parent)
    return gfile.exists(path)


def isdir(path: str) -> bool:
    return gfile.isdir(path)


def makedirs(path: str) -> None:
    gfile.makedirs(path)


def listdir(path: str) -> list[str]:
    """Names in a folder (no trailing slashes, which gs:// listings carry)."""
    return [name.rstrip("/") for name in gfile.listdir(path)] if gfile.isdir(path) else []


def remove(path: str) -> None:
    if exists(path):
        gfile.remove(path)


def rmtree(path: str) -> None:
    if exists(path):
        gfile.rmtree(path)


def temp_name(path: str) -> str:
    """A temporary sibling of `path` that no other process uses."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def remove_dead_temps(folder: str) -> list[str]:
    """Removes what temp_name named in a local folder for processes of this host
    that no longer run (e.g. an export killed half-way); -> the paths removed.
    Another host's, or a live process's, are kept: on a shared disk this
    process cannot tell whether they are still being written."""
    marker = f".tmp-{socket.gethostname()}-"
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        pid = name.rpartition(marker)[2] if marker in name else ""
        if pid.isdigit() and not _running(int(pid)):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def read_bytes(path: str) -> bytes:
    with gfile.GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str):
    return json.loads(read_text(path))


def open_text(path: str, encoding: str = "utf-8", newline: str | None = None):
    """The file as a text stream that behaves as open(path, encoding=...,
    newline=...) does (universal newlines, "utf-8-sig" dropping a byte-order
    mark, newline="" for the csv module). The file is read whole: annotation
    files, not images."""
    return io.TextIOWrapper(io.BytesIO(read_bytes(path)), encoding=encoding, newline=newline)


def write_bytes(path: str, data: bytes, atomic: bool = True) -> None:
    """Atomic write: under a per-process temporary name, then renamed.

    atomic=False writes in place: for files that a marker written after them
    vouches for (the synthetic world's images), where a rename per file would
    cost a copy on Cloud Storage."""
    parent = os.path.dirname(path)
    if parent:
        gfile.makedirs(parent)
    tmp = temp_name(path) if atomic else path
    if path.startswith("ram://") and exists(tmp):
        # The in-memory filesystem appends to a file opened for writing instead
        # of truncating it (a leftover of a failed write, or a file rewritten).
        gfile.remove(tmp)
    with gfile.GFile(tmp, "wb") as f:
        f.write(data)
    if atomic:
        gfile.rename(tmp, path, overwrite=True)


def rename(source: str, target: str) -> None:
    """Renames a file or a folder; fails when target exists."""
    gfile.rename(source, target)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def digest_json(obj) -> str:
    """sha1 of a JSON-able value, independent of dict order: a key for settings."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def digest_files(paths: list[str]) -> str:
    """sha1 over the named files' bytes (in the given order): a content key."""
    digest = hashlib.sha1()
    for path in paths:
        with gfile.GFile(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def versions(model_dir: str, marker: str = "") -> list[int]:
    """The numbered versions under saved_models/<name>/, oldest first; with
    `marker`, only those holding that file (the complete ones)."""
    return sorted(int(name) for name in listdir(model_dir) if name.isdigit()
                  and (not marker or exists(join(model_dir, name, marker))))
