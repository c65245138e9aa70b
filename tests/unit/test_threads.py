"""How many torch threads a run takes: hand-computed choices for given cores and loads."""

from __future__ import annotations

from wmtp_studio.train.threads import CpuLoad, choose_threads, measure_load


def test_auto_takes_the_free_cores() -> None:
    # 2 cores, idle: both (torch's default, one per physical core, is 2)
    assert choose_threads("auto", CpuLoad(cpus=2, others=0.1), default=2)[0] == 2
    # 2 cores, one busy with another job: 2 - 1.2 = 0.8 free, rounds to 1
    assert choose_threads("auto", CpuLoad(cpus=2, others=1.2), default=2)[0] == 1
    # overloaded: never fewer than 1
    threads, why = choose_threads("auto", CpuLoad(cpus=2, others=7.5), default=2)
    assert threads == 1 and "0.0 of 2 core(s) free" in why
    # 16 cores with 5.4 busy: 10.6 free rounds to 11, under torch's default of 16
    assert choose_threads("auto", CpuLoad(cpus=16, others=5.4), default=16)[0] == 11
    # hyper-threads: 16 logical cores free but torch's default is the 8 physical ones
    assert choose_threads("auto", CpuLoad(cpus=16, others=0.0), default=8)[0] == 8
    # two ranks of one run share the 6 free cores of 8: 3 each
    assert choose_threads("auto", CpuLoad(cpus=8, others=2.0), default=8, processes=2)[0] == 3


def test_a_fixed_number_is_kept_with_a_warning_when_it_oversubscribes() -> None:
    threads, why = choose_threads(2, CpuLoad(cpus=2, others=1.9), default=2)  # 0.1 free
    assert threads == 2 and "oversubscribes" in why
    threads, why = choose_threads(2, CpuLoad(cpus=2, others=0.3), default=2)  # 1.7 free: fine
    assert threads == 2 and "oversubscribes" not in why
    assert choose_threads(None, CpuLoad(cpus=4, others=0.0), default=4)[0] == 4  # torch's choice


def test_the_measured_load_is_within_this_machine() -> None:
    load = measure_load(samples=2, interval_s=0.01)
    assert load.cpus >= 1 and load.others >= 0.0
