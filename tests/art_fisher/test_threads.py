import logging

import pytest
import torch

from art_fisher import _threads, check_threads


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(_threads, "_warned", set())
    threads = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("load", "free"), [(0.2, 2), (1.1, 1), (1.6, 1), (5.0, 1)])
def test_free_cores_subtracts_the_load(two_cores, load, free):
    two_cores.setattr(_threads.os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert _threads.free_cores() == free


def test_warns_once_when_threads_exceed_free_cores(two_cores, caplog):
    two_cores.setattr(_threads.os, "getloadavg", lambda: (1.0, 0.0, 0.0))
    torch.set_num_threads(2)
    with caplog.at_level(logging.WARNING, logger="art_fisher"):
        assert check_threads("the search") == 2
        check_threads("the search")
    (record,) = caplog.records
    assert "2 CPU threads but only 1 core(s) are free: the search" in record.getMessage()
    assert "torch.set_num_threads(1)" in record.getMessage()


def test_silent_when_threads_fit(two_cores, caplog):
    two_cores.setattr(_threads.os, "getloadavg", lambda: (1.0, 0.0, 0.0))
    torch.set_num_threads(1)
    with caplog.at_level(logging.WARNING, logger="art_fisher"):
        check_threads()
    assert not caplog.records
