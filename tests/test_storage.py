"""Videos in and out of object storage (runtime/storage.py) against a real S3-compatible server, never mocked:
moto's server on 127.0.0.1 with IAM enforced (a key denied by a policy), reached through a TCP proxy that cuts
the uploads of keys holding "cut" half-way (a network that fails mid-upload). The commands run as subprocesses
with the AWS variables (credentials, AWS_ENDPOINT_URL) in their environment, as a user's would be; the batch
runs on a Ray cluster whose processes have the same environment (a cluster's nodes have their own credentials:
the batch ships none)."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import media
from conftest import ROOT, one_error_line, outpaint_cli, ray_head
from runtime.storage_objects import ObjectInfo, ObjectUrl, StorageError, local_path, object_info, verify

RUN = ("--steps", "2", "--threads", "1")
IN, OUT = "m3-in", "m3-out"
SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # until the tests close it
server.stop()
"""
POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
    {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{IN}/denied.mp4"}]}


class CuttingProxy:
    """Forwards each connection to the S3 server request by request; a PUT into the output bucket whose line holds
    "cut" gets half its body through, then both connections close, as when the network fails mid-upload."""

    def __init__(self, upstream: tuple):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        host, port = self.listener.getsockname()[:2]
        self.address = f"http://{host}:{port}"
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self, client):
        server = socket.create_connection(self.upstream)
        threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                fields = dict(l.split(b":", 1) for l in lines[1:] if b":" in l)
                length = int({k.strip().lower(): v for k, v in fields.items()}.get(b"content-length", b"0"))
                cut = lines[0].startswith(f"PUT /{OUT}/".encode()) and b"cut" in lines[0]
                server.sendall(head + b"\r\n\r\n")  # the head first: a client may wait for 100-continue
                send = length // 2 if cut else length
                while send > 0:
                    if not buffer:
                        buffer = client.recv(65536)
                        if not buffer:
                            return
                    chunk, buffer = buffer[:send], buffer[send:]
                    server.sendall(chunk)
                    send -= len(chunk)
                if cut:
                    self.cuts += 1
                    return
        except OSError:
            pass
        finally:
            for s in (client, server):
                s.close()

    def close(self):
        self.listener.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(environment of the commands, boto3 client straight to the server): moto's server with IAM enforced after
    the three calls that make its user (s3:* allowed, reading IN/denied.mp4 denied), the proxy in front."""
    pytest.importorskip("s3fs", reason="the storage extra is not installed (pip install '.[storage]')")
    pytest.importorskip("moto", reason="moto (the dev extra's S3 server) is not installed")
    import boto3
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    host, port = proc.stdout.readline().strip().split(":")
    endpoint = f"http://{host}:{port}"
    proxy = CuttingProxy((host, int(port)))
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="none",
                           aws_secret_access_key="none")
        iam.create_user(UserName="m3ddm")
        iam.put_user_policy(UserName="m3ddm", PolicyName="videos", PolicyDocument=json.dumps(POLICY))
        key = iam.create_access_key(UserName="m3ddm")["AccessKey"]
        aws = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": proxy.address, "AWS_MAX_ATTEMPTS": "2",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
               "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"])
        for bucket in (IN, OUT):
            client.create_bucket(Bucket=bucket)
        command_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | aws
        yield command_env, client, proxy
    finally:
        proxy.close()
        proc.stdin.close()
        proc.wait(30)


@pytest.fixture(scope="module")
def clips(store, tmp_path_factory):
    """{name: local file} of the clips, each also put in the input bucket under clips/ (cut.mp4 and denied.mp4
    at the top)."""
    folder = tmp_path_factory.mktemp("storage-in")
    client = store[1]
    made = {}
    for i, key in enumerate(("clips/clip0.mp4", "clips/clip1.mp4", "clips/vanish.mp4", "cut.mp4", "denied.mp4")):
        path = folder / key.rsplit("/", 1)[-1]
        media.write(path, media.scene(20, 96, 54, seed=60 + i), fps=24)
        client.upload_file(str(path), IN, key)
        made[path.stem] = path
    client.put_object(Bucket=IN, Key="clips/notes.txt", Body=b"not a video")  # left out by its suffix
    return made


@pytest.fixture(scope="module")
def references(engines, clips, tmp_path_factory):
    """The outpaint command's frames of the clips that succeed, from local files."""
    out = tmp_path_factory.mktemp("storage-ref")
    return {name: outpaint_cli(clips[name], out / f"{name}.mp4", engines, *RUN)[0] for name in ("clip0", "clip1")}


