"""Reading files the project did not just write (run folders, the zoo, sweep folders, the data
folder) without being hung or flooded by them, and writing files whole.

A name in such a folder may be a FIFO (a read blocks forever), a link to `/dev/zero` (a read never
ends), a huge file, or a YAML "alias bomb" (a few lines whose anchors expand to billions of nodes
when loaded). So every read here opens without blocking, refuses what is not a regular file,
reads at most a stated number of bytes in bounded pieces, and YAML with anchors or aliases is
refused before it is loaded (the project writes none). Each refusal is one sentence naming the file.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from stn.errors import ConfigError, first_line

CHUNK = 1 << 20  # bytes read at a time
MAX_CONFIG_BYTES = 8 << 20  # a run's config, Hydra's record, a zoo config, a manifest
MAX_METRICS_BYTES = 8 << 20  # metrics.json
MAX_DATA_BYTES = 64 << 20  # an MNIST archive (the largest, train-images, is 9.9 MB)
MAX_JSON_DEPTH = 64  # nesting of a metrics.json or manifest (the project writes 2)

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def kind_of(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def check_regular(path: Path, limit: int | None = None) -> os.stat_result:
    """ConfigError unless `path` (links followed) is a regular file of at most `limit` bytes;
    its stat. Never opens it, so a FIFO cannot block here."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except OSError as error:
        raise ConfigError(f"{path} cannot be read ({error.strerror or error})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path} is {kind_of(info.st_mode)}, not a regular file; refusing to read it")
    if limit is not None and info.st_size > limit:
        raise ConfigError(
            f"{path} is {info.st_size:,} bytes, more than the {limit:,} such a file may have; "
            "refusing to read it"
        )
    return info


def _open_regular(path: Path, limit: int | None) -> int:
    """A descriptor of `path`, opened without blocking (a FIFO would block an ordinary open) and
    checked to be a regular file of at most `limit` bytes."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except OSError as error:
        raise ConfigError(f"{path} cannot be read ({error.strerror or error})") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or (limit is not None and info.st_size > limit):
        os.close(descriptor)
        check_regular(path, limit)  # the sentence (the file is the same one, or the race is lost)
        raise ConfigError(f"{path} changed while it was opened; refusing to read it")
    return descriptor


def read_bytes(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (read in pieces)."""
    descriptor = _open_regular(path, limit)
    pieces, total = [], 0
    with os.fdopen(descriptor, "rb") as file:
        while piece := file.read(min(CHUNK, limit + 1 - total)):
            pieces.append(piece)
            total += len(piece)
            if total > limit:  # it grew after the check
                raise ConfigError(f"{path} is more than the {limit:,} bytes such a file may have")
    return b"".join(pieces)


def read_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def file_digest(path: Path, algorithm: str, limit: int) -> str:
    """The hex digest of the regular file `path` (at most `limit` bytes), read in pieces."""
    digest = hashlib.new(algorithm)
    descriptor = _open_regular(path, limit)
    total = 0
    with os.fdopen(descriptor, "rb") as file:
        while piece := file.read(CHUNK):
            total += len(piece)
            if total > limit:
                raise ConfigError(f"{path} is more than the {limit:,} bytes such a file may have")
            digest.update(piece)
    return digest.hexdigest()


def read_csv(path: Path, limit: int = MAX_CONFIG_BYTES) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, read as `read_text` reads (bounded, regular files only)."""
    return list(csv.DictReader(io.StringIO(read_text(path, limit), newline="")))


def refuse_yaml_aliases(text: str, path: Path) -> None:
    """ConfigError if the YAML `text` has an anchor or an alias: scanned as a stream of events
    (linear in the text, nothing expanded), before any loader builds it."""
    try:
        for event in yaml.parse(io.StringIO(text), Loader=yaml.SafeLoader):
            anchored = getattr(event, "anchor", None) is not None
            if isinstance(event, yaml.AliasEvent) or anchored:
                raise ConfigError(
                    f"{path} uses YAML anchors and aliases (&{event.anchor} / *{event.anchor}), which "
                    "this project never writes and which can expand without bound; refusing to read it"
                )
    except yaml.YAMLError as error:
        first = first_line(error)
        raise ConfigError(f"{path} cannot be read as YAML ({first})") from None


def read_yaml_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """The text of an untrusted YAML file: a bounded regular file with no anchors or aliases."""
    text = read_text(path, limit)
    refuse_yaml_aliases(text, path)
    return text


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply `value` (parsed JSON) nests, counting no further than `limit` + 1 (iterative:
    a deep value cannot exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never half of one
    (a run killed while writing metrics.json or a summary)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the kernel's lock (flock) on `path` (created if missing): one holder at a time across
    processes, and across the threads of this one. `wait=False` yields False at once when another
    holds it. A killed process never leaves it held. The one lock of the project: a run folder while
    a run trains in it, the MNIST folder while it is unpacked, a study's CSV while it is rewritten."""
    path = Path(path)
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(path.resolve(), threading.Lock())
    if not thread_lock.acquire(blocking=wait):
        yield False
        return
    try:
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        thread_lock.release()
