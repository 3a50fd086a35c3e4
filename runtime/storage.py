"""Videos in and out of object storage: ``s3://bucket/key`` (and ``gs://``, ``az://``) for the commands' inputs and
outputs, through fsspec (the ``storage`` extra: fsspec and s3fs; gcsfs or adlfs for the other two).

An input is downloaded to local scratch once per job and checked against what the store says of it (its size, and
its MD5 or full-object checksum where the store gives one); its size is checked from its metadata first. An output
is written locally and uploaded whole at the end: an object store makes an object visible only when its upload
completes (S3's single PUT or completed multipart upload, GCS's finalised resumable upload, Azure's committed block
list), so a failed run leaves no object and an object that exists is complete. ``file://`` is a local path.

Credentials and endpoints are each store's own: for S3 the AWS variables and files (``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ...), which botocore reads itself; nothing here takes
them from a command line. Every failure is one line: ``StorageError`` (exit 2) for what the store refuses (no such
bucket or object, access denied, an empty or changed object), ``TransferError`` (exit 1) for a store that cannot be
reached or a transfer that broke off.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from functools import cache
from pathlib import Path, PurePosixPath

from m3ddm.errors import InputError, M3DDMError, first_line
from runtime.storage_objects import SCHEMES, ObjectInfo, object_info, verify
from runtime.storage_objects import ObjectUrl as ObjectUrl  # the commands' names for what this module takes
from runtime.storage_objects import StorageError as StorageError
from runtime.storage_objects import TransferError as TransferError
from runtime.storage_objects import is_url as is_url
from runtime.storage_objects import localize as localize

EXTRA = "pip install 'm3ddm-runtime[storage]'"
# Room left on the scratch disk beyond the object itself: the output and the work dir are written beside it.
SCRATCH_MARGIN = 256 * 2**20


@cache
def filesystem(scheme: str):
    """This process's fsspec filesystem for ``scheme``, configured from the environment as its library reads it."""
    package = SCHEMES[scheme]
    try:
        import fsspec
        cls = fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError):
        wanted = EXTRA if package == "s3fs" else f"pip install {package}"
        raise StorageError(f"{scheme}:// needs the {package} package: {wanted}") from None
    # No listing cache: an object removed or written by another process must be seen as it is now.
    return cls(use_listings_cache=False, skip_instance_cache=True)


def _translate(exc: BaseException, url, doing: str) -> M3DDMError:
    """One line for a store's failure (s3fs turns S3's error codes into OSError subclasses)."""
    names = {c.__name__ for c in type(exc).__mro__}
    reason = first_line(exc)
    if isinstance(exc, M3DDMError):
        return exc
    if isinstance(exc, FileNotFoundError):
        if "bucket does not exist" in reason.lower() or not _bucket_exists(ObjectUrl.parse(url)):
            return StorageError(f"cannot {doing} {url}: bucket {ObjectUrl.parse(url).bucket} does not exist")
        return StorageError(f"cannot {doing} {url}: no such object")
    if isinstance(exc, PermissionError):
        return StorageError(f"cannot {doing} {url}: access denied to this process's credentials ({reason})")
    if "NoCredentialsError" in names:
        return StorageError(f"cannot {doing} {url}: no credentials (for S3: AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the machine's role)")
    if "ClientError" in names:  # an error code s3fs does not translate: the store's own words
        return StorageError(f"cannot {doing} {url}: {reason}")
    return TransferError(f"cannot {doing} {url}: {reason}")


def _bucket_exists(url: ObjectUrl) -> bool:
    """Whether the bucket of a URL the store did not find exists (an answer to HEAD has no body to say which
    was missing); True when that cannot be told."""
    fs = filesystem(url.scheme)
    try:
        if SCHEMES[url.scheme] == "s3fs":
            fs.call_s3("list_objects_v2", Bucket=url.bucket, MaxKeys=1)
            return True
        return bool(fs.exists(url.bucket))
    except FileNotFoundError:
        return False
    except Exception:
        return True


@contextmanager
def _failures(url, doing: str):
    try:
        yield
    except Exception as exc:
        raise _translate(exc, url, doing) from None


def stat(url: ObjectUrl) -> ObjectInfo:
    """The object's size and checksums; StorageError when there is none (or a prefix is named)."""
    fs = filesystem(url.scheme)
    with _failures(url, "read"):
        if SCHEMES[url.scheme] == "s3fs":  # the whole answer: fsspec's info drops the checksums and encryption
            meta = fs.call_s3("head_object", Bucket=url.bucket, Key=url.key, ChecksumMode="ENABLED")
        else:
            meta = fs.info(url.path)
            if meta.get("type") != "file":
                raise StorageError(f"{url} is a prefix, not an object: end it with / to outpaint what it holds")
    return object_info(url.scheme, meta)


def exists(url: ObjectUrl) -> bool:
    """An object is at ``url`` (complete, as uploads are whole)."""
    fs = filesystem(url.scheme)
    with _failures(url, "read"):
        try:
            return fs.info(url.path).get("type") == "file"
        except FileNotFoundError as exc:
            if "bucket does not exist" in first_line(exc).lower():
                raise
            return False


def check_bucket(url: ObjectUrl, doing: str) -> None:
    """Refuse, before any work, a URL whose bucket does not exist or cannot be reached."""
    fs = filesystem(url.scheme)
    with _failures(url, doing):
        fs.info(url.bucket)


