"""Authorization matrix (issue 10, part 5): every REST route and every gRPC method of
API.md x every kind of caller -> the status API.md asks for, from one table (MATRIX).
Then mass assignment (role, id, createdBy, version, tokenVersion, ... in request bodies
are rejected or ignored, never applied) and, at the end of the module, a grep of every
log the server wrote for each password, token and secret the tests used.

Callers: anonymous (no Authorization), other (an unrelated user), assignee and creator
of the task, admin, and six dead or forged tokens that must all fail like no token:
a deleted user's, a logged-out one, an expired one (signed with the right key), one
signed with another key, alg "none", RS256 in the header over an HMAC signature made
with the server's key (algorithm confusion) and HS512 with the server's key."""
import base64
import hashlib
import hmac
import importlib
import json
import re
import secrets
import sys
import time

import pytest

from conftest import (JWT_SECRET, REPO, TmsServer, make_admin, raw_connect, RawReader,
                      unique_email)

grpc = pytest.importorskip("grpc")
protoc = pytest.importorskip("grpc_tools.protoc")

PASSWORD = "Matrix-Passw0rd-" + secrets.token_hex(6)
OTHER_KEY = "another-secret-key-that-is-not-the-server-one-0123456789"

# -- the table -----------------------------------------------------------------------

CALLERS = ["anonymous", "other", "assignee", "creator", "admin", "deleted", "logged_out",
           "expired", "other_key", "alg_none", "alg_rs256", "alg_hs512"]
VALID = ("other", "assignee", "creator", "admin")

# One row per operation: the expected answer for each caller, in CALLERS order. REST
# rows give HTTP statuses; gRPC rows give status names, and VerifyToken (which needs no
# token: it judges the one in its request) gives valid/invalid. "U" stands for the
# unauthenticated answer (401 / UNAUTHENTICATED) of the seven callers without a live
# token.
MATRIX = """
# operation                         anon  other assignee creator admin  deleted logged_out expired other_key none rs256 hs512
POST /api/auth/register             201   201   201      201     201    201     201        201     201       201  201   201
POST /api/auth/login                200   200   200      200     200    200     200        200     200       200  200   200
POST /api/auth/logout               U     200   200      200     200    U       U          U       U         U    U     U
GET /api/auth/me                    U     200   200      200     200    U       U          U       U         U    U     U
DELETE /api/auth/delete/:creator    U     403   403      200     200    U       U          U       U         U    U     U
POST /api/auth/users                U     403   403      403     201    U       U          U       U         U    U     U
GET /api/auth/users/:creator        U     403   403      200     200    U       U          U       U         U    U     U
POST /api/task                      U     201   201      201     201    U       U          U       U         U    U     U
GET /api/task                       U     200   200      200     200    U       U          U       U         U    U     U
GET /api/task/:id                   U     200   200      200     200    U       U          U       U         U    U     U
PATCH /api/task/:id                 U     403   200      200     200    U       U          U       U         U    U     U
DELETE /api/task/:id                U     403   403      200     200    U       U          U       U         U    U     U
GET /api/task/events                U     200   200      200     200    U       U          U       U         U    U     U
POST /api/task/events/ticket        U     200   200      200     200    U       U          U       U         U    U     U
grpc AuthService/Register           OK    OK    OK       OK      OK     OK      OK         OK      OK        OK   OK    OK
grpc AuthService/Login              OK    OK    OK       OK      OK     OK      OK         OK      OK        OK   OK    OK
grpc AuthService/Logout(creator)    U     PERMISSION_DENIED PERMISSION_DENIED OK OK U U    U       U         U    U     U
grpc AuthService/UserExists(creator) U    PERMISSION_DENIED PERMISSION_DENIED OK OK U U    U       U         U    U     U
grpc AuthService/VerifyToken        invalid valid valid  valid   valid  invalid invalid    invalid invalid   invalid invalid invalid
grpc AuthService/GetUserInfo(creator) U   PERMISSION_DENIED PERMISSION_DENIED OK OK U U    U       U         U    U     U
grpc AuthService/DeleteUser(creator) U    PERMISSION_DENIED PERMISSION_DENIED OK OK U U    U       U         U    U     U
grpc TaskService/CreateTask         U     OK    OK       OK      OK     U       U          U       U         U    U     U
grpc TaskService/ListTasks          U     OK    OK       OK      OK     U       U          U       U         U    U     U
grpc TaskService/GetTask            U     OK    OK       OK      OK     U       U          U       U         U    U     U
grpc TaskService/UpdateTask         U     PERMISSION_DENIED OK OK    OK     U       U          U       U         U    U     U
grpc TaskService/DeleteTask         U     PERMISSION_DENIED PERMISSION_DENIED OK OK U U    U       U         U    U     U
"""


