"""Users on MongoDB (issue 6) against a real MongoDB-wire server: FerretDB v1 from
scripts/service-mongo, named by TMS_TEST_MONGO_URL (skipped when unset).

The documents are checked directly with pymongo: the collection is `User` in the
original Node system's shape, and a user that system wrote (bcrypt hash) logs in and
is upgraded to argon2id. The outage test runs a FerretDB of its own, so killing it
does not disturb other tests."""
import concurrent.futures as cf
import datetime as dt
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest
import requests

from conftest import (DEFAULT_PASSWORD, REPO, assert_error, assert_user_shape, free_port,
                      mongo_users_url, tms_env, unique_email)

pymongo = pytest.importorskip("pymongo")
bcrypt = pytest.importorskip("bcrypt")
from bson import ObjectId  # noqa: E402  (pymongo's bson, after the skip)

MONGO_URL = os.environ.get("TMS_TEST_MONGO_URL", "")
FERRETDB_BIN = REPO / "build-tools" / "bin" / "ferretdb-tms"

pytestmark = pytest.mark.skipif(not MONGO_URL, reason="TMS_TEST_MONGO_URL not set "
                                "(scripts/service-mongo prints one)")


def db_of(url):
    return url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]


@pytest.fixture
def mongo_server(make_server, tmp_path):
    """A TMS server with users on a fresh database of the test server; yields
    (server, pymongo database)."""
    url = mongo_users_url(tmp_path / "mongo", base=MONGO_URL)
    srv = make_server(settings={"users.url": url})
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    yield srv, client[db_of(url)]
    client.close()


