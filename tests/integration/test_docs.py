"""docs/API.md and README stay true (issue 25): the routes, their statuses, the error
codes, the gRPC methods and the limits of docs/API.md are compared with what the server
serves (/openapi.json), the .proto files and `tms config --defaults`; every relative
link of README and docs/ names a file of the repository (none points out of it)."""
import re

import pytest

from conftest import REPO, run_cli

API_MD = REPO / "docs" / "API.md"


def section(text, heading):
    """The text of `## heading` up to the next `#` or `##` heading."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^##? |\Z)", text, re.S | re.M)
    assert m, f"no section {heading!r}"
    return m.group(1)


def table_rows(text):
    """The cells of each row of the markdown tables in text, header and rule left out."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [r for r in rows[1:] if r != rows[0]] if rows else []


def documented_routes():
    rows = table_rows(section(API_MD.read_text(), "REST routes"))
    routes = {}
    for route, _auth, _body, success, errors in rows:
        method, path = route.split(" ", 1)
        path = re.sub(r":(\w+)", r"{\1}", path)
        statuses = set(re.findall(r"\b[1-5]\d\d\b", success)) | set(errors.split()) - {"-"}
        routes[(method.lower(), path)] = statuses
    return routes


def test_rest_routes_and_statuses_are_those_served(server):
    doc = server.get("/openapi.json").json()
    served = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                served[(method, path)] = set(op["responses"])
    documented = documented_routes()
    assert set(documented) == set(served), (
        f"in docs/API.md only: {sorted(set(documented) - set(served))}; "
        f"served only: {sorted(set(served) - set(documented))}")
    for key, statuses in served.items():
        assert documented[key] == statuses, (key, sorted(documented[key]), sorted(statuses))


def test_error_codes_are_those_of_the_error_shape(server):
    doc = server.get("/openapi.json").json()
    codes = set(doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
                ["code"]["enum"])
    rows = table_rows(section(API_MD.read_text(), "Errors"))
    assert {r[0] for r in rows} == codes


def test_grpc_methods_are_those_of_the_proto_files():
    rpcs = set()
    for name in ("auth.proto", "task.proto"):
        text = (REPO / "src" / "proto" / name).read_text()
        for service, body in re.findall(r"service (\w+) \{(.*?)\}", text, re.S):
            rpcs |= {f"{service}/{m}" for m in re.findall(r"rpc (\w+)\(", body)}
    rows = table_rows(section(API_MD.read_text(), "gRPC"))
    assert {r[0] for r in rows} == rpcs


def test_limits_are_the_defaults(tms_bin):
    p = run_cli(["config", "--defaults"])
    assert p.returncode == 0, p.stderr
    defaults, sect = {}, None
    for line in p.stdout.splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            sect = m.group(1)
        elif m := re.fullmatch(r"(\w+) = (.*)", line):
            defaults[f"{sect}.{m.group(1)}"] = m.group(2)
    rows = table_rows(section(API_MD.read_text(), "Limits"))
    assert len(rows) >= 10
    for key, default, _what in rows:
        key = key.strip("`")
        assert defaults.get(key) == default, (key, default, defaults.get(key))


def test_every_rate_limit_is_in_readme_and_api_md(tms_bin):
    """Every ratelimit.* setting is stated with its default in both documents."""
    p = run_cli(["config", "--defaults"])
    block = p.stdout.split("[ratelimit]\n", 1)[1].split("\n[", 1)[0]
    keys = [(k, v) for k, v in re.findall(r"^(\w+) = (\d+)$", block, re.M)
            if k != "ipv6_prefix"]
    assert {k for k, _ in keys} >= {"api_per_minute", "login_per_15min",
                                    "task_create_per_hour"}
    readme = (REPO / "README.md").read_text()
    api = API_MD.read_text()
    for k, v in keys:
        assert f"`ratelimit.{k}`" in readme, k
        assert f"| `ratelimit.{k}` | {v} |" in api, k
    assert "10 task creations per user per hour" in readme


def test_relative_links_name_files_of_the_repository():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(REPO), f"{doc.name}: {target} is outside the repository"
            assert path.exists(), f"{doc.name}: {target} does not exist"


def test_license_is_isc():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("ISC License")
    assert "PERMISSION TO USE, COPY, MODIFY" in text.upper()


def test_cmake_install_into_a_prefix_of_ones_own(tms_bin, tmp_path):
    """README's "From source, without root": `cmake --install` of the build that made
    TMS_BIN puts bin/tms and etc/tms/tms.conf under the prefix, and that tms runs."""
    import shutil
    import subprocess
    from pathlib import Path
    build = Path(tms_bin).resolve().parent
    if not (build / "cmake_install.cmake").exists() or not shutil.which("cmake"):
        pytest.skip(f"{build} is not a CMake build directory")
    p = subprocess.run(["cmake", "--install", str(build), "--prefix", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "etc" / "tms" / "tms.conf").read_text() == \
        (REPO / "config" / "tms.conf").read_text()
    v = subprocess.run([str(tmp_path / "bin" / "tms"), "--version"], capture_output=True,
                       text=True, timeout=30)
    assert v.returncode == 0 and v.stdout.startswith("tms "), v.stderr
