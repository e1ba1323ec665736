"""torch's CPU threads: the cores other processes leave free, shared among a run's xdist workers.

torch takes every core by default, and on a machine where anything else runs (a second xdist worker,
a nightly job on a shared node) its threads then fight for the same cores: the targeted-Jacobian
cases of the demo took 7.6x longer beside one other torch process. `bench/threads_bench.py` measures
the fix side by side.
"""

import multiprocessing
import os
import time

import pytest
import torch

from fixtures.device import busy_cores, cpu_threads, size_threads


@pytest.mark.parametrize(("cores", "busy", "workers", "threads"), [
    (2, 0.0, 1, 2), (2, 1.1, 1, 1), (2, 0.4, 2, 1), (16, 3.6, 2, 6), (2, 2.0, 1, 1), (8, None, 1, 8), (4, 0.0, 8, 1)])
def test_threads_are_the_free_cores_shared_among_workers(cores, busy, workers, threads):
    assert cpu_threads(cores, busy, workers) == threads


def test_busy_cores_reads_the_kernels_counters(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    samples = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  150 0 150 900 0 0 0 0 0 0\n"])

    def sleep(_):
        stat.write_text(next(samples, "cpu  150 0 150 900 0 0 0 0 0 0\n"))

    stat.write_text(next(samples))
    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    # 200 ticks, 100 idle: half the machine's 4 cores busy
    assert busy_cores(stat=stat) == pytest.approx(2.0)
    assert busy_cores(stat=tmp_path / "missing") is None


def _spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


@pytest.mark.skipif(multiprocessing.cpu_count() < 2, reason="needs two cores to see one of them busy")
def test_a_busy_core_is_seen_and_left_alone():
    before = torch.get_num_threads()
    spinner = multiprocessing.get_context("spawn").Process(target=_spin, args=(3.0,))
    spinner.start()
    try:
        time.sleep(0.8)                     # the spinner is running
        assert busy_cores(interval=0.5) >= 0.6
        text = size_threads("auto", 1)
        assert torch.get_num_threads() <= max(1, len(os.sched_getaffinity(0)) - 1)
        assert "busy with other work" in text
    finally:
        spinner.join()
        torch.set_num_threads(before)


def test_threads_option_takes_a_number_auto_or_torch():
    before = torch.get_num_threads()
    try:
        assert size_threads("torch", 4).startswith(f"{before} (torch's default") and torch.get_num_threads() == before
        assert size_threads("1", 4).startswith("1 ") and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="--threads zero: give a whole number"):
            size_threads("zero", 1)
    finally:
        torch.set_num_threads(before)