def wait_for(pred, timeout=10.0, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def test_server_says_users_on_mongodb(mongo_server):
    srv, _ = mongo_server
    assert "users=mongodb" in srv.log_text()
    r = srv.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["users"] == "ok"


def test_register_writes_the_original_document_shape(mongo_server):
    srv, db = mongo_server
    email = unique_email()
    token, user = srv.register(email)
    assert_user_shape(user, email)
    doc = db["User"].find_one({"email": email})
    assert doc is not None, "no document in collection User"
    assert set(doc) == {"_id", "email", "password", "role", "tokenVersion", "createdAt"}, doc
    assert isinstance(doc["_id"], ObjectId) and str(doc["_id"]) == user["id"]
    assert doc["password"].startswith("$argon2id$")
    assert doc["role"] == "user"
    assert isinstance(doc["tokenVersion"], int)
    assert isinstance(doc["createdAt"], dt.datetime)
    created = doc["createdAt"].replace(tzinfo=dt.timezone.utc)
    assert created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z" \
        == user["createdAt"]
    # the unique email index exists (created at start)
    indexes = db["User"].index_information()
    assert any(ix.get("unique") and ix["key"] == [("email", 1)] for ix in indexes.values()), indexes


def test_register_login_logout_delete(mongo_server):
    srv, db = mongo_server
    email = unique_email()
    t1, user = srv.register(email)
    assert srv.me(t1).status_code == 200
    v0 = db["User"].find_one({"_id": ObjectId(user["id"])})["tokenVersion"]
    t2, _ = srv.login_ok(email)
    assert db["User"].find_one({"_id": ObjectId(user["id"])})["tokenVersion"] == v0 + 1
    assert_error(srv.me(t1), 401)  # login killed the older token
    assert srv.me(t2).status_code == 200
    r = srv.post("/api/auth/logout", token=t2)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert_error(srv.me(t2), 401)
    assert_error(srv.login(email, "wrong-password-123"), 401)
    t3, _ = srv.login_ok(email)
    c_tok, _ = srv.register(unique_email("creator"))
    task = srv.create_task(c_tok, title="theirs", assignedTo=user["id"])
    r = srv.delete(f"/api/auth/delete/{user['id']}", token=t3)
    assert r.status_code == 200, r.text
    assert db["User"].find_one({"_id": ObjectId(user["id"])}) is None
    assert_error(srv.login(email), 401)
    # user_deleted went through the MongoDB outbox and the relay published it: the task
    # actor unassigned their task, and the sent event left the outbox (its payload is
    # mongo_test's: no password hash)
    assert wait_for(lambda: srv.task_ok(c_tok, task["id"])["assignedTo"] is None), \
        list(db["Outbox"].find({"key": user["id"]}))
    assert wait_for(lambda: db["Outbox"].count_documents({"key": user["id"]}) == 0), \
        list(db["Outbox"].find({"key": user["id"]}))


def test_set_role_cli_on_mongodb(mongo_server):
    srv, db = mongo_server
    email = unique_email("admin")
    srv.register(email)
    res = srv.set_role(email, "admin")
    assert res.returncode == 0, res.stderr
    assert db["User"].find_one({"email": email})["role"] == "admin"
    _, user = srv.login_ok(email)
    assert user["role"] == "admin"


@pytest.mark.parametrize("prefix", [b"2a", b"2b"])
def test_user_of_the_node_original_logs_in_and_is_upgraded(mongo_server, prefix):
    """A document exactly as the Node system's Mongoose model wrote it: bcrypt hash
    (bcryptjs writes $2a$, the bcrypt package $2b$), cost 10, tokenVersion 0, Date
    createdAt and Mongoose's __v."""
    srv, db = mongo_server
    email = unique_email("node")
    password = "old-node-password-1"
    oid = ObjectId()
    created = dt.datetime(2024, 5, 17, 9, 30, 12, 345000)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10, prefix=prefix)).decode()
    db["User"].insert_one({"_id": oid, "email": email, "password": hashed, "role": "user",
                           "tokenVersion": 0, "createdAt": created, "__v": 0})

    assert_error(srv.login(email, "not-the-password"), 401)
    assert db["User"].find_one({"_id": oid})["password"] == hashed  # no upgrade on failure
    token, user = srv.login_ok(email, password)
    assert user["id"] == str(oid)
    assert user["createdAt"] == "2024-05-17T09:30:12.345Z"
    doc = db["User"].find_one({"_id": oid})
    assert doc["password"].startswith("$argon2id$"), doc["password"][:12]
    assert doc["tokenVersion"] == 1
    assert doc["__v"] == 0  # fields we do not own stay as they were
    assert jwt.decode(token, options={"verify_signature": False})["tokenVersion"] == 1
    assert srv.me(token).status_code == 200
    token2, _ = srv.login_ok(email, password)  # and again, now against argon2id
    assert srv.me(token2).status_code == 200


def test_concurrent_logins_get_distinct_token_versions(mongo_server):
    srv, db = mongo_server
    email = unique_email()
    _, user = srv.register(email)
    n = 12
    with cf.ThreadPoolExecutor(n) as pool:
        rs = list(pool.map(lambda _: srv.login(email), range(n)))
    assert all(r.status_code == 200 for r in rs), [r.status_code for r in rs]
    versions = [jwt.decode(r.json()["token"], options={"verify_signature": False})
                ["tokenVersion"] for r in rs]
    assert len(set(versions)) == n, sorted(versions)
    stored = db["User"].find_one({"_id": ObjectId(user["id"])})["tokenVersion"]
    assert stored == max(versions)
    valid = [r for r in rs if srv.me(r.json()["token"]).status_code == 200]
    assert len(valid) == 1


