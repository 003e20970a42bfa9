"""README's "Behind nginx" works as written (issue 25): the nginx block is taken from
README.md (only its certificate paths, listen port and upstream port are changed), nginx
runs it in front of a server started with README's `http.trusted_proxies=127.0.0.1`,
and clients on two loopback addresses (curl --interface) reach TMS over TLS through it:
each keeps its own rate-limit budget, and the log names each one with the proxy."""
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import REPO, free_port

HOST = "tms.example.com"


def readme_nginx():
    text = (REPO / "README.md").read_text()
    part = text.split("**Behind nginx**", 1)[1]
    block = re.search(r"```nginx\n(.*?)```", part, re.S).group(1)
    settings = re.search(r"`--set http\.addr=127\.0\.0\.1:3000 --set\s+"
                         r"http\.trusted_proxies=127\.0\.0\.1`", part)
    assert settings, "README no longer says which settings go with the proxy"
    return block


def write_conf(tmp_path, block, port, upstream):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-keyout",
                    str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-subj",
                    f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}"],
                   check=True, capture_output=True, timeout=30)
    server = (block
              .replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
              .replace(f"/etc/letsencrypt/live/{HOST}/fullchain.pem", str(tmp_path / "cert.pem"))
              .replace(f"/etc/letsencrypt/live/{HOST}/privkey.pem", str(tmp_path / "key.pem"))
              .replace("http://127.0.0.1:3000", f"http://127.0.0.1:{upstream}"))
    assert str(upstream) in server and str(tmp_path) in server, server
    temp = "\n".join(f"    {k}_temp_path {tmp_path / k};"
                     for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""daemon off;
{"user root root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {tmp_path / "nginx.pid"};
error_log {tmp_path / "error.log"};
events {{}}
http {{
    access_log off;
{temp}
{server}
}}
""")
    return conf


def curl(port, source, path):
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface",
                        source, "--cacert", "cert.pem", "--resolve", f"{HOST}:{port}:127.0.0.1",
                        f"https://{HOST}:{port}{path}"], capture_output=True, text=True,
                       timeout=30, cwd=curl.cwd)
    return p.stdout


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx not installed (scripts/setup --test)")
def test_behind_nginx_as_readme_says(make_server, tmp_path):
    block = readme_nginx()
    srv = make_server(http__trusted_proxies="127.0.0.1", ratelimit__api_per_minute=3)
    if srv.tls_ca:
        pytest.skip("README's nginx speaks cleartext to TMS")
    port = free_port()
    conf = write_conf(tmp_path, block, port, srv.port)
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    curl.cwd = tmp_path
    try:
        deadline = time.monotonic() + 20
        while curl(port, "127.0.0.2", "/healthz") != "200":
            assert nginx.poll() is None, nginx.stderr.read().decode()
            assert time.monotonic() < deadline, (tmp_path / "error.log").read_text()
            time.sleep(0.2)
        # the health check above spent none of the API budget (not an API route)
        assert [curl(port, "127.0.0.2", "/api/auth/me") for _ in range(4)] == \
            ["401", "401", "401", "429"]
        # another client behind the same proxy has a budget of its own
        assert curl(port, "127.0.0.3", "/api/auth/me") == "401"
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
    log = srv.log_text()
    assert re.search(r"event=request .*client=127\.0\.0\.2 via=127\.0\.0\.1", log), log[-2000:]
    assert re.search(r"event=request .*client=127\.0\.0\.3 via=127\.0\.0\.1", log)
