"""The README's walkthrough works as written (issue 25): the first sh block under
"## Try it" is taken from README.md, pointed at a fresh server (its `TMS=` line is the
only change) and run with bash; each step's effect is then checked through the API."""
import re
import subprocess

import pytest

from conftest import REPO


def walkthrough():
    text = (REPO / "README.md").read_text()
    part = text.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", part, re.S).group(1)
    assert block.startswith("TMS=http://localhost:3000\n"), block[:80]
    return block


def test_readme_walkthrough_runs(make_server):
    block = walkthrough()
    assert 12 <= len(block.splitlines()) <= 25  # a short walkthrough
    srv = make_server()
    if srv.tls_ca:
        pytest.skip("the walkthrough speaks cleartext, as scripts/run serves")
    script = block.replace("TMS=http://localhost:3000\n", f"TMS={srv.url('')}\n", 1)
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    # register, list, update and delete printed their answers (login and create are
    # captured into TOKEN and ID)
    assert '"email":"ada@example.com"' in out.replace(" ", ""), out
    assert '"title":"Write the report"' in out.replace(": ", ":"), out
    assert '"status":"closed"' in out.replace(": ", ":"), out
    assert out.rstrip().endswith('{"message":"Task deleted"}'), out
    # and the account is there, its task gone
    token, _ = srv.login_ok("ada@example.com", "correct horse")
    listing = srv.get("/api/task", token=token).json()
    assert listing["tasks"] == [], listing
