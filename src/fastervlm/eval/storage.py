"""How the evaluation writes its files: JSON replaced atomically or created once, JSONL appended line by line, and
one clear error when the file system refuses a write.

Every write of paid work (a prediction, a judgment) is written unbuffered and fsynced before the next one starts. A folder
that cannot be written (read-only mount, `chmod a-w`, `chattr +i`, a full disk) is reported in one line that names
the folder and what to do, instead of a traceback from deep inside the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError

_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted: is it immutable? see lsattr",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}
"""The OS errors that mean "this place cannot be written", in words."""


class NotWritableError(FasterVLMError):
    """A folder the evaluation must write into refuses writes."""


@contextmanager
def writing(folder: Path, fix: str) -> Iterator[None]:
    """Writes under `folder`: a refusal by the file system becomes one line naming the folder, why, and `fix`."""
    try:
        yield
    except OSError as err:
        reason = _REASONS.get(err.errno or 0)
        if reason is None:
            raise
        raise NotWritableError(f"cannot write in {folder} ({reason}): {fix}") from None


def _write_all(fd: int, data: bytes) -> None:
    """All of `data` to the file descriptor, unbuffered (a refused write leaves nothing pending to flush at close,
    which would raise a second time), then fsynced."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _temp_json(path: Path, data: Any) -> str:
    """`data` as JSON in a fsynced temporary file beside `path`; its name. Nothing is left behind when a write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        _write_all(fd, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return name


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    os.replace(_temp_json(path, data), path)


def create_json_once(path: Path, data: Any) -> bool:
    """Create `path` with `data` unless it exists (atomically, across processes and ranks); True if created.
    Nothing is written when the file is already there (a read-only run folder stays untouched)."""
    if path.exists():
        return False
    tmp = _temp_json(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of a JSONL file; a torn last line (a killed writer) is skipped."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return  # torn final line: the writer was killed mid-write
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise FasterVLMError(_damaged_line(path, number, f"is not JSON ({err})")) from err
            if not isinstance(record, dict) or "id" not in record:
                raise FasterVLMError(_damaged_line(path, number, "is not a JSON object with an id"))
            yield record


def _damaged_line(path: Path, number: int, problem: str) -> str:
    return (f"{path} line {number} {problem}: the file was edited or damaged. Repair or delete that line and run the "
            "command again (a deleted prediction is made again, a deleted judgment is judged again, from the judge "
            "cache when it holds it).")


class JsonlAppender:
    """Append records to a JSONL file, one line each, written and fsynced before `write` returns.

    Holds an exclusive lock so that two processes never write the same file, and cuts a torn last line
    (left by a killed writer) before appending. Writes are unbuffered and all or nothing per call: when the file
    system refuses one (read-only, full), what it had written of the call is cut off again and a NotWritableError
    names the folder and says `fix`; closing then has nothing left to write.
    """

    def __init__(self, path: Path, fix: str = "make it writable (or free some space) and run the command again.") -> None:
        self.path = path
        self._fix = fix
        with writing(path.parent, fix):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise FasterVLMError(
                f"{path} is being written by another process: wait for it to finish, or stop it, before resuming."
            ) from None
        with writing(path.parent, fix):
            self._cut_torn_line()

    def _cut_torn_line(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        data = os.pread(self._fd, size, 0)
        if not data.endswith(b"\n"):
            os.ftruncate(self._fd, data.rfind(b"\n") + 1)

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """Append the records in one write, fsynced once (a batch's answers); nothing for none."""
        if not records:
            return
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
        with writing(self.path.parent, self._fix):
            size = os.fstat(self._fd).st_size
            try:
                _write_all(self._fd, data)
            except OSError:
                with contextlib.suppress(OSError):  # a full disk still lets a file shrink
                    os.ftruncate(self._fd, size)
                raise

    def close(self) -> None:
        os.close(self._fd)  # closing releases the lock

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
