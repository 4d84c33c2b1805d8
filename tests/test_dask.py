"""Scale-out on a Dask cluster: a LocalCluster of two worker processes (one thread each, as
`dask worker --nthreads 1` would run) does the certify engines' jobs and gives the certificate the
process pool gives; connection problems are one line and exit 2; nothing stays on the workers.

One cluster per module (starting it is most of the cost)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import netgen
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import toolchain
from toolchain.certify import certifier, parallel
from toolchain.certify.certifier import certify
from toolchain.certify.parallel import ClusterError, DaskRunner, Problem, code_identity, probe_scheduler
from toolchain.certify.region import Box
from toolchain.certify.settings import DEFAULT
from toolchain.cli.main import app
from toolchain.errors import QassureError, SoundnessViolation

distributed = pytest.importorskip("distributed")

SEARCH = DEFAULT.replace(max_boxes=120, round_boxes=8, chunk_boxes=8, falsify_samples=300)


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each; shut down after the module. Its HTTP server takes a free
    port (others may be running a cluster on this machine)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as c:
        yield c


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as c:
        yield c


def _kept_on_workers(client) -> dict:
    """Per worker: the keys it holds (none once a search's client has closed: the problem, with the
    prepared ops' constants built on it, went with it)."""
    return {w: len(keys) for w, keys in client.has_what().items()}


def _compiled_signatures() -> int:
    from toolchain.certify import fused

    return len(fused.relax_rows.signatures)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cluster_certificate_equals_the_process_pools(cluster, client):
    net, pg = netgen.mlp([3, 10, 10, 2], ["relu", "relu", None], seed=3, calib_scale=0.7).net()
    boxes = [Box(np.full(3, -0.6), np.full(3, 0.6)), Box(np.full(3, 0.1), np.full(3, 0.3))]
    pooled = certify(net, pg, boxes, budget=1e-4, target="t", method="auto", settings=SEARCH, workers=2)
    on_cluster = certify(net, pg, boxes, budget=1e-4, target="t", method="auto", settings=SEARCH, workers=2,
                         scheduler=cluster.scheduler_address)
    assert on_cluster == pooled
    assert all(r.work["rounds"] > 1 for r in on_cluster.regions)  # branch and bound ran rounds of jobs
    # The jobs ran on the workers, through the numba-compiled differential pass.
    assert all(n > 0 for n in client.run(_compiled_signatures).values())
    assert all(kept == 0 for kept in _kept_on_workers(client).values())


def boom(problem: Problem, job: int) -> int:
    """A job that fails on a worker as the engines' jobs may (module level: workers import it)."""
    if job == 3:
        raise SoundnessViolation(f"job {job}: a witness above the bound")
    if job == 4:
        raise QassureError("an unsupported op", "model.tflite")
    return job * 2


def test_a_job_error_comes_back_with_its_type_and_nothing_stays(cluster, client):
    net, pg = netgen.tiny(0).net()
    runner = DaskRunner(Problem(net, pg, DEFAULT), cluster.scheduler_address)
    try:
        assert runner.workers == 2
        assert runner.map(boom, [2, 0, 1]) == [4, 0, 2]  # job order, whatever worker finished first
        assert runner.map(boom, []) == []
        with pytest.raises(SoundnessViolation, match="job 3: a witness above the bound"):
            runner.map(boom, [0, 1, 3, 5, 6])
        with pytest.raises(QassureError, match="model.tflite: an unsupported op"):
            runner.map(boom, [4])
    finally:
        runner.close()
    assert all(kept == 0 for kept in _kept_on_workers(client).values())


def test_workers_running_other_code_are_refused(cluster, monkeypatch):
    net, pg = netgen.tiny(0).net()
    here = code_identity()
    assert here["qassure"].startswith(toolchain.__version__)
    monkeypatch.setattr(toolchain, "__version__", "0.0.0-elsewhere")  # this process only
    with pytest.raises(ClusterError, match=r"worker .* runs qassure .* but this process runs 0\.0\.0-else"):
        DaskRunner(Problem(net, pg, DEFAULT), cluster.scheduler_address)


def test_a_scheduler_without_workers_is_refused(monkeypatch):
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT", 1.0)
    net, pg = netgen.tiny(0).net()
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp://", dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as empty:
        address = empty.scheduler_address
        with pytest.raises(ClusterError, match=f"the Dask scheduler at {address} has no workers"):
            DaskRunner(Problem(net, pg, DEFAULT), address)


def test_unreachable_scheduler_is_one_line():
    net, pg = netgen.tiny(0).net()
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {address}: .*refused"):
        certify(net, pg, [Box(np.zeros(net.n_inputs), np.ones(net.n_inputs))], budget=1.0, target="t",
                scheduler=address)


# --------------------------------------------------------------------------------------------- the commands


def _config(tmp_path: Path, zoo: dict, **extra) -> Path:
    m = zoo["mlp_fused"]
    doc = {"float_tflite": str(m.float_tflite), "int8_tflite": str(m.int8_tflite),
           "region": {"box": {"low": -1.0, "high": 1.0}}, "budget": {"max_abs_error": 16.0},
           "representative_data": 8, "samples": 200, "time_limit": 600, "max_boxes": 256, **extra}
    path = tmp_path / "mlp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_certify_command_on_the_cluster_writes_the_same_certificate(tmp_path, zoo, cluster):
    cfg = _config(tmp_path, zoo)
    base = ["certify", str(cfg), "--target", "cortex-m4"]
    here = CliRunner().invoke(app, [*base, "--workers", "2", "--out", str(tmp_path / "here")])
    there = CliRunner().invoke(app, [*base, "--scheduler", cluster.scheduler_address, "--out",
                                     str(tmp_path / "there")])
    assert here.exit_code == there.exit_code == 0, there.output
    cert = (tmp_path / "there" / "certificate.json").read_bytes()
    assert cert == (tmp_path / "here" / "certificate.json").read_bytes()
    # A budget between the witness and the first bound: the search split boxes for some rounds to pass.
    assert json.loads(cert)["regions"][0]["work"]["rounds"] > 1


@pytest.mark.parametrize("command", ["certify", "run"])
def test_scheduler_from_config_or_option(tmp_path, zoo, cluster, monkeypatch, command):
    """The config's `scheduler` key reaches the certifier; --scheduler overrides it, `local` runs here."""
    seen = []
    real = certifier.certify

    def recording(*args, scheduler=None, **kw):
        seen.append(scheduler)
        return real(*args, **{**kw, "scheduler": None})  # the work itself: the test above covers the cluster

    monkeypatch.setattr(certifier, "certify", recording)
    address = cluster.scheduler_address
    cfg = _config(tmp_path, zoo, scheduler=address, max_boxes=4)
    base = [command, str(cfg), "--target", "cortex-m4", "--out", str(tmp_path / "o")]
    for extra in ([], ["--scheduler", "local"], ["--scheduler", address.replace("127.0.0.1", "localhost")]):
        res = CliRunner().invoke(app, [*base, *extra])
        assert res.exit_code in (0, 1), res.output
    assert seen == [address, None, address.replace("127.0.0.1", "localhost")]


@pytest.mark.parametrize("command", ["certify", "run"])
def test_unreachable_scheduler_exits_2_in_one_line_before_any_work(tmp_path, zoo, monkeypatch, command):
    def never(*args, **kw):
        raise AssertionError("the certifier ran")

    monkeypatch.setattr(certifier, "certify", never)
    cfg = _config(tmp_path, zoo)
    address = f"tcp://127.0.0.1:{_free_port()}"
    res = CliRunner().invoke(app, [command, str(cfg), "--target", "cortex-m4", "--scheduler", address,
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {cfg}: cannot reach the Dask scheduler at {address}: ")
    assert not (tmp_path / "o").exists()


def test_bad_scheduler_addresses_exit_2(tmp_path, zoo):
    cfg = _config(tmp_path, zoo)
    for bad in ("localhost:8786", "http://h:8786", "tcp://h", "tcp://h:99999"):
        res = CliRunner().invoke(app, ["certify", str(cfg), "--target", "cortex-m4", "--scheduler", bad])
        assert res.exit_code == 2 and res.stderr.startswith(f"error: --scheduler {bad!r}: expected"), bad
        res = CliRunner().invoke(app, ["certify", str(_config(tmp_path, zoo, scheduler=bad)), "--target",
                                       "cortex-m4"])
        assert res.exit_code == 2 and "key 'scheduler': expected a Dask scheduler address" in res.stderr, bad
        assert len(res.stderr.strip().splitlines()) == 1


def test_without_distributed_the_pip_command_is_the_error(tmp_path, zoo):
    """In a fresh process where `distributed` cannot be imported: a scheduler is one line naming the pip
    command; without one, certify runs (and never imports it)."""
    cfg = _config(tmp_path, zoo, scheduler="tcp://127.0.0.1:8786", max_boxes=4)
    code = ("import sys; sys.modules['distributed'] = None\n"  # as if it were not installed
            "from toolchain.cli.main import main\n"
            "try: main(sys.argv[1:])\n"
            "except SystemExit as e: sys.exit(e.code)\n")
    base = [sys.executable, "-c", code, "certify", str(cfg), "--target", "cortex-m4", "--out",
            str(tmp_path / "o")]
    res = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"error: {cfg}: a Dask scheduler was given but the `distributed` package "
                                  "is not installed: pip install 'distributed>=2024.1'")
    res = subprocess.run([*base, "--scheduler", "local", "--workers", "1"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode in (0, 1) and "error:" not in res.stderr, res.stderr
    assert (tmp_path / "o" / "certificate.json").is_file()


def test_a_port_that_does_not_speak_dask_is_refused_in_one_line():
    """E.g. the dashboard's HTTP port: it waits for a request, where a scheduler sends its handshake."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ClusterError, match=f"at {address}: the server there sent no Dask handshake"):
            probe_scheduler(address, timeout=0.5)
