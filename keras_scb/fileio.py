"""Writing files so that a kill, a full disk or a read-only folder never leaves a partial result.

Every output of the package (checkpoints, backups, JSON, ``labels.txt``, exported
``.tflite`` files and SavedModel folders) is written to a temporary path next to
its destination and renamed into place, so a reader sees either the previous
complete output or the new complete one. Temporary names are
``.<name>.tmp-<pid>-<random><suffix>``: `remove_stale_temporaries` deletes those
whose writing process is gone (a killed run), never those of a live process.

`tempfile` creates files 0600 and folders 0700 whatever the umask; outputs here
get the permissions the umask allows (0644 / 0755 with umask 022), like any file
opened with ``open(path, "w")``.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+")
# Suffixes that writers such as Keras read to pick the format.
_KEPT_SUFFIXES = (".weights.h5", ".keras", ".json", ".h5", ".tflite", ".csv", ".txt", ".md",
                  ".png")


class OutputError(OSError):
    """An output could not be written; the message names the path."""


class OutputOverInput(OutputError, ValueError):
    """An output is, contains or lies inside an input (a bad flag value, refused up front)."""


# What a message shows of a long list (a label map of 100,000 names, the files
# of a folder): the first few items and how many more.
LISTED = 20


def abbreviate(items: Iterable, limit: int = LISTED) -> str:
    """``[a, b, ... (N more)]``: a list for a one-line message, at most ``limit`` items shown."""
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"


def short_repr(value, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_not_input(output, inputs: Sequence, flag: str = "--output") -> None:
    """The one rule of every tool: an output may not be, contain or lie inside an input.

    Checked before anything is written, on real paths (links resolved): an
    output that *is* an input would overwrite it, one that *contains* it (a
    folder replaced as a whole) would delete it, and one *inside* an input
    folder would change the input (a SavedModel, a folder of images, a dataset).

    Args:
        output: the file or folder to write.
        inputs: the files and folders read (``None`` entries are skipped).
        flag: how the message names ``output``.

    Raises:
        OutputOverInput: naming both paths.
    """
    target = os.path.realpath(os.fspath(output))
    for path in inputs:
        if path is None or path == "":
            continue
        source = os.path.realpath(os.fspath(path))
        if target == source:
            relation = "is the input"
        elif source.startswith(target.rstrip(os.sep) + os.sep):
            relation = "contains the input"
        elif target.startswith(source.rstrip(os.sep) + os.sep) and os.path.isdir(source):
            relation = "lies inside the input"
        else:
            continue
        raise OutputOverInput(
            f"{flag}={output} {relation} {path}; an output may not overwrite, contain or "
            "lie inside an input: choose another path."
        )


def files_under(folder: str) -> List[str]:
    """Every file below ``folder``, as paths relative to it, sorted."""
    found = []
    for root, _, names in os.walk(folder):
        found.extend(os.path.relpath(os.path.join(root, n), folder) for n in names)
    return sorted(found)


# `atomic_output`'s ``foreign``: the files of an existing output the tool did
# not write (and so may not delete); an empty list lets --overwrite replace it.
Foreign = Callable[[str], List[str]]


def _every_file(path: str) -> List[str]:
    return files_under(path) if os.path.isdir(path) else []


def _check_replaceable(path: str, overwrite: bool, directory: bool,
                       foreign: Optional[Foreign]) -> None:
    if not os.path.lexists(path) or (directory and os.path.isdir(path) and not os.listdir(path)):
        return  # nothing to lose (an empty folder)
    if not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    if os.path.isdir(path) != directory:
        kind = "a folder" if os.path.isdir(path) else "a file"
        raise OutputError(f"{path} is {kind}, not this tool's output; --overwrite does not "
                          "replace it: delete it yourself or choose another path.")
    others = (foreign or (_every_file if directory else lambda _: []))(path)
    if others:
        raise OutputError(
            f"{path} holds files this tool did not write: {abbreviate(others)}; --overwrite "
            "never deletes them: move them away or choose another path."
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_name(path: str) -> str:
    """A temporary sibling of ``path`` (same extension) that `remove_stale_temporaries`
    deletes once its process is gone."""
    base = os.path.basename(path)
    suffix = next((s for s in _KEPT_SUFFIXES if base.endswith(s)), "")
    name = f".{base}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    return os.path.join(os.path.dirname(path), name)


def check_writable(folder: str) -> None:
    """Creates ``folder`` if needed; raises `OutputError` naming it if it cannot be written.

    Exporters call this before a conversion of minutes, so a read-only
    destination fails at once.
    """
    folder = os.path.abspath(os.fspath(folder))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise OutputError(f"Cannot create the folder {folder}: {error.strerror}.") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"The folder {folder} is not writable.")


def prepare_output(path, overwrite: bool = False, inputs: Sequence = (),
                   directory: bool = False, foreign: Optional[Foreign] = None,
                   flag: str = "--output") -> None:
    """Checks, before a long computation, that ``path`` can be written.

    Raises `OutputError` if ``path`` is, contains or lies inside one of
    ``inputs`` (`check_not_input`), `FileExistsError` if it exists and not
    ``overwrite``, `OutputError` if it holds what the tool did not write
    (``foreign``, see `atomic_output`) or its folder cannot be written; removes
    the folder's stale temporaries (of killed writers).
    """
    check_not_input(path, inputs, flag)
    path = os.path.abspath(os.fspath(path))
    _check_replaceable(path, overwrite, directory, foreign)
    check_writable(os.path.dirname(path))
    remove_stale_temporaries(os.path.dirname(path))


def remove_stale_temporaries(folder: str) -> list:
    """Deletes the temporary files and folders of dead processes in ``folder``.

    Returns:
        The removed paths.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in os.listdir(folder):
        match = _TEMPORARY.match(name)
        if not match or process_alive(int(match.group(1))):
            continue
        path = os.path.join(folder, name)
        _remove(path)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` exists (another user's counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def atomic_output(path, overwrite: bool = True, directory: bool = False,
                  foreign: Optional[Foreign] = None) -> Iterator[str]:
    """Yields a temporary path next to ``path``; renames it onto ``path`` on success.

    On any exception the temporary file or folder is removed and ``path`` is
    left as it was, and an `OSError` of the write (disk full, file too large,
    read-only folder) is re-raised as `OutputError` naming ``path``. A file is
    replaced atomically (``os.replace``); an existing folder is moved aside
    first, then deleted. The temporary path keeps ``path``'s extension (Keras
    picks the format by it).

    Args:
        path: the file or folder to write.
        overwrite: replace an existing ``path``; otherwise it is an error.
        directory: ``path`` is a folder (the yielded folder exists and is empty);
            otherwise the yielded file does not exist yet.
        foreign: ``existing path -> the files in it this tool did not write``;
            replacing is refused unless it is empty (an `OutputError` listing
            them). Default: a folder may be replaced only when it holds no file
            at all, a file always.
    """
    path = os.path.abspath(os.fspath(path))
    _check_replaceable(path, overwrite, directory, foreign)
    parent = os.path.dirname(path)
    check_writable(parent)
    temporary = temporary_name(path)
    mask = _umask()
    try:
        if directory:
            os.mkdir(temporary, 0o777 & ~mask)
        yield temporary
        if directory:
            _replace_folder(temporary, path)
        else:
            if not os.path.exists(temporary):
                raise OutputError(f"Nothing was written to {path}.")
            os.chmod(temporary, 0o666 & ~mask)
            os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        if isinstance(error, (OutputError, FileExistsError)):
            raise
        raise OutputError(f"Cannot write {path}: {error.strerror or error}.") from error
    except BaseException:
        _remove(temporary)
        raise


def atomic_write(path, write: Callable[[str], object]) -> None:
    """Calls ``write(temporary_path)``, then renames the temporary file onto ``path``.

    ``write`` is e.g. ``model.save`` or ``model.save_weights``.
    """
    with atomic_output(path) as temporary:
        write(temporary)


def write_text(text: str, path) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_output(path) as temporary:
        with open(temporary, "w") as f:
            f.write(text)


def write_json(value, path, indent: Optional[int] = 2, **dump_kwargs) -> None:
    """Writes ``value`` as JSON (indented unless ``indent=None``) to ``path`` atomically."""
    write_text(json.dumps(value, indent=indent, **dump_kwargs) + "\n", path)


def read_text(path, newline: Optional[str] = None) -> str:
    """The UTF-8 text of ``path``; a missing or undecodable file is a `ValueError` naming it.

    ``newline`` is `open`'s: ``None`` turns ``\r\n`` into ``\n``, ``""`` keeps
    the line endings as they are (to rewrite a file byte for byte).
    """
    try:
        with open(path, encoding="utf-8", newline=newline) as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist.") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}).") from None


def read_json(path, what: Optional[str] = None):
    """Reads a JSON file; a missing or malformed file is a `ValueError` naming it.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. ``"backup state"``).
    """
    label = f"{what} {path}" if what else str(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{label} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{label} is not valid JSON ({error}); is it truncated?") from None


def _replace_folder(source: str, target: str) -> None:
    if not os.path.exists(target):
        os.rename(source, target)
        return
    aside = temporary_name(target)
    os.rename(target, aside)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
