"""The job queue through the real server and the `caltrain jobs` commands: jobs run one at a time in the order
they were admitted, a queued job is cancelled at once, `follow` prints epochs until done; a config the enclave
would refuse is refused before any job exists, saying what is wrong."""

from __future__ import annotations

import json

import pytest

from caltrain.cli.main import main
from tests.restart.conftest import Site, start_job


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fifo_queue_cancel_follow_and_early_config_checks(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.submit(site.pack("a", slice(0, 600)))
    home, server = str(site.root / "alice"), site.server.url
    first = start_job(site, datasets=["alice/a"], epochs=2)
    second = start_job(site, datasets=["alice/a"], epochs=1)
    third = start_job(site, datasets=["alice/a"], epochs=1, batch_size=16)
    code, out, _ = run(capsys, "jobs", "list", "--server", server, "--home", home)
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert code == 0 and listed == [first, second, third], "jobs are listed in the order they were admitted"
    code, out, _ = run(capsys, "jobs", "cancel", "--server", server, "--home", home, second)
    assert code == 0 and "cancelled now" in out
    code, out, _ = run(capsys, "jobs", "follow", "--server", server, "--home", home, first)
    assert code == 0 and out.count("epoch ") == 2 and json.loads(out[out.index("{"):])["state"] == "done"
    done = site.wait(third, lambda j: j["state"] == "done")
    assert site.job(second)["state"] == "cancelled" and done["started_at"] > site.job(first)["finished_at"]
    code, out, _ = run(capsys, "jobs", "show", "--server", server, "--home", home, second)
    assert code == 0 and json.loads(out)["state"] == "cancelled"
    code, _, err = run(capsys, "jobs", "cancel", "--server", server, "--home", home, first)
    assert code == 2 and "JobNotFinished" in err and len(err.splitlines()) == 1

    policy = str(site.root / "policy.json")
    for config, word in (
        ({"model": "fmnist-cnn", "frontnet_layers": 1}, "the records are [1, 8, 8]"),  # a 28×28 model, 8×8 records
        ({"model": "digits-cnn", "frontnet_layers": 9}, "out of range"),
        ({"model": "nope"}, "unknown model"),
        ({"model": "digits-cnn", "datasets": ["alice/none"]}, "not been ingested"),
    ):
        path = site.root / "bad.json"
        path.write_text(json.dumps(config))
        code, _, err = run(capsys, "train", "--server", server, "--config", str(path), "--home", home,
                           "--policy", policy)
        assert code == 2 and word in err and len(err.splitlines()) == 1, err
    with site.client() as client:
        assert [j["job_id"] for j in client.jobs()] == [first, second, third], "no job was created"
