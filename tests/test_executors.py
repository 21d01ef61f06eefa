"""The adapt stage's cells and executors: one process per method, content-keyed cells, and the same
bytes whatever the executor (local, pool; ray in tests marked ``ray``, run by .ci/run on a local head)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal

import pytest

from pipeline import executors
from pipeline import cells
from pipeline.stages import adapt, pretrain

from .conftest import adapted_raw


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def without_timing(folder) -> dict:
    """The cells' metrics less their wall times (the only fields that differ between equal runs)."""
    out = {}
    for p in sorted(folder.glob("*.json")):
        cell = json.loads(p.read_text())
        cell["details"] = {k: v for k, v in cell["details"].items() if k != "train_seconds"}
        out[p.name] = cell
    return out


def stored(project, method="sam") -> list[str]:
    store = project.paths.cell_store(method)
    return sorted(p.name for p in store.iterdir()) if store.is_dir() else []


def local_reference(project) -> tuple[dict, dict]:
    """A local run's safetensors digests and metrics, then the cell store emptied (so the next run
    computes every cell again)."""
    local = run_sam(project)
    expected = {k: v for k, v in digests(local).items() if k.endswith(".safetensors")}
    metrics = without_timing(local)
    shutil.rmtree(project.paths.cell_store("sam"))
    return expected, metrics


def assert_same_files(folder, expected: dict, metrics: dict) -> None:
    assert {k: v for k, v in digests(folder).items() if k.endswith(".safetensors")} == expected
    assert without_timing(folder) == metrics


@pytest.fixture
def pretrained(prepared):
    prepared.write_params(adapted_raw(prepared.raw))
    pretrain.main(prepared.params, prepared.paths)
    return prepared


def run_sam(project, executor="local", workers=0):
    raw = project.raw
    raw["execute"].update(executor=executor, workers=workers)
    project.write_params(raw)
    adapt.main(project.params, project.paths, ["--method", "sam"])
    return project.paths.adapt("sam")


def test_one_process_computes_every_cell_and_assembles_the_stage_folder(pretrained, capsys):
    folder = run_sam(pretrained)
    params = pretrained.params
    names = {f"{d}-{s:g}" for d in params.domains.names for s in params.adapt.sparsities}
    assert {p.stem for p in folder.iterdir()} == names
    assert len(stored(pretrained)) == len(names)
    assert f"{len(names)} cells, {len(names)} computed (local)" in capsys.readouterr().out


def test_an_unchanged_cell_is_not_recomputed(pretrained, capsys):
    folder = run_sam(pretrained)
    first, store = digests(folder), stored(pretrained)
    capsys.readouterr()
    run_sam(pretrained)
    assert "0 computed" in capsys.readouterr().out
    assert digests(folder) == first and stored(pretrained) == store


def test_a_changed_sparsity_recomputes_only_its_cells(pretrained, capsys):
    run_sam(pretrained)
    before = set(stored(pretrained))
    kept = [n for n in before if n.split("-")[1] == "0.01"]
    raw = pretrained.raw
    raw["adapt"]["sparsities"] = [0.01, 0.05]
    pretrained.write_params(raw)
    capsys.readouterr()
    folder = run_sam(pretrained)
    out = capsys.readouterr().out
    assert "4 cells, 2 computed" in out, out
    now = set(stored(pretrained))
    assert set(kept) <= now and len(now - before) == 2  # the 0.01 cells reused, two new 0.05 cells
    assert sorted(p.stem for p in folder.glob("*.json")) == ["VA-0.01", "VA-0.05", "VH-0.01", "VH-0.05"]


def test_another_param_changes_every_key(pretrained):
    run_sam(pretrained)
    before = set(stored(pretrained))
    raw = pretrained.raw
    raw["adapt"]["value_lr"] *= 2
    pretrained.write_params(raw)
    run_sam(pretrained)
    now = set(stored(pretrained))
    assert before <= now  # old cells stay in the store...
    assert len(now - before) == len(before)  # ...and every cell got a new key


def test_a_half_written_cell_is_never_read(pretrained):
    """A worker killed mid-cell leaves only a temporary folder: the next run recomputes that cell."""
    run_sam(pretrained)
    store = pretrained.paths.cell_store("sam")
    victim = sorted(store.iterdir())[0]
    victim.rename(store / f".tmp-{victim.name}-12345")  # as a SIGKILL before the final rename leaves it
    (store / f".tmp-{victim.name}-12345" / f"{victim.name.rsplit('-', 1)[0]}.json").write_text("{garbage")
    folder = run_sam(pretrained)
    assert victim.is_dir()
    json.loads((folder / f"{victim.name.rsplit('-', 1)[0]}.json").read_text())  # the recomputed, whole cell