def test_concurrent_registrations_of_one_email(make_server, tmp_path):
    # 50 argon2id hashes at once queue behind the hash threads (one on this 2-core
    # machine) longer than auth.hash_queue_ms, which answers 503 by design (issue 20);
    # this test is about the race on one email, so the queue may wait.
    url = mongo_users_url(tmp_path / "mongo", base=MONGO_URL)
    srv = make_server(settings={"users.url": url, "auth.hash_queue_ms": "60000"})
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    db = client[db_of(url)]
    email = unique_email("race")
    body = {"email": email, "password": DEFAULT_PASSWORD}
    with cf.ThreadPoolExecutor(50) as pool:
        rs = list(pool.map(lambda _: srv.post("/api/auth/register", json=body, timeout=60),
                           range(50)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(201) == 1 and codes.count(409) == 49, codes
    assert db["User"].count_documents({"email": email}) == 1
    client.close()


# -- outage: a FerretDB of this test's own, killed and started again -------------

class FerretDB:
    def __init__(self, workdir):
        self.dir = Path(workdir)
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return f"mongodb://127.0.0.1:{self.port}/tms_outage"

    def start(self):
        log = open(self.dir / "ferretdb.log", "ab")
        self.proc = subprocess.Popen(
            [str(FERRETDB_BIN), "--handler=sqlite", f"--sqlite-url=file:{self.dir}/data/",
             f"--listen-addr=127.0.0.1:{self.port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=500) as c:
                    c.admin.command("ping")
                return
            except pymongo.errors.PyMongoError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("FerretDB did not start")
                time.sleep(0.1)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def own_ferretdb(tmp_path):
    if not FERRETDB_BIN.exists():
        pytest.skip(f"{FERRETDB_BIN} missing (scripts/service-mongo builds it)")
    f = FerretDB(tmp_path / "ferretdb")
    f.start()
    yield f
    f.kill()


def test_ferretdb_down_gives_503_fast_then_recovers(make_server, own_ferretdb):
    srv = make_server(settings={"users.url": own_ferretdb.url,
                                "users.server_selection_timeout_ms": "1000"})
    email = unique_email()
    token, _ = srv.register(email)
    assert srv.me(token).status_code == 200

    own_ferretdb.kill()
    # the user cache may answer /me for a moment; login always asks the store
    t0 = time.monotonic()
    r = srv.login(email)
    took = time.monotonic() - t0
    assert_error(r, 503, "UNAVAILABLE")
    assert took < 3.0, f"503 took {took:.2f}s"
    r = srv.post("/api/auth/register", json={"email": unique_email(),
                                             "password": DEFAULT_PASSWORD})
    assert_error(r, 503, "UNAVAILABLE")
    # a burst larger than users.pool_size does not queue behind the selection timeout
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(lambda _: srv.login(email), range(16)))
    took = time.monotonic() - t0
    assert [r.status_code for r in rs] == [503] * 16
    assert took < 3.0, f"16 logins took {took:.2f}s to get their 503s"
    r = srv.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["checks"]["users"] != "ok" and r.json()["checks"]["tasks"] == "ok", r.json()
    assert srv.get("/healthz").status_code == 200

    own_ferretdb.start()  # same port, same data: TMS is not restarted
    r = wait_for(lambda: (lambda x: x if x.status_code == 200 else None)(srv.login(email)),
                 timeout=20, step=0.25)
    assert r is not None, "login did not recover after FerretDB came back"
    assert srv.me(r.json()["token"]).status_code == 200
    assert wait_for(lambda: srv.get("/readyz").status_code == 200, timeout=10)
    srv.register()  # writes work again too


def test_unreachable_mongodb_stops_start_with_one_line(tmp_path):
    """Start-up connects once: no server there -> exit 1 quickly, naming users.url."""
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.run(
        [os.environ.get("TMS_BIN", str(REPO / "build" / "tms")), "serve",
         "--set", "http.addr=127.0.0.1:0", "--set", "grpc.addr=127.0.0.1:0",
         "--set", f"data.dir={tmp_path}", "--set", f"users.url=mongodb://127.0.0.1:{port}/x",
         "--set", "users.server_selection_timeout_ms=500"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=tms_env())
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - t0 < 10
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tms: ")]
    assert len(lines) == 1 and lines[0].startswith("tms: users.url: "), proc.stderr