def parse_matrix(text):
    rows = {}
    for line in text.strip().splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        grpc_row = parts[0] == "grpc"
        name = " ".join(parts[:2])
        cells = parts[2:]
        assert len(cells) == len(CALLERS), f"{name}: {len(cells)} cells"
        unauth = "UNAUTHENTICATED" if grpc_row else "401"
        rows[name] = {c: (unauth if v == "U" else v) for c, v in zip(CALLERS, cells)}
    return rows


EXPECTED = parse_matrix(MATRIX)
# Operations after which the caller's (or the creator's) token is dead: each of their
# cells with a live caller gets a world of its own.
KILLERS = {"POST /api/auth/logout", "DELETE /api/auth/delete/:creator",
           "grpc AuthService/Logout(creator)", "grpc AuthService/DeleteUser(creator)"}

# -- tokens ----------------------------------------------------------------------------


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def forge(header, claims, key, digest=hashlib.sha256):
    """header.payload.signature; key None leaves the signature empty."""
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = "" if key is None else b64url(hmac.new(key.encode(), signing.encode(), digest).digest())
    return signing + "." + sig


def forged_tokens(live_token):
    """The five forged callers, each built from a live token's claims (so that with a
    lax check they would act as that user)."""
    c = claims_of(live_token)
    now = int(time.time())
    expired = dict(c, iat=now - 7200, exp=now - 3600)
    return {
        "expired": forge({"alg": "HS256", "typ": "JWT"}, expired, JWT_SECRET),
        "other_key": forge({"alg": "HS256", "typ": "JWT"}, c, OTHER_KEY),
        "alg_none": forge({"alg": "none", "typ": "JWT"}, c, None),
        "alg_rs256": forge({"alg": "RS256", "typ": "JWT"}, c, JWT_SECRET),
        "alg_hs512": forge({"alg": "HS512", "typ": "JWT"}, c, JWT_SECRET, hashlib.sha512),
    }


# -- server and gRPC stubs -------------------------------------------------------------

SETTINGS = {
    # Cheap password hashing: the matrix registers a few hundred users.
    "auth.argon2_opslimit": "1",
    "auth.argon2_memlimit_kib": "8",
}


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    out = tmp_path_factory.mktemp("authz-grpc-stubs")
    for name in ("auth.proto", "task.proto"):
        rc = protoc.main(["protoc", f"-I{REPO / 'src' / 'proto'}", f"--python_out={out}",
                          f"--grpc_python_out={out}", str(REPO / "src" / "proto" / name)])
        assert rc == 0, f"grpc_tools.protoc failed on {name}"
    sys.path.insert(0, str(out))
    mods = {n: importlib.import_module(n)
            for n in ("auth_pb2", "auth_pb2_grpc", "task_pb2", "task_pb2_grpc")}
    yield type("PB", (), mods)
    sys.path.remove(str(out))


USED_SECRETS = set()  # every password, token and key sent; none may be in a log


def remember(*values):
    for v in values:
        if v:
            USED_SECRETS.add(v)
    return values[0] if len(values) == 1 else values