def list_objects(url: ObjectUrl, suffixes) -> list[ObjectUrl]:
    """The objects directly under a prefix (not in its sub-prefixes, as folders) whose names end with one of
    ``suffixes`` and do not start with a dot, sorted by key."""
    fs = filesystem(url.scheme)
    with _failures(url, "list"):
        if not _bucket_exists(url):  # an empty listing would hide a missing bucket
            raise FileNotFoundError("The specified bucket does not exist")
        try:
            entries = fs.ls(url.path, detail=True)
        except FileNotFoundError:  # a prefix that holds nothing: no videos, as an empty folder
            entries = []
    found = []
    for entry in entries:
        name = PurePosixPath(entry["name"]).name
        if entry.get("type") == "file" and PurePosixPath(name).suffix.lower() in suffixes \
                and not name.startswith("."):
            found.append(url.child(name))
    return sorted(found, key=lambda u: u.key)


def scratch_name(url: ObjectUrl) -> str:
    """A local file name for the object: its own, unless it is no plain name (the suffix tells FFmpeg nothing,
    but a user reading a message does)."""
    name = url.name
    return name if name not in ("", ".", "..") and "\x00" not in name else "input" + PurePosixPath(name).suffix


def download(url: ObjectUrl, folder: Path) -> Path:
    """The object as a local file in ``folder``, checked against the store's size and checksum; its size is
    checked from its metadata first (not empty, fits the scratch disk). Nothing is left on failure."""
    info = stat(url)
    if info.size == 0:
        raise StorageError(f"input {url} is empty (0 bytes)")
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if info.size + SCRATCH_MARGIN > free:
        raise StorageError(f"input {url} ({info.size} bytes) does not fit in {folder} ({free} bytes free): free "
                           "space or name another --work-dir")
    local = folder / scratch_name(url)
    try:
        with _failures(url, "download"):
            filesystem(url.scheme).get_file(url.path, str(local))
        verify(local, info, url)
    except BaseException:
        local.unlink(missing_ok=True)
        raise
    return local


def upload(path: Path, url: ObjectUrl) -> None:
    """``path`` to ``url``, whole: the object appears only when the upload completes (a failed multipart upload
    is aborted), so a failure leaves the object that was there, or none."""
    with _failures(url, "upload to"):
        filesystem(url.scheme).put_file(str(path), url.path)


@contextmanager
def staged_input(source: str, scratch: Path):
    """A job's input as a local path: a URL downloaded into ``scratch`` (removed after the job), a path as it is.
    A one-line error about the downloaded copy names the URL, not the scratch file."""
    if not is_url(source):
        yield source
        return
    url = ObjectUrl.parse(source)
    local = download(url, scratch)
    try:
        yield str(local)
    except InputError as exc:
        message = first_line(exc)
        if str(local) not in message:
            raise
        raise type(exc)(message.replace(str(local), str(url))) from None
    finally:
        local.unlink(missing_ok=True)


def upload_all(uploads: dict) -> None:
    """{local path: ObjectUrl}, each uploaded whole; when one fails, those this call uploaded are removed again
    (best effort), so a failed run leaves none of its outputs."""
    done: list[ObjectUrl] = []
    try:
        for path, url in uploads.items():
            upload(Path(path), url)
            done.append(url)
    except BaseException:
        for url in done:
            try:
                filesystem(url.scheme).rm_file(url.path)
            except Exception:
                pass
        raise


def publish(outputs: dict, uploads: dict) -> dict:
    """{label: local path} written by a run -> {label: URL, or the path where ``uploads`` ({local path: URL})
    names none}: those files uploaded whole (``upload_all``) and removed here, uploaded or not."""
    pairs = {p: ObjectUrl.parse(str(uploads[p])) for p in outputs.values() if p in uploads}
    try:
        upload_all(pairs)
    finally:
        for p in pairs:
            Path(p).unlink(missing_ok=True)
    return {label: str(uploads.get(p, p)) for label, p in outputs.items()}


class Staging:
    """One command's URLs as local files: an input downloaded into a scratch folder of its own, outputs written
    there and uploaded whole when the run succeeds (``publish``); ``close`` removes the scratch folder."""

    def __init__(self, root: Path):
        self.root = root
        self.folder: Path | None = None
        self.target: ObjectUrl | None = None

    def _scratch(self) -> Path:
        if self.folder is None:
            import tempfile
            self.root.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
        return self.folder

    def input(self, source: str) -> str:
        """The local path of ``source``: a path as it is, a URL's object downloaded."""
        source = localize(source)
        return str(download(ObjectUrl.parse(source), self._scratch() / "in")) if is_url(source) else source

    def output(self, target: str) -> str:
        """The local path to write ``target`` to: a path as it is; for a URL a scratch file, whose outputs (the
        _WxH names beside it too) ``publish`` uploads beside the URL. The URL's bucket is checked now."""
        target = localize(target)
        if not is_url(target):
            return target
        url = ObjectUrl.parse(target)
        if url.is_prefix:
            raise StorageError(f"output {url} ends with /: name the object (e.g. {url.child('out.mp4')})")
        check_bucket(url, "write")
        self.target = url
        (self._scratch() / "out").mkdir(exist_ok=True)
        return str(self._scratch() / "out" / scratch_name(url))

    def uploads(self, outputs) -> dict:
        """{local path: URL} of the run's outputs (paths) that go to the URL given to ``output``."""
        if self.target is None:
            return {}
        return {str(p): self.target.child(Path(p).name) for p in outputs}

    def refuse_existing(self, outputs) -> None:
        """--no-overwrite: refuse an output whose object exists."""
        for url in self.uploads(outputs).values():
            if exists(url):
                raise StorageError(f"output {url} exists (--no-overwrite)")

    def publish(self, outputs: dict) -> dict:
        return publish(outputs, self.uploads(outputs.values()))

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
