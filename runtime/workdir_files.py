"""A work dir's files, confined to the folder, and its lock: one run at a time.

The folder is opened once (a directory descriptor, never through a symlink) and every file is read, written
and removed by a plain name relative to it, never through a symlink, so neither a link planted inside the
folder nor the folder swapped for one mid-run makes the runtime read or write anything elsewhere. Reads take
regular files only (a FIFO or a device named like a checkpoint is refused, not waited on) and at most the
size the caller allows. The lock is ``flock`` on DIR/lock: a second run on the same folder, in this process
or another, is refused at once with one line; the kernel releases it when its holder dies, even by SIGKILL.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path

from m3ddm.errors import InputError
from m3ddm.files import partial_name, track_partial

LOCK = "lock"
LOCK_SIGNATURE = b"m3ddm work dir lock: a run holds it while it uses this folder\n"
PLAIN_NAME = re.compile(r"\.?[A-Za-z0-9][A-Za-z0-9._-]{0,191}\Z")  # in the folder: no "/", "." or ".."
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class WorkDirError(InputError):
    """A work dir that belongs to another job or another run, whose files are damaged, or that cannot be
    used: never resumed from."""


class Gone(Exception):
    """The folder was removed while it was being locked (a run that finished and cleared it): open it again."""


def _plain(name: str) -> str:
    if not PLAIN_NAME.match(name):  # the callers name only files of the forms this runtime writes
        raise ValueError(f"not a plain file name: {name!r}")
    return name


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symlink"
    if exc.errno == errno.ENOENT:
        return "is missing"
    return f"cannot be used ({exc.strerror or type(exc).__name__})"


class Folder:
    """An open work dir folder; ``path`` as named (for messages), every operation through its descriptor."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd = self.lock_fd = None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise WorkDirError(f"work dir {self.path} {_why(exc)}") from None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise WorkDirError(f"work dir {self.path} is a symlink; name the folder itself "
                               f"({os.path.realpath(self.path)})")
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise WorkDirError(f"work dir {self.path} is a file, not a folder")
        try:
            if st is None:
                self.path.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if st is None and self.path.parent.is_dir():  # made, then removed by a run that finished meanwhile
                raise Gone() from None
            raise WorkDirError(f"work dir {self.path} is missing") from None
        except OSError as exc:
            raise WorkDirError(f"work dir {self.path} {_why(exc)}") from None

    @property
    def dir(self) -> int:
        if self.fd is None:  # never None as a dir_fd: that would mean the current directory
            raise WorkDirError(f"work dir {self.path} was closed")
        return self.fd

    def __del__(self):
        self.close()

    def damaged(self, detail: str) -> WorkDirError:
        return WorkDirError(f"damaged work dir {self.path}: {detail}; pass --restart to start afresh")

    # -- reading ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(os.listdir(self.dir))

    def kind(self, name: str) -> str | None:
        """"file", "folder", "symlink", "other", or None where nothing has that name."""
        try:
            mode = os.stat(name, dir_fd=self.dir, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None
        return ("file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else
                "symlink" if stat.S_ISLNK(mode) else "other")

    def open(self, name: str, limit: int):
        """(binary file object, size) of the regular file ``name``, at most ``limit`` bytes; else damaged."""
        _plain(name)
        try:
            fd = os.open(name, _READ, dir_fd=self.dir)
        except OSError as exc:
            raise self.damaged(f"{name} {_why(exc)}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            os.close(fd)
            raise self.damaged(f"{name} is not a file this runtime wrote "
                               + ("(not a plain file)" if not stat.S_ISREG(st.st_mode) else f"({st.st_size} bytes)"))
        return os.fdopen(fd, "rb"), st.st_size

    def read(self, name: str, limit: int) -> bytes:
        f, _ = self.open(name, limit)
        try:
            with f:
                return f.read(limit + 1)
        except OSError as exc:
            raise self.damaged(f"{name} {_why(exc)}") from None

    def bytes_on_disk(self) -> int:
        total = 0
        for name in self.names():
            st = os.stat(name, dir_fd=self.dir, follow_symlinks=False)
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return total

    # -- writing ---------------------------------------------------------------------------------
    def write(self, name: str, data) -> None:
        """Atomic and durable: the data reach the disk before the name does, the rename before we return;
        the temporary file is made afresh (O_EXCL), never opened through whatever already has its name."""
        tmp = partial_name(_plain(name))
        track_partial(self.path / tmp)
        try:
            self._fresh(tmp, data)
            os.replace(tmp, name, src_dir_fd=self.dir, dst_dir_fd=self.dir)
            try:
                os.fsync(self.dir)
            except OSError:  # a file system that cannot sync a folder: the rename is still atomic
                pass
        except OSError as exc:
            raise WorkDirError(f"work dir {self.path}: cannot write {name} ({exc.strerror or exc})") from None
        finally:
            self._discard(tmp)
            track_partial(self.path / tmp, False)

    def _fresh(self, tmp: str, data) -> None:
        """``data`` in a new file ``tmp``, synced: whatever had that name is removed first, never written through."""
        self.remove(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self.dir)
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())

    def _discard(self, tmp: str) -> None:
        try:
            os.unlink(tmp, dir_fd=self.dir)
        except OSError:
            pass

    def remove(self, name: str) -> None:
        """Unlink ``name`` (a link itself, never its target); nothing there is fine."""
        _plain(name)
        try:
            os.unlink(name, dir_fd=self.dir)
        except FileNotFoundError:
            pass

    def remove_folder(self) -> None:
        """The folder itself, once empty, and only where its name still leads to this folder."""
        try:
            if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.dir).st_ino:
                os.rmdir(self.path)
        except OSError:
            pass

    # -- the lock --------------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold DIR/lock (made if missing, whole: never seen empty) or raise WorkDirError: another run holds it.
        ``Gone`` where the folder was removed meanwhile."""
        for _ in range(5):
            if self.kind(LOCK) is None:
                self._make_lock()
            try:
                fd = os.open(LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.dir)
            except FileNotFoundError:  # removed by a run that finished meanwhile
                continue
            except OSError as exc:
                raise self._bad_lock(_why(exc)) from None
            st = os.fstat(fd)
            try:
                if not stat.S_ISREG(st.st_mode):
                    raise self._bad_lock("is not a plain file")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WorkDirError(f"work dir {self.path} is in use by another run; wait for it to end or name "
                                   f"another folder") from None
            except BaseException:
                os.close(fd)
                raise
            # Locked: but a run clearing the folder may have removed this file between our open and flock.
            if self.kind(LOCK) == "file" and os.stat(LOCK, dir_fd=self.dir).st_ino == st.st_ino:
                self.lock_fd = fd
                return
            os.close(fd)
        raise Gone()

    def _bad_lock(self, why: str) -> WorkDirError:
        # not "pass --restart": a restart needs the lock first
        return WorkDirError(f"work dir {self.path}: its {LOCK} file {why}; remove it or name another folder")

    def _make_lock(self) -> None:
        tmp = partial_name(LOCK)
        try:
            self._fresh(tmp, LOCK_SIGNATURE)
            os.link(tmp, LOCK, src_dir_fd=self.dir, dst_dir_fd=self.dir)  # fails where another run made one
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise Gone() from None
        except OSError as exc:
            raise WorkDirError(f"work dir {self.path}: cannot make its {LOCK} file ({exc.strerror})") from None
        finally:
            self._discard(tmp)

    def marked(self) -> bool:
        """Whether the folder carries our lock file (so it is a work dir of ours, whatever else it holds)."""
        try:
            fd = os.open(LOCK, _READ, dir_fd=self.dir)
        except OSError:
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, len(LOCK_SIGNATURE)) == LOCK_SIGNATURE
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the lock and the folder (idempotent)."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def check_apart(work_dir, input, outputs) -> None:
    """Refuse a work dir that is, holds or lies inside the input or an output (symlinks resolved), before
    anything is made: its clearing would take them along, or an output renamed onto it would fail at the end."""
    if not str(work_dir):
        raise WorkDirError("the work dir has an empty name; name a folder")
    work = Path(os.path.realpath(work_dir))
    for what, path in [("the input", input), *(("the output", p) for p in outputs)]:
        other = Path(os.path.realpath(path))
        relation = ("is" if other == work else "holds" if work in other.parents else
                    "lies inside" if other in work.parents else None)
        if relation:
            raise WorkDirError(f"work dir {work_dir} {relation} {what} {path}; name a folder of its own")
