"""Object storage's pure side: URLs (``scheme://bucket/key``), what a store's metadata says of an object (its size
and whole-object checksums), and the check of a downloaded file against it. runtime/storage.py does the I/O.
"""
from __future__ import annotations

import base64
import hashlib
import re
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from m3ddm.errors import InputError, M3DDMError
from m3ddm.files import file_hash

# scheme -> the fsspec implementation's package, named in the line that asks for it
SCHEMES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
           "abfss": "adlfs"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# S3's ETag is the MD5 of the bytes only for a single-part upload without KMS or customer keys.
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_KMS = ("aws:kms", "aws:kms:dsse")


class StorageError(InputError):
    """The store refuses the URL: no such bucket or object, access denied, an empty or changed object."""


class TransferError(M3DDMError):
    """The store cannot be reached, or a download or upload broke off (a network error): nothing was written."""


def is_url(text) -> bool:
    return bool(_URL.match(str(text)))


def local_path(text) -> Path | None:
    """The local path a ``file://`` URL names (None for anything else): such a URL is handled as that path."""
    if not str(text).lower().startswith("file://"):
        return None
    parts = urlsplit(str(text))
    if parts.netloc not in ("", "localhost"):
        raise StorageError(f"{text}: a file:// URL names a path on this machine, not on {parts.netloc}")
    return Path(unquote(parts.path))


def localize(text) -> str:
    """``text`` with a ``file://`` URL turned into its path; anything else as it is."""
    path = local_path(text)
    return str(path) if path is not None else str(text)


@dataclass(frozen=True)
class ObjectUrl:
    """``scheme://bucket/key``; a key that is empty or ends with / is a prefix (a folder of objects)."""
    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, text) -> ObjectUrl:
        match = _URL.match(str(text))
        if not match:
            raise StorageError(f"{text} is not a URL")
        scheme = match.group(1).lower()
        if scheme not in SCHEMES:
            raise StorageError(f"{text}: {scheme}:// is not a storage this runtime reads (s3://, gs://, az://, "
                               "file://)")
        bucket, _, key = str(text)[match.end():].partition("/")
        if not bucket:
            raise StorageError(f"{text} names no bucket")
        return cls(scheme, bucket, key)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    @property
    def path(self) -> str:
        """What fsspec takes: the URL without its scheme."""
        return f"{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    def child(self, name: str) -> ObjectUrl:
        """The object ``name`` under this prefix (beside this object, for a key)."""
        prefix = self.key if self.is_prefix else self.key.rpartition("/")[0] + "/" * ("/" in self.key)
        return ObjectUrl(self.scheme, self.bucket, prefix + name)


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says of an object: its size and the checksums of its bytes it gives, as
    ((algorithm, expected value), ...): md5 in hex, the others base64 as S3 and GCS write them."""
    size: int
    checksums: tuple = ()


def object_info(scheme: str, meta: dict) -> ObjectInfo:
    """The size and checksums in a store's metadata of an object (S3's HeadObject answer, fsspec's info of the
    others). Only checksums of the whole object count: a multipart ETag or a composite checksum (``...-N``) is
    of the parts, and S3's ETag of a KMS- or customer-key-encrypted object is no MD5."""
    size = int(meta.get("ContentLength", meta.get("size", 0)) or 0)
    found = []
    if SCHEMES.get(scheme) == "s3fs":
        etag = str(meta.get("ETag", "")).strip('"').lower()
        if _MD5_HEX.match(etag) and meta.get("ServerSideEncryption") not in _KMS \
                and not meta.get("SSECustomerAlgorithm"):
            found.append(("md5", etag))
        for algorithm in ("sha256", "sha1", "crc32"):
            value = meta.get(f"Checksum{algorithm.upper()}")
            if value and "-" not in value and meta.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
                found.append((algorithm, value))
    elif meta.get("md5Hash"):  # GCS: base64 of the MD5
        found.append(("md5", base64.b64decode(meta["md5Hash"]).hex()))
    elif isinstance(meta.get("content_settings"), dict) and meta["content_settings"].get("content_md5"):  # Azure
        found.append(("md5", bytes(meta["content_settings"]["content_md5"]).hex()))
    return ObjectInfo(size, tuple(found))


class _Crc32:
    """hashlib's shape over zlib.crc32, for S3's CRC32 checksum (big-endian, base64)."""

    def __init__(self):
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def file_checksum(path: Path, algorithm: str) -> str:
    """``path``'s checksum as ``object_info`` writes the store's: md5 in hex, the others base64."""
    h = file_hash(path, _Crc32() if algorithm == "crc32" else hashlib.new(algorithm), 8 * 2**20)
    return h.digest().hex() if algorithm == "md5" else base64.b64encode(h.digest()).decode()


def verify(path: Path, info: ObjectInfo, url) -> None:
    """Refuse a download that is not the object the store described (cut short, or replaced meanwhile)."""
    size = path.stat().st_size
    if size != info.size:
        raise StorageError(f"{url}: {size} bytes came of the {info.size} the store announced (the object changed "
                           "or the download was cut): run again")
    for algorithm, expected in info.checksums[:1]:  # one whole-object checksum is proof enough
        if file_checksum(path, algorithm) != expected:
            raise StorageError(f"{url}: the downloaded bytes do not match the store's {algorithm} (the object "
                               "changed while it was read): run again")