@pytest.fixture(scope="module")
def cluster(store):
    """A Ray cluster whose processes have the store's credentials in their environment."""
    yield from ray_head(store[0])


def fetch(client, key, folder):
    path = folder / key.replace("/", "_")
    client.download_file(OUT, key, str(path))
    return media.decode(path)[0]


def keys(client, bucket, prefix=""):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def batch_cmd(inputs, out, engines, address, *args):
    return [sys.executable, "-m", "runtime.batch", *inputs, "--out-dir", out, "--engines", str(engines),
            "--address", address, *RUN, *args, "--quiet"]


def test_a_batch_from_a_prefix_to_a_prefix_gives_the_command_lines_frames_and_each_failure_fails_alone(
        store, clips, references, engines, cluster, tmp_path):
    """One batch: the prefix's two clips succeed, with the local command's frames; an object removed after the
    listing, a key that never was, a bucket that does not exist, a key the credentials may not read and an upload
    that breaks off each fail alone, one line each, no object written for them. A rerun skips what exists."""
    env, client, proxy = store
    work = tmp_path / "work"
    inputs = [f"s3://{IN}/clips/", f"s3://{IN}/gone.mp4", "s3://m3-no-such-bucket/lost.mp4", f"s3://{IN}/denied.mp4",
              f"s3://{IN}/cut.mp4"]
    proc = subprocess.Popen(batch_cmd(inputs, f"s3://{OUT}/run/", engines, cluster, "--workers", "1", "--work-dir",
                                      work), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    t0 = time.monotonic()
    while not (work / "report.jsonl").exists():  # listed, and no job started: Ray is connected after this
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 120
        time.sleep(0.01)
    client.delete_object(Bucket=IN, Key="clips/vanish.mp4")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    lines = {json.loads(l)["input"]: json.loads(l) for l in (work / "report.jsonl").read_text().splitlines()}
    errors = {url.rsplit("/", 1)[-1]: line["error"] for url, line in lines.items() if line["status"] == "failed"}
    assert sorted(errors) == ["cut.mp4", "denied.mp4", "gone.mp4", "lost.mp4", "vanish.mp4"], lines
    assert "no such object" in errors["vanish.mp4"] and "no such object" in errors["gone.mp4"]
    assert "bucket m3-no-such-bucket does not exist" in errors["lost.mp4"]
    assert "access denied" in errors["denied.mp4"]
    assert errors["cut.mp4"].startswith(f"cannot upload to s3://{OUT}/run/cut.mp4") and proxy.cuts >= 1
    assert all("\n" not in e for e in errors.values())
    for name in ("clip0", "clip1"):
        line = lines[f"s3://{IN}/clips/{name}.mp4"]
        assert line["status"] == "succeeded" and line["outputs"] == {"9x16": f"s3://{OUT}/run/{name}.mp4"}
        assert np.array_equal(fetch(client, f"run/{name}.mp4", tmp_path), references[name]), name
    assert keys(client, OUT, "run/") == ["run/clip0.mp4", "run/clip1.mp4"]  # none for the failed videos
    assert not list((work / ".inputs").iterdir()) and not list((work / ".work").iterdir())
    assert not list(work.glob("*.mp4"))  # the uploaded outputs' local copies removed

    again = subprocess.run(batch_cmd([f"s3://{IN}/clips/"], f"s3://{OUT}/run", engines, cluster, "--work-dir", work),
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    lines = [json.loads(l) for l in (work / "report.jsonl").read_text().splitlines()]
    assert [(l["input"], l["status"], l["outputs"]) for l in lines] == [
        (f"s3://{IN}/clips/{n}.mp4", "skipped", {"9x16": f"s3://{OUT}/run/{n}.mp4"}) for n in ("clip0", "clip1")]


def outpaint(source, target, engines, env, *args):
    return subprocess.run([sys.executable, "-m", "runtime.outpaint", source, "-o", target, "--engines", str(engines),
                           *RUN, *args, "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_outpaint_from_an_object_to_an_object(store, clips, references, engines, tmp_path):
    env, client, _ = store
    res = outpaint(f"s3://{IN}/clips/clip0.mp4", f"s3://{OUT}/single/clip0.mp4", engines, env, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["outputs"] == {"9x16": f"s3://{OUT}/single/clip0.mp4"}
    assert np.array_equal(fetch(client, "single/clip0.mp4", tmp_path), references["clip0"])
    assert not list((Path(env["XDG_CACHE_HOME"]) / "m3ddm" / "scratch").iterdir())  # the scratch folder removed


@pytest.mark.parametrize("source,target,code,words", [
    (f"s3://{IN}/gone.mp4", f"s3://{OUT}/fail/gone.mp4", 2, f"cannot read s3://{IN}/gone.mp4: no such object"),
    ("s3://m3-no-such-bucket/a.mp4", f"s3://{OUT}/fail/a.mp4", 2, "bucket m3-no-such-bucket does not exist"),
    (f"s3://{IN}/clips/clip1.mp4", "s3://m3-no-such-bucket/a.mp4", 2, "bucket m3-no-such-bucket does not exist"),
    (f"s3://{IN}/denied.mp4", f"s3://{OUT}/fail/denied.mp4", 2, "access denied"),
    (f"s3://{IN}/cut.mp4", f"s3://{OUT}/fail/cut.mp4", 1, f"cannot upload to s3://{OUT}/fail/cut.mp4"),
    ("gs://m3-in/a.mp4", f"s3://{OUT}/fail/a.mp4", 2, "gs:// needs the gcsfs package: pip install gcsfs"),
])
def test_outpaint_fails_in_one_line_and_writes_no_object(store, clips, engines, source, target, code, words):
    env, client, _ = store
    res = outpaint(source, target, engines, env)
    line = one_error_line(res)
    assert res.returncode == code and words in line, line
    assert keys(client, OUT, "fail/") == []


def test_urls_name_buckets_keys_and_prefixes():
    url = ObjectUrl.parse("s3://in/clips/a.mp4")
    assert (url.bucket, url.key, url.stem, url.is_prefix, str(url.child("b.mp4"))) == \
        ("in", "clips/a.mp4", "a", False, "s3://in/clips/b.mp4")
    assert ObjectUrl.parse("s3://in/clips/").is_prefix and str(ObjectUrl.parse("gs://in").child("a")) == "gs://in/a"
    assert local_path("file:///data/a%20b.mp4") == Path("/data/a b.mp4") and local_path("s3://a/b") is None
    for text, words in [("ftp://host/a.mp4", "ftp:// is not a storage"), ("s3:///key", "names no bucket"),
                        ("file://host/a.mp4", "a path on this machine")]:
        with pytest.raises(StorageError, match=words):
            local_path(text) if text.startswith("file") else ObjectUrl.parse(text)


@pytest.mark.parametrize("scheme,meta,checksums", [
    ("s3", {"ContentLength": 5, "ETag": '"5d41402abc4b2a76b9719d911017c592"'},
     (("md5", "5d41402abc4b2a76b9719d911017c592"),)),
    ("s3", {"ContentLength": 5, "ETag": '"0123456789abcdef0123456789abcdef-3"', "ChecksumCRC32": "NhCmhg==",
            "ChecksumType": "FULL_OBJECT"}, (("crc32", "NhCmhg=="),)),  # multipart: the ETag is of the parts
    ("s3", {"ContentLength": 5, "ETag": '"0123456789abcdef0123456789abcdef"', "ServerSideEncryption": "aws:kms",
            "ChecksumSHA256": "x-2", "ChecksumType": "COMPOSITE"}, ()),  # KMS: no MD5; composite: of the parts
    ("gs", {"size": 5, "md5Hash": "XUFAKrxLKna5cZ2REBfFkg=="}, (("md5", "5d41402abc4b2a76b9719d911017c592"),)),
    ("az", {"size": 5, "content_settings": {"content_md5": bytearray.fromhex("5d41402abc4b2a76b9719d911017c592")}},
     (("md5", "5d41402abc4b2a76b9719d911017c592"),)),
])
def test_only_whole_object_checksums_are_trusted(scheme, meta, checksums, tmp_path):
    info = object_info(scheme, meta)
    assert info == ObjectInfo(5, checksums)
    (tmp_path / "hello").write_bytes(b"hello")
    verify(tmp_path / "hello", info, "s3://b/hello")  # the bytes of "hello" match every checksum above
    (tmp_path / "hello").write_bytes(b"hellO")
    if checksums:
        with pytest.raises(StorageError, match="do not match the store's"):
            verify(tmp_path / "hello", info, "s3://b/hello")
    (tmp_path / "hello").write_bytes(b"hell")
    with pytest.raises(StorageError, match="4 bytes came of the 5"):
        verify(tmp_path / "hello", info, "s3://b/hello")
