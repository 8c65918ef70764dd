"""Restarts through the real server: `caltrain serve` and its enclave are killed with SIGKILL mid-upload,
mid-epoch, during linkage building and under inference load, then started again (the server by hand, the enclave
by the server's supervisor). Every acknowledged dataset is there and nothing partial; the interrupted job resumes
to the weights of an uninterrupted run; forensics and deployments answer as before; while the enclave is down
`/v1/health` says so and requests get 503 with Retry-After at once, never a hang.

The first test is the representative chain `make test` runs; the matrix (each victim at each point, from a fresh
server) is `pytest -m slow`."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import numpy as np
import pytest

from caltrain.data.datasets import load_records
from caltrain.errors import CaltrainError
from tests.restart.conftest import (
    Load,
    Site,
    classify,
    deploy,
    health,
    identical_to_uninterrupted,
    start_job,
    trace_report,
)

TRAIN = slice(0, 1400)
QUERIES = load_records("digits").x[1700:1712]


def down_then_up(site: Site) -> None:
    """Right after the enclave died: health says so (503, Retry-After) and a request is refused at once, typed,
    with Retry-After; then the supervisor brings it back."""
    deadline = time.monotonic() + 5
    while (r := health(site)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    if r.status_code == 503:  # caught while it restarts (it may already be back on a fast machine)
        assert r.headers["retry-after"] and r.json()["enclave"]["status"] in ("restarting", "starting")
        started = time.monotonic()
        status = httpx.get(f"{site.server.url}/v1/status", timeout=5)
        assert time.monotonic() - started < 2, "a request waited for the enclave"
        if status.status_code == 503:
            assert status.headers["retry-after"] and status.json()["error"] == "EnclaveUnavailable"
    deadline = time.monotonic() + 120
    while health(site).status_code != 200:
        assert time.monotonic() < deadline, "the enclave did not come back"
        time.sleep(0.1)
    assert health(site).json()["enclave"]["restarts"] >= 1


def test_kill_9_server_and_enclave_at_each_point_and_everything_comes_back(site: Site) -> None:
    a, b = site.pack("a", TRAIN), site.pack("b", slice(1400, 1797))
    acknowledged = {site.submit(a)["dataset_id"]: site.datasets()["alice/a"]}
    job = start_job(site, datasets=["alice/a"])

    # the server, mid-epoch, while an upload is half-way through
    site.wait(job, lambda j: len(j["progress"]) >= 1)
    site.half_upload(b)
    time.sleep(0.2)
    site.server.kill()
    site.server.restart()
    assert site.datasets() == acknowledged, "an unacknowledged upload left something behind"
    assert not list((site.root / "state" / "uploads").iterdir()), "a partial upload stayed on disk"
    acknowledged["alice/b"] = site.submit(b)["merkle_root"]

    # the enclave, during linkage building
    site.wait(job, lambda j: j["phase"] == "linking", timeout_s=300)
    site.server.kill_enclave()
    down_then_up(site)
    done = site.wait(job, lambda j: j["state"] == "done")
    assert done["attempts"] == 3, "ran once, again after the server restart, again after the enclave died"
    assert done["linkage"]["statement"]["count"] == TRAIN.stop
    assert identical_to_uninterrupted(site, job, TRAIN), "the resumed job's weights differ from an uninterrupted run"

    # forensics and a deployment, then the server killed under inference load
    report = trace_report(site, job, QUERIES)
    deploy(site, "digits", job)
    answers = classify(site, "digits", QUERIES)
    load = Load(site, "digits", QUERIES)
    try:  # a failed check must not leave the load's threads running (pytest would never exit)
        time.sleep(1.0)
        site.server.kill()
        site.server.restart()
        served = load.ok
        assert classify(site, "digits", QUERIES) == answers, "the deployment answers differently after the restart"
        assert trace_report(site, job, QUERIES) == report, "forensics answer differently after the restart"
        assert site.datasets() == acknowledged

        # the enclave killed under inference load: re-opened by the supervisor, same answers
        time.sleep(0.5)
        site.server.kill_enclave()
        down_then_up(site)
        time.sleep(0.5)
    finally:
        load.stop()
    assert load.ok > served, "inference did not resume after the enclave restarted"
    assert classify(site, "digits", QUERIES) == answers
    assert trace_report(site, job, QUERIES) == report


POINTS = ["mid-upload", "mid-epoch", "linkage", "inference"]


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("victim", ["server", "enclave"])
def test_restart_matrix(site: Site, victim: str, point: str) -> None:
    """Each victim at each point, from a fresh server: what the representative chain shows, one kill at a time."""

    def kill() -> None:
        if victim == "server":
            site.server.kill()
            site.server.restart()
        else:
            site.server.kill_enclave()
            down_then_up(site)

    a, b = site.pack("a", TRAIN), site.pack("b", slice(1400, 1797))
    acknowledged = {site.submit(a)["dataset_id"]: site.datasets()["alice/a"]}
    if point == "mid-upload":
        if victim == "server":  # the server dies with half the body received
            site.half_upload(b)
            time.sleep(0.2)
            kill()
            assert site.datasets() == acknowledged
        else:  # the enclave dies while the server forwards a whole upload to it
            answered: list[dict[str, str]] = []

            def send() -> None:
                with contextlib.suppress(CaltrainError):  # refused with the enclave gone: not acknowledged
                    answered.append(site.submit(b))

            sender = threading.Thread(target=send)
            sender.start()
            while sender.is_alive() and not health(site).json()["uploads"]["active"]:
                time.sleep(0.005)
            kill()
            sender.join(60)
            held = site.datasets()
            if answered:  # acknowledged: it is there, whole
                assert held.get("alice/b") == answered[0]["merkle_root"]
            assert set(held) - {"alice/b"} == set(acknowledged)  # b whole or absent, nothing else changed
            if "alice/b" in held:
                return
        assert not list((site.root / "state" / "uploads").iterdir())
        acknowledged["alice/b"] = site.submit(b)["merkle_root"]
        assert site.datasets() == acknowledged
        return
    job = start_job(site, datasets=["alice/a"])
    if point == "mid-epoch":
        site.wait(job, lambda j: len(j["progress"]) >= 1)
        kill()
    elif point == "linkage":
        site.wait(job, lambda j: j["phase"] == "linking")
        kill()
    done = site.wait(job, lambda j: j["state"] == "done")
    assert done["attempts"] == (2 if point in ("mid-epoch", "linkage") else 1)
    assert identical_to_uninterrupted(site, job, TRAIN)
    report = trace_report(site, job, QUERIES)
    deploy(site, "digits", job)
    answers = classify(site, "digits", QUERIES)
    if point == "inference":
        load = Load(site, "digits", QUERIES)
        time.sleep(1.0)
        kill()
        time.sleep(0.5)
        load.stop()
    else:
        kill()
    assert classify(site, "digits", QUERIES) == answers
    assert trace_report(site, job, QUERIES) == report
    assert site.datasets() == acknowledged
    assert np.isfinite(load.ok if point == "inference" else 0)