def test_two_workers_finishing_the_same_cell_keep_one_copy(pretrained):
    from pipeline.methods import registry
    run_sam(pretrained)
    params, paths = pretrained.params, pretrained.paths
    module = registry()["sam"]
    common = {"params": cells.key_params(params, module), "code": cells.code_digest("sam"),
              "inputs": cells.input_digests(paths, module)}
    d, s = params.domains.names[0], params.adapt.sparsities[0]
    task = cells.Task(params, paths, "sam", d, s, cells.cell_key(module, d, s, common))
    assert task.stored.is_dir()  # the stage's own key: the same as computed here
    before = digests(task.stored)
    assert cells.compute(task)["domain_psnr"] == json.loads((task.stored / f"{d}-{s:g}.json").read_text())[
        "domain_psnr"]
    assert digests(task.stored) == before


def test_pool_gives_the_same_bytes_as_local(pretrained):
    expected, metrics = local_reference(pretrained)
    pooled = run_sam(pretrained, "pool", workers=2)
    assert_same_files(pooled, expected, metrics)


def test_a_pool_worker_killed_mid_cell_leaves_the_numbers_of_an_uninterrupted_run(pretrained, capsys):
    """A real SIGKILL of the worker computing a cell (found by its ``.tmp-<cell>-<pid>`` folder): the
    pool reruns the unfinished cells and the stage's files are those of an uninterrupted local run."""
    import threading
    import time
    expected, metrics = local_reference(pretrained)
    store = pretrained.paths.cell_store("sam")
    killed = []

    def killer():
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for tmp in store.glob(".tmp-*"):
                pid = int(tmp.name.rsplit("-", 1)[1])
                if pid != os.getpid():
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
                    break
            time.sleep(0.002)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    pooled = run_sam(pretrained, "pool", workers=2)
    thread.join(timeout=5)
    assert killed, "no worker was caught mid-cell"
    assert "a worker died" in capsys.readouterr().out
    assert_same_files(pooled, expected, metrics)


def test_executor_settings(monkeypatch):
    assert executors.make("local", threads=1).kind == "local"
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert executors.make("pool", threads=4).workers == 4  # whole workers, never split threads
    assert executors.make("pool", threads=4, workers=3).workers == 3
    with pytest.raises(ValueError, match="executor must be one of"):
        executors.make("slurm", threads=1)


def square_or_die(item):
    """``value**2``; kills its own worker process with SIGKILL the first time a flagged item runs
    (``flag``: a file path, created before dying) or every time (``flag == "always"``)."""
    value, flag = item
    if flag == "always" or (flag and not os.path.exists(flag)):
        if flag != "always":
            open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value * value


def test_a_pool_worker_killed_mid_sweep_is_replaced_and_the_sweep_completes(tmp_path, capsys):
    flag = str(tmp_path / "killed")
    items = [(i, flag if i == 3 else None) for i in range(8)]
    pool = executors.Pool(workers=2, threads=1, env={})
    assert pool.map(square_or_die, items) == [i * i for i in range(8)]
    assert os.path.exists(flag)  # a worker really died (SIGKILL) mid-sweep
    assert "a worker died" in capsys.readouterr().out


def test_a_pool_whose_worker_always_dies_fails_in_one_line(tmp_path):
    pool = executors.Pool(workers=1, threads=1, env={})
    with pytest.raises(RuntimeError, match=r"pool: a worker died 3 times; 1 of 2 cells unfinished"):
        pool.map(square_or_die, [(0, None), (1, "always")])


@pytest.mark.ray
def test_a_ray_worker_killed_mid_sweep_is_retried(tmp_path):
    """A Ray task whose worker process is SIGKILLed is retried (``max_retries``): the sweep completes."""
    import sys

    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers lack the tests package
    flag = str(tmp_path / "killed")
    items = [(i, flag if i == 1 else None) for i in range(4)]
    assert executors.Ray(threads=1, gpus_per_cell=0.0, env={}).map(square_or_die, items) == [0, 1, 4, 9]
    assert os.path.exists(flag)


