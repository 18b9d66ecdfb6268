"""Docstrings of a fixed list of standard-library modules, imported safely and in sorted order."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import re
import warnings
from types import ModuleType

# Fixed and sorted: no GUI, no test packages, no modules that print or act on import (this,
# antigravity, __hello__, idlelib, tkinter, turtle, rlcompleter, site, webbrowser), no PEP 594
# deprecated modules.
MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "asyncio", "asyncio.base_events", "asyncio.events",
    "asyncio.exceptions", "asyncio.futures", "asyncio.locks", "asyncio.protocols",
    "asyncio.queues", "asyncio.runners", "asyncio.streams", "asyncio.subprocess",
    "asyncio.taskgroups", "asyncio.tasks", "asyncio.timeouts", "asyncio.transports", "base64",
    "bdb", "binascii", "bisect", "builtins", "bz2", "calendar", "cmath", "cmd", "code", "codecs",
    "codeop", "collections", "collections.abc", "colorsys", "compileall", "concurrent.futures",
    "concurrent.futures._base", "concurrent.futures.process", "concurrent.futures.thread",
    "configparser", "contextlib", "contextvars", "copy", "copyreg", "csv", "ctypes",
    "dataclasses", "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email",
    "email.charset", "email.contentmanager", "email.encoders", "email.errors", "email.feedparser",
    "email.generator", "email.header", "email.headerregistry", "email.iterators",
    "email.message", "email.mime.application", "email.mime.audio", "email.mime.base",
    "email.mime.image", "email.mime.message", "email.mime.multipart", "email.mime.nonmultipart",
    "email.mime.text", "email.parser", "email.policy", "email.utils", "enum", "errno",
    "faulthandler", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gc",
    "getopt", "getpass", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac",
    "html", "html.parser", "http", "http.client", "http.cookiejar", "http.cookies",
    "http.server", "imaplib", "importlib", "importlib.abc", "importlib.machinery",
    "importlib.metadata", "importlib.resources", "importlib.util", "inspect", "io", "ipaddress",
    "itertools", "json", "json.decoder", "json.encoder", "keyword", "linecache", "locale",
    "logging", "logging.config", "logging.handlers", "lzma", "mailbox", "marshal", "math",
    "mimetypes", "modulefinder", "multiprocessing", "multiprocessing.connection",
    "multiprocessing.context", "multiprocessing.managers", "multiprocessing.pool",
    "multiprocessing.process", "multiprocessing.queues", "multiprocessing.shared_memory",
    "multiprocessing.sharedctypes", "multiprocessing.synchronize", "netrc", "numbers",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil",
    "platform", "plistlib", "poplib", "posixpath", "pprint", "profile", "pstats", "py_compile",
    "pyclbr", "pydoc", "queue", "quopri", "random", "re", "reprlib", "runpy", "sched",
    "secrets", "select", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib",
    "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string", "stringprep",
    "struct", "subprocess", "symtable", "sys", "sysconfig", "tabnanny", "tarfile", "tempfile",
    "textwrap", "threading", "time", "timeit", "token", "tokenize", "tomllib", "trace",
    "traceback", "tracemalloc", "types", "typing", "unicodedata", "unittest", "unittest.mock",
    "urllib.error", "urllib.parse", "urllib.request", "urllib.response", "urllib.robotparser",
    "uuid", "warnings", "weakref", "wsgiref.handlers", "wsgiref.headers",
    "wsgiref.simple_server", "wsgiref.util", "wsgiref.validate", "xml.dom.minidom",
    "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax", "xml.sax.handler",
    "xml.sax.saxutils", "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server", "zipapp",
    "zipfile", "zipimport", "zlib", "zoneinfo",
)

_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")
_RULE = re.compile(r"[*=\-~^#]{3,}")


def normalize(text: str) -> str:
    """Whitespace-normalise: paragraphs (blank-line separated) become single lines, joined by a
    blank line; rst underline decorations (*** / === / ---) are dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\t", " ")):
        lines = [ln for ln in block.split("\n") if not _RULE.fullmatch(ln.strip())]
        p = " ".join(" ".join(lines).split())
        if p:
            paragraphs.append(p)
    return "\n\n".join(paragraphs)


def summary(doc: str) -> str:
    """First paragraph of a normalised docstring, skipping a leading C-style signature line."""
    paragraphs = doc.split("\n\n")
    while paragraphs and _SIGNATURE.match(paragraphs[0]):
        paragraphs = paragraphs[1:]
    return paragraphs[0] if paragraphs else ""


@functools.lru_cache(maxsize=None)
def load_module(name: str) -> ModuleType | None:
    """Import a module with its output and warnings swallowed; None if the import fails.
    (MODULES holds no module that prints on import; a test checks it in a fresh process.)"""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:
        return None


def _owned(obj: object, name: str) -> bool:
    owner = getattr(obj, "__module__", None)
    return owner == name or owner == "_" + name


@functools.lru_cache(maxsize=None)
def docstrings(name: str) -> tuple[tuple[str, str], ...]:
    """(qualified name, normalised docstring) for the module, its public classes and functions,
    and their public methods/properties, in sorted order; empty if the module is unavailable."""
    module = load_module(name)
    if module is None:
        return ()
    found: list[tuple[str, object]] = [(name, module.__doc__)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            if not _owned(obj, name):
                continue
            found.append((f"{name}.{attr}", obj.__doc__))
            if inspect.isclass(obj):
                for meth, member in sorted(vars(obj).items()):
                    if meth.startswith("_"):
                        continue
                    if inspect.isroutine(member) or isinstance(
                            member, (property, classmethod, staticmethod)):
                        found.append((f"{name}.{attr}.{meth}", getattr(member, "__doc__", None)))
    out = []
    for qualname, doc in found:
        if isinstance(doc, str):
            text = normalize(inspect.cleandoc(doc))
            if text:
                out.append((qualname, text))
    return tuple(out)
