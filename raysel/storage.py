"""Where a sweep keeps its files: a local directory (or a mount every node shares), or a URI of any
filesystem Ray Tune accepts (``s3://bucket/prefix``, ``gs://...``; options such as
``?endpoint_override=host:port&scheme=http`` are kept for every path under it).

Ray Tune and Ray Train write trial checkpoints and results there themselves. raysel's own files go
through a local mirror of the sweep's directory (``Storage.local``: the directory itself when it is
local; for a URI a folder under ``cache_dir()/storage``, by default ``~/.cache/raysel/storage``): they
are written there as before and copied up with ``upload``; ``download`` brings them back (``--resume``,
``raysel report``, the files the sweep's trials share).
"""
from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs

from raysel.cache import cache_dir

URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def mirrors_dir() -> Path:
    """Where this machine keeps its copies of object-storage directories: ``cache_dir()/storage``."""
    return cache_dir() / "storage"


def is_uri(path: str) -> bool:
    return bool(URI_SCHEME.match(path)) and not path.startswith("file://")


@dataclass(frozen=True)
class Storage:
    """A directory of a sweep's storage: ``root`` is an absolute local path or a URI without its query."""

    root: str
    query: str = ""  # a URI's options, for every path under it

    @classmethod
    def parse(cls, path: str, base: Path | None = None) -> "Storage":
        """``path`` as a spec gives it: a URI, or a local path (relative ones resolve against ``base``)."""
        path = str(path)
        if is_uri(path):
            root, _, query = path.partition("?")
            return cls(root.rstrip("/"), query)
        local = Path(path.removeprefix("file://")).expanduser()
        return cls(str(((base or Path.cwd()) / local).resolve()))

    @property
    def is_local(self) -> bool:
        return not is_uri(self.root)

    @property
    def uri(self) -> str:
        """What Ray Tune and pyarrow are given."""
        return f"{self.root}?{self.query}" if self.query else self.root

    @property
    def name(self) -> str:
        return posixpath.basename(self.root)

    def __truediv__(self, name: str) -> "Storage":
        return Storage(posixpath.join(self.root, name) if not self.is_local else str(Path(self.root) / name), self.query)

    def __str__(self) -> str:
        return self.uri

    @property
    def local(self) -> Path:
        """Where raysel writes this directory's files on this machine (the directory itself when local)."""
        if self.is_local:
            return Path(self.root)
        return mirrors_dir() / hashlib.sha1(self.uri.encode()).hexdigest()[:16]

    def filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """The pyarrow filesystem and the path in it."""
        if self.is_local:
            return pyarrow.fs.LocalFileSystem(), self.root
        return pyarrow.fs.FileSystem.from_uri(self.uri)

    def check_writable(self) -> str | None:
        """Why nothing can be stored here (a probe file written and deleted), or None."""
        import uuid

        try:
            fs, path = self.filesystem()
            probe = posixpath.join(path, f".raysel-check-{uuid.uuid4().hex[:8]}")
            with fs.open_output_stream(probe) as stream:
                stream.write(b"raysel")
            fs.delete_file(probe)
        except Exception as err:  # noqa: BLE001 - whatever the filesystem says, as one line
            said = re.sub(r"\s*\(Request ID: [^)]*\)", "", str(err).strip().split("\n")[0])
            return f"{type(err).__name__}: {said}"
        return None

    def holds_files(self) -> bool:
        """Whether anything is stored under this directory."""
        fs, path = self.filesystem()
        return bool(fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True, recursive=False)))

    def read_text(self, name: str) -> str | None:
        """The text of the file ``name`` under this directory; None when there is none."""
        fs, path = self.filesystem()
        target = posixpath.join(path, name)
        if fs.get_file_info(target).type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(target) as stream:
            return stream.read().decode()

    def upload(self, *names: str) -> None:
        """Copy files or folders of the local mirror (``names`` under it) up to the storage, leaving out
        files already there at the same size."""
        if self.is_local:
            return
        fs, path = self.filesystem()
        for name in names:
            source = self.local / name
            files = [source] if source.is_file() else sorted(f for f in source.rglob("*") if f.is_file())
            if not files:
                continue
            target = posixpath.join(path, name)
            stored = {posixpath.relpath(i.path, path): i.size for i in fs.get_file_info(
                pyarrow.fs.FileSelector(target, allow_not_found=True, recursive=True))} if source.is_dir() else {}
            for file in files:
                relative = file.relative_to(self.local).as_posix()
                if file.suffix in (".part", ".tmp", ".lock") or stored.get(relative) == file.stat().st_size:
                    continue
                fs.create_dir(posixpath.dirname(posixpath.join(path, relative)), recursive=True)
                with open(file, "rb") as data, fs.open_output_stream(posixpath.join(path, relative)) as out:
                    while chunk := data.read(1 << 20):
                        out.write(chunk)

    def download(self, name: str = "", skip: tuple[str, ...] = ()) -> Path:
        """Copy a file or folder (all when ``name`` is empty) from the storage into the local mirror, leaving
        out folders whose names start with one of ``skip`` (e.g. checkpoints) and files already there at the
        same size; the mirror's path of it."""
        target = self.local / name if name else self.local
        if self.is_local:
            return target
        fs, path = self.filesystem()
        source = posixpath.join(path, name) if name else path
        info = fs.get_file_info(source)
        if info.type == pyarrow.fs.FileType.File:
            _fetch(fs, source, target, info.size)
            return target
        if info.type != pyarrow.fs.FileType.Directory:
            return target
        for entry in fs.get_file_info(pyarrow.fs.FileSelector(source, recursive=True)):
            relative = posixpath.relpath(entry.path, source)
            folders = relative.split("/")[:-1]
            if entry.type == pyarrow.fs.FileType.File and not any(f.startswith(skip) for f in folders if skip):
                _fetch(fs, entry.path, target / relative, entry.size)
        return target


def _fetch(fs: pyarrow.fs.FileSystem, source: str, target: Path, size: int | None) -> None:
    if target.is_file() and size is not None and target.stat().st_size == size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with fs.open_input_stream(source) as stream, open(partial, "wb") as out:
        while chunk := stream.read(1 << 20):
            out.write(chunk)
    partial.replace(target)


@contextlib.contextmanager
def trial_files(storage_path: str, trial_id: str, store: bool = True) -> Iterator[Path]:
    """A trial's artifact directory on this node (its shared directory beside it). With a URI storage the
    files the sweep's trials share are fetched first, and the trial's artifacts and shared files stored
    after it (also when it fails; ``store=False`` on Ray Train ranks other than 0)."""
    from raysel.methods.base import shared_dir_of

    sweep = Storage.parse(storage_path)
    shared = shared_dir_of(Path()).as_posix()
    sweep.download(shared)
    artifacts = posixpath.join(posixpath.dirname(shared), trial_id)
    try:
        yield sweep.local / artifacts
    finally:
        if store:
            sweep.upload(artifacts, shared)
