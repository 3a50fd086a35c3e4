"""The service's HTTP edges, tried as a hostile client would, on a real server over real sockets: odd query
numbers, path-like ids, malformed, cut-off and stalled multipart bodies, repeated fields, wrong content types
(each one line, never a 5xx, nothing left in DATA/uploads); concurrent DELETEs of one job (one wins, the rest
404); uploads streamed under --data, never the system temp folder; a ratio given twice is one output, from the
service, the CLI and the API alike; a result URL is percent-encoded."""
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import media
from conftest import outpaint_cli
from test_service_http import finished, server, submit
from test_service_jobs import cli_output, clip, outpainter, short_clip  # noqa: F401 (fixtures)

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the service extra is not installed (pip install '.[serve]')")
B = "XyZ"


@pytest.fixture(scope="module")
def edges(engines, tmp_path_factory):
    """One server for the module, --upload-timeout 1, its TMPDIR an empty folder of its own."""
    root = tmp_path_factory.mktemp("edges")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(root / "tmp"))
        (root / "tmp").mkdir()
        with server(engines, root / "data", "--upload-timeout", "1") as client:
            client.data, client.tmp = root / "data", root / "tmp"
            yield client
    assert "Traceback" not in client.log, client.log


def part(name, value: bytes, filename=None, boundary=B) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def form(*parts, boundary=B, end=True) -> bytes:
    return b"".join(parts) + (f"--{boundary}--\r\n".encode() if end else b"")


def raw(client, request: bytes, then: bytes = b"", pause: float = 0.0) -> bytes:
    """Send ``request``, wait ``pause`` s, send ``then``; the whole answer as bytes."""
    with socket.create_connection((client.base_url.host, client.base_url.port), timeout=30) as s:
        s.sendall(request)
        time.sleep(pause)
        try:
            s.sendall(then)
        except OSError:
            pass  # the server answered and closed first
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


