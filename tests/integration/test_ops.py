"""Operational endpoints: /healthz, /readyz, /metrics, /openapi.json."""
import re

from conftest import SPLIT

METRIC_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
    r'(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*"(,\s*)?)*\})?'
    r' (\S+)( -?\d+)?$')


def test_healthz(server):
    r = server.get("/healthz")
    assert r.status_code == 200


def test_readyz_names_dependencies(server):
    r = server.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.headers.get("Content-Type", "").startswith("application/json")
    body = r.json()
    assert isinstance(body, dict) and body, body
    if SPLIT:  # a gateway has no store: it names the peers it calls
        assert {"peer_auth", "peer_task"} <= set(body["checks"]), body
        return
    text = r.text.lower()
    assert any(w in text for w in ("users", "tasks", "sqlite", "store", "db")), body


def test_metrics_prometheus_text(server):
    token, user = server.register()
    server.me(token)
    server.get("/api/auth/me")
    server.get("/healthz")
    r = server.get("/metrics")
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers
    text = r.text
    assert text.endswith("\n")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("# TYPE"):
                assert re.match(r"^# TYPE \S+ (counter|gauge|histogram|summary|untyped)$",
                                line), line
            continue
        assert METRIC_LINE.match(line), f"not exposition format: {line!r}"
    req_lines = [l for l in text.splitlines() if l.startswith("tms_http_requests_total{")]
    assert req_lines, "no tms_http_requests_total samples"
    assert any('route="/api/auth/me"' in l for l in req_lines), req_lines[:20]
    assert any('route="/api/auth/register"' in l for l in req_lines), req_lines[:20]
    assert any("status=" in l or "code=" in l for l in req_lines), req_lines[:5]
    assert re.search(r"^# TYPE tms_http_requests_total counter$", text, re.M)
    buckets = [l for l in text.splitlines() if re.match(r"^\w+_bucket\{", l)]
    assert buckets, "no histogram buckets"
    assert any('le="+Inf"' in l for l in buckets)
    hist = re.search(r"^# TYPE (\w+) histogram$", text, re.M)
    assert hist, "no histogram TYPE line"
    name = hist.group(1)
    assert re.search(rf"^{name}_sum", text, re.M) and re.search(rf"^{name}_count", text, re.M)


def test_metrics_counter_increases(server):
    def count(text):
        total = 0.0
        for l in text.splitlines():
            if l.startswith("tms_http_requests_total{") and 'route="/api/auth/me"' in l:
                total += float(l.rsplit(" ", 1)[1])
        return total

    before = count(server.get("/metrics").text)
    for _ in range(3):
        server.get("/api/auth/me")
    after = count(server.get("/metrics").text)
    assert after - before == 3


def test_metrics_route_label_is_template(server):
    """Raw user ids must not become label values (unbounded cardinality)."""
    token, user = server.register()
    assert server.delete(f"/api/auth/delete/{user['id']}", token=token).status_code == 200
    server.get("/api/nope/" + "z" * 20)
    text = server.get("/metrics").text
    assert user["id"] not in text
    assert "z" * 20 not in text


def test_openapi(server):
    r = server.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("application/json")
    doc = r.json()
    assert re.fullmatch(r"3\.1\.\d+", doc.get("openapi", "")), doc.get("openapi")
    paths = doc.get("paths", {})
    want = {"/api/auth/register": "post", "/api/auth/login": "post",
            "/api/auth/logout": "post", "/api/auth/me": "get"}
    for path, method in want.items():
        assert path in paths, f"{path} missing from openapi paths: {sorted(paths)}"
        assert method in paths[path], f"{method} {path} missing"
    delete = [p for p in paths if p.startswith("/api/auth/delete/{")]
    assert delete, f"no /api/auth/delete/{{...}} path: {sorted(paths)}"
    assert "delete" in paths[delete[0]]


def test_openapi_validates(server):
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate
    doc = server.get("/openapi.json").json()
    validate(doc, cls=OpenAPIV31SpecValidator)


# -- who may read /metrics (issue 17, item 13) ---------------------------------------
# The login counters (tms_auth_logins_total) and the rest are not for the public port.

def test_metrics_not_served_on_the_public_port(server):
    import requests
    r = requests.get(server.url("/metrics"), timeout=10)
    assert r.status_code == 404, r.text[:200]
    assert "tms_auth_logins_total" not in r.text
    r = requests.get(server.metrics_url(), timeout=10)
    assert r.status_code == 200 and "tms_http_requests_total" in r.text


def test_metrics_listener_serves_only_metrics(server):
    import requests
    base = server.metrics_url().rsplit("/", 1)[0]
    assert requests.get(base + "/healthz", timeout=10).status_code == 404
    assert requests.get(base + "/api/auth/me", timeout=10).status_code == 404
    r = requests.post(base + "/metrics", timeout=10)
    assert r.status_code == 405 and r.headers.get("Allow") == "GET, HEAD", (r.status_code, r.headers)


def test_metrics_token_on_the_public_port(make_server):
    import requests
    token = "metrics-token-0123456789abcdefghijklmnop"
    srv = make_server(settings={"metrics.token": token})
    url = srv.url("/metrics")
    r = requests.get(url, timeout=10)
    assert r.status_code == 401, r.text[:200]
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert "tms_auth_logins_total" not in r.text
    r = requests.get(url, headers={"Authorization": "Bearer " + token[:-1] + "X"}, timeout=10)
    assert r.status_code == 401
    r = requests.get(url, headers={"Authorization": "Bearer " + token}, timeout=10)
    assert r.status_code == 200 and "tms_http_requests_total" in r.text
    # and the metrics listener still serves it without one
    assert requests.get(srv.metrics_url(), timeout=10).status_code == 200


def test_metrics_defaults_are_loopback_and_no_token(tms_bin):
    from conftest import run_cli
    p = run_cli(["config", "--defaults"])
    assert p.returncode == 0, p.stderr
    section = p.stdout.split("[metrics]", 1)[1].split("\n[", 1)[0]
    assert "\naddr = 127.0.0.1:9090\n" in section, section
    assert "\ntoken = \n" in section, section


def test_short_metrics_token_refused(tms_bin, tmp_path):
    import subprocess
    from conftest import TMS_BIN, tms_env
    p = subprocess.run([TMS_BIN, "serve", "--set", "metrics.token=short",
                        "--set", f"data.dir={tmp_path}"], capture_output=True, text=True,
                       timeout=10, stdin=subprocess.DEVNULL, env=tms_env())
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode != 0 and len(lines) == 1, lines
    assert lines[0] == "tms: config: metrics.token: must be at least 32 bytes", lines