@pytest.mark.ray
def test_the_ray_cluster_is_on_loopback_only():
    """Every node the cluster knows is at 127.0.0.1, and every socket its processes listen on is on
    loopback: a Ray upgrade that changes what keeps it there fails here, not silently."""
    import psutil
    import ray
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    try:
        nodes = ray.nodes()
        assert nodes and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}, nodes
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    finally:
        if started:
            ray.shutdown()
    listening = [(p.info["name"], c.laddr.ip) for p in psutil.process_iter(["name", "cmdline"])
                 if "ray" in " ".join(p.info["cmdline"] or []).lower() or "gcs_server" in (p.info["name"] or "")
                 for c in _connections(p) if c.status == psutil.CONN_LISTEN]
    assert listening, "no Ray process listens at all: is the head running (RAY_ADDRESS)?"
    wrong = [(n, ip) for n, ip in listening if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not wrong, f"Ray processes listening beyond loopback: {wrong}"


def _connections(proc):
    import psutil
    try:
        return proc.net_connections(kind="inet")
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return []


@pytest.mark.ray
def test_ray_gives_the_same_bytes_as_local(pretrained):
    """Needs a Ray head on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --node-ip-address
    127.0.0.1``) and RAY_ADDRESS=127.0.0.1:6390 (.ci/run does both); without RAY_ADDRESS a local Ray is
    started for the stage."""
    expected, metrics = local_reference(pretrained)
    remote = run_sam(pretrained, "ray")
    assert_same_files(remote, expected, metrics)


# ------------------------------------------------------------------------------ the batched path
def run_batched(project, batch: str, stacked: list | None = None, monkeypatch=None, method="sam"):
    """The adapt stage for ``method`` with ``execute.batch`` = ``batch``; ``stacked`` collects the K of every
    stacked fit."""
    from pipeline import batched
    raw = project.raw
    raw["execute"].update(executor="local", workers=0, batch=batch)
    project.write_params(raw)
    if stacked is not None:
        monkeypatch.setattr(batched, "fit_cells", lambda runs, f=batched.fit_cells: stacked.append(len(runs)) or f(runs))
    adapt.main(project.params, project.paths, ["--method", method])
    return project.paths.adapt(method)


def test_batched_cells_are_keyed_apart_and_equal_one_at_a_time_within_rounding(pretrained, monkeypatch):
    """execute.batch always: the method's cells train in one stacked fit, under keys of their own (the
    one-at-a-time cells stay in the store, untouched), and give the same results within 0.01 dB of PSNR
    and the same memory; auto on the CPU keeps the one-at-a-time cells (CPU_CROSSOVER: never)."""
    seq = without_timing(run_batched(pretrained, "never"))
    before = set(stored(pretrained))
    stacked: list[int] = []
    bat = without_timing(run_batched(pretrained, "always", stacked, monkeypatch))
    n = len(pretrained.params.domains.names) * len(pretrained.params.adapt.sparsities)
    assert stacked == [n], "every cell of the grid in one stacked fit"
    now = set(stored(pretrained))
    assert before < now and len(now - before) == len(before), "each batched cell under a key of its own"
    assert seq.keys() == bat.keys()
    for name in seq:
        a, b = seq[name], bat[name]
        assert a["memory_bytes"] == b["memory_bytes"], name
        assert abs(a["domain_psnr"] - b["domain_psnr"]) < 0.01, name
        assert abs(a["details"]["val_psnr"] - b["details"]["val_psnr"]) < 0.01, name
    assert without_timing(run_batched(pretrained, "auto")) == seq  # auto on this CPU: the one-at-a-time cells


def test_a_missing_cell_of_a_batch_trains_again_with_its_whole_batch(pretrained, monkeypatch):
    """A stacked step of another K rounds otherwise, so a batch with one cell missing trains all its cells
    again: the recomputed cell has the bytes it had, and the stored ones keep theirs."""
    folder = run_batched(pretrained, "always")
    expected, metrics = ({k: v for k, v in digests(folder).items() if k.endswith(".safetensors")},
                         without_timing(folder))
    store = pretrained.paths.cell_store("sam")
    victim = sorted(store.iterdir())[1]
    shutil.rmtree(victim)
    stacked: list[int] = []
    folder = run_batched(pretrained, "always", stacked, monkeypatch)
    assert stacked == [len(metrics)], "the whole batch trained again"
    assert victim.is_dir()
    assert_same_files(folder, expected, metrics)


def test_batches_are_planned_from_the_grid_not_from_what_is_left(pretrained):
    """The plan cuts each segment (the grid, each extended point, the replicas) into batches of at most
    CPU_MAX_CELLS on the CPU, a cell's key holding its batch's K: adding an extended point leaves the grid's
    batches and keys as they were."""
    from pipeline import batched
    from pipeline.methods import registry
    raw = pretrained.raw
    raw["execute"]["batch"] = "always"
    raw["domains"]["names"] = ["VA", "VP", "VC", "VH"]
    raw["adapt"]["sparsities"] = [0.01, 0.05, 0.1]  # 12 cells: a batch of 8 and one of 4
    pretrained.write_params(raw)
    params, paths, module = pretrained.params, pretrained.paths, registry()["sam"]
    grid = cells.plan(params, paths, module)
    assert batched.CPU_MAX_CELLS == 8
    assert [len(b) for b in cells.batches(grid)] == [8, 4]
    setting = {"adapt.value_lr": params.adapt.value_lr * 3}
    more = cells.plan(params, paths, module, [{"setting": setting, "cells": [["VA", 0.01], ["VH", 0.1]]}])
    assert [t.key for t in more[:len(grid)]] == [t.key for t in grid]
    assert [len(b) for b in cells.batches(more)] == [8, 4, 2]
    raw["execute"]["batch"] = "never"
    pretrained.write_params(raw)
    alone = cells.plan(pretrained.params, paths, module)
    assert not any(t.batched for t in alone) and not {t.key for t in alone} & {t.key for t in grid}
    with pytest.raises(ValueError, match="compute_batch"):
        cells.compute(grid[0])


def test_the_stage_counts_the_missing_cells_of_a_batch(pretrained, capsys):
    run_batched(pretrained, "always")
    victim = sorted(pretrained.paths.cell_store("sam").iterdir())[0]
    shutil.rmtree(victim)
    capsys.readouterr()
    run_batched(pretrained, "always")
    n = len(pretrained.params.domains.names) * len(pretrained.params.adapt.sparsities)
    assert f"adapt: {n} cells, 1 computed, {n - 1} unchanged" in capsys.readouterr().out