class World:
    """A creator, an assignee, an unrelated user and a task of the creator assigned to
    the assignee; admin and the dead tokens may be shared between worlds."""

    def __init__(self, srv, admin=None, dead=None):
        self.srv = srv
        self.users = {}
        self.tokens = {"anonymous": None}
        for who in ("creator", "assignee", "other"):
            token, user = self.register(who)
            self.tokens[who], self.users[who] = token, user
        if admin is None:
            admin = make_admin(srv, unique_email("admin"))
            remember(admin[0])
        self.tokens["admin"], self.users["admin"] = admin
        if dead is None:
            dead = {}
            token, user = self.register("deleted")
            r = srv.delete(f"/api/auth/delete/{user['id']}", token=token)
            assert r.status_code == 200, r.text
            dead["deleted"] = token
            token, _ = self.register("logged_out")
            assert srv.post("/api/auth/logout", token=token).status_code == 200
            dead["logged_out"] = token
        self.dead = dead
        self.tokens.update(dead)
        self.tokens.update({k: remember(v) for k, v in
                            forged_tokens(self.tokens["creator"]).items()})
        self.task = self.new_task()

    def register(self, who):
        email = unique_email(who)
        r = self.srv.post("/api/auth/register", json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        remember(r.json()["token"])
        return r.json()["token"], r.json()["user"]

    def new_task(self):
        return self.srv.create_task(self.tokens["creator"], assignedTo=self.users["assignee"]["id"])


@pytest.fixture(scope="module")
def srv(tms_bin, tmp_path_factory):
    s = TmsServer(tmp_path_factory.mktemp("tms-authz"), settings=SETTINGS)
    s.start()
    remember(PASSWORD, JWT_SECRET, OTHER_KEY)
    yield s
    s.stop_ok()


@pytest.fixture(scope="module")
def world(srv):
    return World(srv)


@pytest.fixture(scope="module")
def rpc(pb, srv):
    m = re.search(r"event=grpc_listen addr=\S+ port=(\d+)", srv.log_text())
    assert m, "no grpc_listen line in the server log"
    channel = grpc.insecure_channel(f"127.0.0.1:{m.group(1)}")
    stubs = type("Stubs", (), {"auth": pb.auth_pb2_grpc.AuthServiceStub(channel),
                               "task": pb.task_pb2_grpc.TaskServiceStub(channel),
                               "channel": channel, "pb": pb})
    yield stubs
    channel.close()


# -- performing one cell -------------------------------------------------------------


def rest_cell(op, w, token):
    srv = w.srv
    creds = {"email": unique_email("cell"), "password": PASSWORD}
    if op == "POST /api/auth/register":
        return srv.post("/api/auth/register", token=token, json=creds)
    if op == "POST /api/auth/login":
        assert srv.post("/api/auth/register", json=creds).status_code == 201
        return srv.post("/api/auth/login", token=token, json=creds)
    if op == "POST /api/auth/logout":
        return srv.post("/api/auth/logout", token=token)
    if op == "GET /api/auth/me":
        return srv.get("/api/auth/me", token=token)
    if op == "DELETE /api/auth/delete/:creator":
        return srv.delete(f"/api/auth/delete/{w.users['creator']['id']}", token=token)
    if op == "POST /api/auth/users":
        return srv.post("/api/auth/users", token=token, json=creds)
    if op == "GET /api/auth/users/:creator":
        return srv.get(f"/api/auth/users/{w.users['creator']['id']}", token=token)
    if op == "POST /api/task":
        return srv.post("/api/task", token=token, json={"title": "t", "description": "d"})
    if op == "GET /api/task":
        return srv.get("/api/task", token=token, params={"limit": 5})
    if op == "GET /api/task/:id":
        return srv.get(f"/api/task/{w.task['id']}", token=token)
    if op == "PATCH /api/task/:id":
        task = w.new_task()
        return srv.patch(f"/api/task/{task['id']}", token=token, json={"title": "patched"})
    if op == "DELETE /api/task/:id":
        task = w.new_task()
        return srv.delete(f"/api/task/{task['id']}", token=token)
    if op == "GET /api/task/events":  # a stream: its status, then hang up
        r = srv.get("/api/task/events", token=token, stream=True, timeout=10)
        if r.status_code == 200:
            r.close()
            r._content = b"(event stream)"
        return r
    if op == "POST /api/task/events/ticket":
        return srv.post("/api/task/events/ticket", token=token)
    raise AssertionError(op)


def grpc_cell(op, w, token, rpc):
    a, t = rpc.pb.auth_pb2, rpc.pb.task_pb2
    md = [("authorization", f"Bearer {token}")] if token is not None else []
    creds = dict(email=unique_email("cell"), password=PASSWORD)
    creator = w.users["creator"]["id"]
    kw = dict(metadata=md, timeout=10)
    calls = {
        "grpc AuthService/Register": lambda: rpc.auth.Register(a.RegisterRequest(**creds), **kw),
        "grpc AuthService/Login": lambda: (rpc.auth.Register(a.RegisterRequest(**creds),
                                                             timeout=10),
                                           rpc.auth.Login(a.LoginRequest(**creds), **kw))[1],
        "grpc AuthService/Logout(creator)":
            lambda: rpc.auth.Logout(a.LogoutRequest(userId=creator), **kw),
        "grpc AuthService/UserExists(creator)":
            lambda: rpc.auth.UserExists(a.UserExistsRequest(userId=creator), **kw),
        "grpc AuthService/VerifyToken":
            lambda: rpc.auth.VerifyToken(a.VerifyTokenRequest(token=token or ""), timeout=10),
        "grpc AuthService/GetUserInfo(creator)":
            lambda: rpc.auth.GetUserInfo(a.UserInforRequest(userId=creator), **kw),
        "grpc AuthService/DeleteUser(creator)":
            lambda: rpc.auth.DeleteUser(a.UserInforRequest(userId=creator), **kw),
        "grpc TaskService/CreateTask":
            lambda: rpc.task.CreateTask(t.CreateTaskRequest(title="t", description="d"), **kw),
        "grpc TaskService/ListTasks": lambda: rpc.task.ListTasks(t.ListTasksRequest(limit=5), **kw),
        "grpc TaskService/GetTask": lambda: rpc.task.GetTask(t.GetTaskRequest(id=w.task["id"]), **kw),
        "grpc TaskService/UpdateTask":
            lambda: rpc.task.UpdateTask(t.UpdateTaskRequest(id=w.new_task()["id"], title="p"), **kw),
        "grpc TaskService/DeleteTask":
            lambda: rpc.task.DeleteTask(t.DeleteTaskRequest(id=w.new_task()["id"]), **kw),
    }
    try:
        reply = calls[op]()
    except grpc.RpcError as e:
        return e.code().name, e.details()
    if op == "grpc AuthService/VerifyToken":
        return ("valid" if reply.valid else "invalid"), str(reply)
    if op in ("grpc AuthService/Register", "grpc AuthService/Login"):
        remember(reply.token)
    return "OK", str(reply)


CELLS = [(op, caller) for op in EXPECTED for caller in CALLERS]


@pytest.mark.parametrize("op,caller", CELLS, ids=[f"{o}|{c}" for o, c in CELLS])
def test_authorization_matrix(op, caller, srv, world, rpc):
    w = world
    if op in KILLERS and caller in VALID:
        # The call kills the creator's or the caller's own tokens: a world of its own
        # (admin too when it logs itself out).
        w = World(srv, admin=None if (op == "POST /api/auth/logout" and caller == "admin")
                  else (world.tokens["admin"], world.users["admin"]), dead=world.dead)
    token = w.tokens[caller]
    want = EXPECTED[op][caller]
    if op.startswith("grpc "):
        got, detail = grpc_cell(op, w, token, rpc)
    else:
        r = rest_cell(op, w, token)
        got, detail = str(r.status_code), r.text[:300]
        if r.status_code == 401:
            assert r.json()["error"]["code"] == "UNAUTHENTICATED", detail
            assert r.headers.get("WWW-Authenticate") == "Bearer"
        if r.status_code in (200, 201) and "token" in r.text:
            remember(r.json().get("token"))
    assert got == want, f"{op} as {caller}: expected {want}, got {got}: {detail}"
    if got in ("200", "OK") and op in KILLERS:
        # The killed token is dead at once (no cache lets it live on), in both protocols.
        dead = token if op == "POST /api/auth/logout" else w.tokens["creator"]
        assert w.srv.me(dead).status_code == 401
        verify = rpc.auth.VerifyToken(rpc.pb.auth_pb2.VerifyTokenRequest(token=dead), timeout=10)
        assert not verify.valid


def test_matrix_covers_every_route_and_method(rpc):
    """Every REST route of the operation table and every API method of the .proto files
    has a row."""
    ops_src = (REPO / "src" / "core" / "ops.c").read_text()
    routes = set(re.findall(r'\.rest_method = "(GET|POST|PATCH|DELETE)",\s*\.rest_route = "(/api/[^"]+)"',
                            ops_src))
    assert routes, "no REST route found in src/core/ops.c"
    rows = {op.split()[0] + " " + op.split()[1].replace(":creator", ":id")
            for op in EXPECTED if not op.startswith("grpc ")}
    assert {f"{m} {p}" for m, p in routes} == rows
    methods = set()
    for svc in (rpc.pb.auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
                rpc.pb.task_pb2.DESCRIPTOR.services_by_name["TaskService"]):
        methods |= {f"{svc.name}/{m.name}" for m in svc.methods}
    assert methods == {op.split()[1].split("(")[0] for op in EXPECTED if op.startswith("grpc ")}


# -- mass assignment -------------------------------------------------------------------

PRIVILEGED = {"role": "admin", "id": "0123456789abcdef01234567",
              "createdBy": "0123456789abcdef01234567", "version": 999, "tokenVersion": 999,
              "createdAt": "2000-01-01T00:00:00.000Z", "updatedAt": "2000-01-01T00:00:00.000Z",
              "userId": "0123456789abcdef01234567", "sub": "0123456789abcdef01234567"}


@pytest.mark.parametrize("field", sorted(PRIVILEGED))
@pytest.mark.parametrize("route", ["/api/auth/register", "/api/auth/login"])
def test_mass_assignment_accounts_ignored(srv, route, field):
    """Register and login read only email and password: anything else is ignored (as the
    original did), never applied to the user or the token."""
    email = unique_email("mass")
    body = {"email": email, "password": PASSWORD, field: PRIVILEGED[field]}
    if route == "/api/auth/login":
        assert srv.post("/api/auth/register", json={"email": email,
                                                    "password": PASSWORD}).status_code == 201
    r = srv.post(route, json=body)
    if r.status_code == 400:
        return  # rejected: fine too
    assert r.status_code in (200, 201), r.text
    token, user = remember(r.json()["token"]), r.json()["user"]
    c = claims_of(token)
    assert user["role"] == "user" and c["role"] == "user"
    assert user["id"] != PRIVILEGED["id"] and c["sub"] == user["id"] == c["userId"]
    assert c["tokenVersion"] != 999
    assert user["createdAt"] != PRIVILEGED["createdAt"]
    me = srv.me(token)
    assert me.status_code == 200 and me.json() == user


@pytest.mark.parametrize("field", sorted(PRIVILEGED))
def test_mass_assignment_tasks_rejected(srv, world, field):
    """Task bodies take title, description, status and assignedTo only: any other field
    is a 400 (API.md), and the task stays as it was."""
    token = world.tokens["assignee"]
    before = srv.list_tasks(token, limit=200).json()
    r = srv.post("/api/task", token=token,
                 json={"title": "t", "description": "d", field: PRIVILEGED[field]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_ARGUMENT", r.text
    assert field in r.json()["error"]["message"]
    task = world.new_task()
    r = srv.patch(f"/api/task/{task['id']}", token=token,
                  json={"title": "x", field: PRIVILEGED[field]})
    assert r.status_code == 400, r.text
    assert srv.task_ok(token, task["id"]) == task
    after = srv.list_tasks(token, limit=200).json()
    assert len(after["tasks"]) == len(before["tasks"]) + 1  # only world.new_task()


def pb_field(number, value):
    """One protobuf field: a string (wire type 2) or a varint (wire type 0)."""
    def varint(n):
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def test_mass_assignment_grpc_unknown_fields_ignored(srv, world, rpc):
    """A client that sends a Task (createdBy = 8, version = 9, id = 1...) where a
    CreateTaskRequest or UpdateTaskRequest is expected: the extra fields are unknown to
    the request message and change nothing."""
    t = rpc.pb.task_pb2
    md = [("authorization", f"Bearer {world.tokens['assignee']}")]
    create = rpc.channel.unary_unary("/TaskService/CreateTask",
                                     request_serializer=None,
                                     response_deserializer=t.Task.FromString)
    raw = (t.CreateTaskRequest(title="mass", description="assignment").SerializeToString()
           + pb_field(8, world.users["other"]["id"]) + pb_field(9, 999) + pb_field(6, "2000")
           + pb_field(7, "2000"))
    task = create(raw, metadata=md, timeout=10)
    assert task.createdBy == world.users["assignee"]["id"]
    assert task.version == 1 and not task.createdAt.startswith("2000")
    update = rpc.channel.unary_unary("/TaskService/UpdateTask", request_serializer=None,
                                     response_deserializer=t.Task.FromString)
    raw = (t.UpdateTaskRequest(id=task.id, title="changed").SerializeToString()
           + pb_field(8, world.users["other"]["id"]) + pb_field(9, 999))
    updated = update(raw, metadata=md, timeout=10)
    assert updated.title == "changed" and updated.version == 2
    assert updated.createdBy == world.users["assignee"]["id"]
    # and the other user cannot update it now either (createdBy was not taken)
    with pytest.raises(grpc.RpcError) as e:
        rpc.task.UpdateTask(t.UpdateTaskRequest(id=task.id, title="x"),
                            metadata=[("authorization", f"Bearer {world.tokens['other']}")],
                            timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- secrets never logged --------------------------------------------------------------


def test_secrets_in_odd_places_are_not_logged(srv, world):
    """Clients put tokens where they should not: in the query string (of good and of
    malformed requests), in a malformed Authorization header, as a path segment. The
    request log must not echo them."""
    token = world.tokens["creator"]
    srv.get(f"/api/task?password={PASSWORD}&access_token={token}", token=token)
    srv.get("/api/auth/me", headers={"Authorization": f"Token {token}"})
    srv.get("/api/auth/me", headers={"Authorization": f"Bearer {token}x"})
    for raw in (f"GET /api/task?password={PASSWORD}&access_token={token} HTTP/1.1\r\n"
                f"Host: x\r\nBad Header: {token}\r\n\r\n",
                f"GET /api/task?access_token={token} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"):
        s = raw_connect(srv.port)
        try:
            s.sendall(raw.encode())
            assert RawReader(s).read_response().status == 400
        finally:
            s.close()
    srv.post("/api/auth/login", json={"email": unique_email("nobody"), "password": PASSWORD})
    srv.post("/api/auth/register", json={"email": "not-an-email", "password": PASSWORD})
    srv.post("/api/auth/register", data=f'{{"email": "x@y.z", "password": "{PASSWORD}"')


def test_zz_no_secret_in_any_log(srv):
    """Runs last in this module (name order is not relied on by the others): grep every
    log file the server wrote so far for every password, token and key used."""
    texts = [p.read_text(errors="replace") for p in sorted(srv.workdir.rglob("*.log"))]
    assert texts and any("event=request" in t for t in texts)
    log = "\n".join(texts)
    leaks = []
    for s in sorted(USED_SECRETS):
        pieces = [s]
        if s.count(".") == 2:  # a JWT: its payload or signature alone is a leak too
            pieces += s.split(".")[1:]
        for p in pieces:
            if len(p) >= 16 and p in log:
                leaks.append(p[:24] + "...")
    assert not leaks, f"{len(leaks)} secrets appear in the server log: {leaks[:5]}"
    assert len(USED_SECRETS) >= 10