def post(body: bytes, content_type=f"multipart/form-data; boundary={B}", length=None) -> bytes:
    length = len(body) if length is None else length
    return (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode() + body


VIDEO = part("file", b"\0" * 1000, "clip.mp4")
HOSTILE_FORMS = {
    "no boundary": (post(form(VIDEO), content_type="multipart/form-data"), 422),
    "json": (post(b'{"file": "x"}', content_type="application/json"), 415),
    "urlencoded": (post(b"ratio=9:16", content_type="application/x-www-form-urlencoded"), 415),
    "no content type": (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc", 415),
    "empty form": (post(b""), 422),
    "no file": (post(form(part("ratio", b"9:16"))), 422),
    "two files": (post(form(VIDEO, VIDEO)), 422),
    "a field twice": (post(form(VIDEO, part("steps", b"3"), part("steps", b"900"))), 422),
    "a part without a name": (post(form(VIDEO, b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n")), 422),
    "no closing boundary": (post(form(VIDEO, part("steps", b"3"), end=False)), 422),
    "garbage": (post(b"\xff" * 5000), 422),
    "not UTF-8": (post(form(VIDEO, part("ratio", b"9:16\xff"))), 422),
    "unknown field": (post(form(VIDEO, part("path", b"/etc/passwd"))), 422),
    "huge steps": (post(form(VIDEO, part("steps", b"9" * 30))), 422),
    "negative seed": (post(form(VIDEO, part("seed", b"-1"))), 422),
    "seed past 2^63": (post(form(VIDEO, part("seed", str(2**63).encode()))), 422),
    "exponent": (post(form(VIDEO, part("steps", b"1e2"))), 422),
    "empty value": (post(form(VIDEO, part("steps", b""))), 422),
    "full-width digits": (post(form(VIDEO, part("ratio", "９:１６".encode()))), 422),
    "path in a ratio": (post(form(VIDEO, part("ratio", b"9:16/../../x"))), 422),
    "nine ratios": (post(form(VIDEO, part("ratio", b",".join(b"%d:1" % k for k in range(1, 10))))), 422),
    "NaN guidance": (post(form(VIDEO, part("guidance", b"nan,4"))), 422),
    "fields over 64 KB": (post(form(part("strides", b"1" * 70000), VIDEO)), 413),
    "declared over the limit": (post(b"", length=3 * 2**40), 413),
}


@pytest.mark.parametrize("case", list(HOSTILE_FORMS))
def test_a_hostile_form_gets_one_line_and_leaves_nothing(edges, case):
    request, status = HOSTILE_FORMS[case]
    answer = raw(edges, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    detail = httpx.Response(200, content=body).json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    assert list((edges.data / "uploads").iterdir()) == [] and list((edges.data / "jobs").iterdir()) == []


def test_odd_numbers_and_path_like_ids_are_refused_or_not_found(edges):
    for query in ("offset=100000000000000000000", "offset=-1", "limit=0", "limit=501", "limit=x", "offset=1.5"):
        res = edges.get(f"/v1/jobs?{query}")
        assert res.status_code == 422 and "\n" not in res.json()["detail"], (query, res.text)
    assert edges.get(f"/v1/jobs?offset={2**63 - 1}&limit=500").json()["jobs"] == []
    for path in ("..%2F..%2Fjobs.sqlite3", "%00", "x" * 100, "%E2%80%AE", "uploads", ".."):
        for method in ("GET", "DELETE"):
            assert edges.request(method, f"/v1/jobs/{path}").status_code == 404, (method, path)
        assert edges.get(f"/v1/jobs/{path}/result/..%2F..%2Fjobs.sqlite3").status_code == 404


def test_an_upload_streams_under_data_and_a_stalled_one_is_dropped(edges):
    body = form(part("file", os.urandom(2 * 2**20), "../../etc/passwd.mp4"), part("steps", b"2"))
    half, seen = len(body) // 2, {}
    before = sorted(edges.tmp.iterdir())  # (ONNX Runtime leaves a .ses file there when it loads)

    def look():  # while the upload is half sent
        time.sleep(0.5)
        seen["uploads"] = [p.stat().st_size for p in (edges.data / "uploads").iterdir()]
        seen["tmp"] = sorted(edges.tmp.iterdir())
        seen["open"] = [os.readlink(fd) for fd in (Path("/proc") / str(edges.proc.pid) / "fd").iterdir()]
    looker = threading.Thread(target=look)
    looker.start()
    answer = raw(edges, post(body[:half], length=len(body)), body[half:], pause=0.8)
    looker.join()
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]
    assert not [f for f in seen["open"] if f.startswith(str(edges.tmp))], seen["open"]  # not even unnamed
    # on its way, under --data
    assert seen["tmp"] == before and len(seen["uploads"]) == 1 and seen["uploads"][0] > 2**19
    job_id = httpx.Response(200, content=answer.partition(b"\r\n\r\n")[2]).json()["id"]
    assert finished(edges, job_id)["status"] == "failed"
    assert edges.delete(f"/v1/jobs/{job_id}").status_code == 200

    t0 = time.monotonic()
    answer = raw(edges, post(body[:half], length=len(body)))  # and then nothing: --upload-timeout 1
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - t0 < 3, answer[:300]
    assert list((edges.data / "uploads").iterdir()) == [] and sorted(edges.tmp.iterdir()) == before


def test_concurrent_deletes_of_one_job_one_wins_the_rest_find_nothing(edges, short_clip, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for round_ in range(9):
        video = short_clip if round_ % 3 == 0 else empty
        job_id = submit(edges, video, steps=2).json()["id"]  # succeeded, or failed
        job = finished(edges, job_id)
        url = job["outputs"].get("9x16")
        answers, start = [], threading.Barrier(8)

        def hit(method, path, start=start, answers=answers):
            start.wait()
            answers.append((method, edges.request(method, path)))
        threads = [threading.Thread(target=hit, args=("DELETE", f"/v1/jobs/{job_id}")) for _ in range(6)]
        threads += [threading.Thread(target=hit, args=("GET", url or f"/v1/jobs/{job_id}")) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deletes = sorted(r.status_code for m, r in answers if m == "DELETE")
        assert deletes == [200, 404, 404, 404, 404, 404], (round_, [r.text for _, r in answers])
        for method, res in answers:
            assert res.status_code in (200, 404), (method, res.status_code, res.text)
            if method == "GET" and url and res.status_code == 200:  # a result is sent whole, even deleted meanwhile
                assert int(res.headers["content-length"]) == len(res.content) > 1000
        assert not (edges.data / "jobs" / job_id).exists()


def test_a_ratio_given_twice_is_one_output_from_the_service_the_cli_and_the_api(edges, engines, clip, cli_output,
                                                                                 outpainter, tmp_path):
    job = finished(edges, submit(edges, clip, ratio="9:16,9:16", steps=3).json()["id"])
    assert job["status"] == "succeeded" and list(job["outputs"]) == ["9x16"]
    (tmp_path / "service.mp4").write_bytes(edges.get(job["outputs"]["9x16"]).content)
    assert np.array_equal(media.decode(tmp_path / "service.mp4")[0], cli_output)  # 40 frames, not 80

    frames, summary = outpaint_cli(clip, tmp_path / "cli.mp4", engines, "--ratio", "9:16,9:16", "--steps", "3",
                                   "--threads", "1")
    assert list(summary["outputs"]) == ["9x16"] and np.array_equal(frames, cli_output)

    video = media.decode(clip)[0][:8]
    result = outpainter.outpaint(video, 24, ratio=["9:16", " 9:16"], steps=2)
    assert list(result.outputs) == ["9x16"] and len(result.frames) == 8


def test_result_urls_are_percent_encoded(engines, tmp_path):
    from runtime.service.store import JobStore
    data = tmp_path / "data"
    (data / "jobs" / "old-job").mkdir(parents=True)
    (data / "jobs" / "old-job" / "out.mp4").write_bytes(b"\0" * 2000)
    store = JobStore(data / "jobs.sqlite3")  # a record of an earlier version, its label not one this one makes
    store.add("old-job", {"ratio": "9:16"}, "input.mp4")
    store.finish("old-job", "succeeded", outputs={"9 x16#?": "out.mp4"})
    with server(engines, data) as client:
        url = client.get("/v1/jobs/old-job").json()["outputs"]["9 x16#?"]
        assert url == "/v1/jobs/old-job/result/9%20x16%23%3F"
        assert client.get(url).content == b"\0" * 2000
