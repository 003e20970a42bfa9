import os, subprocess, time, pytest
from conftest import REPO, unique_email, read_mails, wait_mails
from test_kafka import kafka_server, SCRIPT, metrics

DOWN = float(os.environ.get("REPRO_DOWN", "20"))
N = int(os.environ.get("REPRO_N", "20"))

from test_kafka import shared_stores, poll

def test_repro(make_server, tmp_path):
    two = os.environ.get("REPRO_TWO")
    if two:
        shared = tmp_path / "shared"
        env = {k: os.environ[k] for k in ("XPOLL", "XINST", "XSESS") if os.environ.get(k)}
        srv = kafka_server(make_server, env=env, **shared_stores(shared))
        srv2 = kafka_server(make_server, env=env, **shared_stores(shared))
        assert poll(lambda: srv.log_text().count("event=kafka_assigned topic=notifications") >= 2, timeout=30)
        class M: pass
        maildir = shared / "mail"
    else:
        srv = kafka_server(make_server, env={k: os.environ[k] for k in ("XPOLL", "XINST", "XSESS") if os.environ.get(k)})
        maildir = srv.maildir
    c_tok, _ = srv.register(unique_email("creator"))
    _, a = srv.register(unique_email("down"))
    time.sleep(float(os.environ.get("REPRO_IDLE", "0")))
    pre = int(os.environ.get("REPRO_PRE", "0"))
    for i in range(pre):
        r = srv.post("/api/task", token=c_tok, json={"title": f"p{i}", "description": "d", "assignedTo": a["id"]})
    if os.environ.get("REPRO_KILL"):
        pid = int((REPO / "build-services/kafka/kafka.pid").read_text())
        os.kill(pid, 9)
        while os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)
    elif os.environ.get("REPRO_ASYNC"):
        stopper = subprocess.Popen([str(SCRIPT), "stop"])
        time.sleep(float(os.environ.get("REPRO_ASYNC")))
    else:
        subprocess.run([str(SCRIPT), "stop"], check=True, timeout=60)
    t_stop = time.monotonic()
    print(f"\nstopped")
    for i in range(N):
        r = srv.post("/api/task", token=c_tok, json={"title": f"t{i}", "description": "d", "assignedTo": a["id"]})
        assert r.status_code == 201
    if os.environ.get("REPRO_ASYNC"):
        stopper.wait()
    time.sleep(max(0, DOWN - (time.monotonic() - t_stop)))
    subprocess.run([str(SCRIPT)], check=True, timeout=120, capture_output=True)
    t_up = time.monotonic()
    print(f"\nbroker back after {t_up - t_stop:.1f}s down")
    seen = 0
    while time.monotonic() - t_up < 100:
        n = len(read_mails(maildir))
        if n != seen:
            print(f"  +{time.monotonic() - t_up:5.1f}s mails={n}")
            seen = n
        if n >= N + pre:
            break
        time.sleep(0.2)
    open("/tmp/i24/repro.log", "w").write(srv.log_text())
    if two:
        open("/tmp/i24/repro2.log", "w").write(srv2.log_text())
    print(metrics(srv, "tms_outbox_pending_events"), metrics(srv, "tms_kafka_consumer_lag"))
    assert seen == N + pre
