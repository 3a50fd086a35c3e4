"""The API says what it does: Schemathesis (the dev extra), an API tester that knows nothing of this code, runs
every check it has against the real server from the service's own OpenAPI document and finds nothing, 5xx
included; the document declares the job form field by field and every answer; /docs works offline (its script
and style come from the service); every route answers HEAD, and OPTIONS or another method it does not take
with 405 and an Allow header listing exactly the methods it does."""
import re
import subprocess
import sys

import pytest

from runtime.service.form import FORM_FIELDS
from test_service_http import finished, submit, token_server
from test_service_jobs import short_clip  # noqa: F401 (fixture)

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the service extra is not installed (pip install '.[serve]')")
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def service(engines, tmp_path_factory):
    with token_server(engines, tmp_path_factory.mktemp("contract") / "data", TOKEN) as client:
        yield client


def test_schemathesis_finds_nothing_against_the_real_server(service, tmp_path):
    pytest.importorskip("schemathesis", reason="the dev extra is not installed (pip install '.[dev]')")
    config = tmp_path / "schemathesis.toml"  # a valid request may also be answered 410: a job's files are gone
    config.write_text('[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "3xx", "401", "403", "404", '
                      '"409", "410", "429", "5xx"]\n')
    res = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
                          f"{service.base_url}/openapi.json",
                          "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all", "--max-examples", "25",
                          "--seed", "1", "--request-timeout", "30", "--no-color"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0 and "FAILURES" not in res.stdout, res.stdout[-6000:] + res.stderr[-2000:]
    cases = int(re.search(r"(\d+) generated", res.stdout).group(1))
    assert cases > 200, res.stdout[-3000:]  # every operation was tried, the job form included
    assert service.get("/readyz").status_code == 200


def test_the_document_declares_the_job_form_and_every_answer(service, short_clip):
    doc = service.get("/openapi.json").json()
    post = doc["paths"]["/v1/jobs"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["properties"]) == {"file", *FORM_FIELDS} and body["required"] == ["file"]
    assert set(post["responses"]) >= {"202", "401", "408", "413", "415", "422", "429", "503", "507"}
    for path in ("/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result/{label}"):
        assert "404" in doc["paths"][path]["get"]["responses"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "video/mp4" in doc["paths"]["/v1/jobs/{job_id}/result/{label}"]["get"]["responses"]["206"]["content"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    examples = {"ratio": "9:16,1:1", "pad": "0,64,0,64", "steps": 20, "seed": 3, "sampler": "ddim",
                "strides": "15,5,1", "guidance": "2.5,4"}  # the README's examples fit the declared grammar
    for name in ("ratio", "pad", "strides", "guidance"):
        assert re.fullmatch(body["properties"][name]["pattern"], examples[name]), name
    assert examples["sampler"] in body["properties"]["sampler"]["enum"]
    for name in ("steps", "seed"):
        assert body["properties"][name]["minimum"] <= examples[name] <= body["properties"][name]["maximum"]
    accepted = submit(service, short_clip, **{k: v for k, v in examples.items() if k != "pad"})
    assert accepted.status_code == 202, accepted.text
    assert service.delete(f"/v1/jobs/{accepted.json()['id']}").status_code == 200


def test_docs_work_offline(service):
    page = service.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls and not [u for u in urls if re.match(r"(?i)([a-z]+:)?//", u)], urls  # nothing from elsewhere
    assert "/openapi.json" in urls
    types = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for url in urls:
        if url != "/openapi.json":
            asset = service.get(url)
            kind = next(t for ext, t in types.items() if url.endswith(ext))
            assert asset.status_code == 200 and kind in asset.headers["content-type"] and len(asset.content) > 500
    assert service.get("/docs/../jobs.sqlite3").status_code == 404 and service.get("/redoc").status_code == 404


def test_every_route_answers_head_and_refuses_other_methods_with_allow(service, short_clip):
    job = finished(service, submit(service, short_clip, steps=2).json()["id"])
    doc = service.get("/openapi.json").json()
    paths = {p.replace("{job_id}", job["id"]).replace("{label}", "9x16"): set(ops) for p, ops in doc["paths"].items()}
    paths |= {"/docs": {"get"}, "/openapi.json": {"get"}}
    for path, methods in paths.items():
        allowed = {m.upper() for m in methods} | ({"HEAD"} if "get" in methods else set())
        for method in {"OPTIONS", "PUT", "PATCH", "TRACE", "POST", "DELETE"} - allowed:
            res = service.request(method, path)
            assert res.status_code == 405, (method, path, res.status_code)
            assert set(res.headers["allow"].split(", ")) == allowed, (method, path, res.headers["allow"])
            assert "\n" not in res.json()["detail"]
        if "get" in methods:
            got, head = service.get(path), service.head(path)
            assert head.status_code == got.status_code == 200 and head.content == b"", (path, head.status_code)
            assert head.headers["content-type"] == got.headers["content-type"], path
