"""A timing says whether to trust it: the cores other processes used, and how far the runs spread."""

import subprocess
import sys
import time

import pytest

from evalsuite.machine_load import OtherLoad, reliability
from evalsuite.summary import speedup, unreliable, _host_fraction


def test_a_busy_neighbour_is_seen():
    if sys.platform != "linux":
        pytest.skip("reads /proc")
    with OtherLoad() as quiet:
        time.sleep(0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"])
    try:
        time.sleep(0.3)
        with OtherLoad() as busy:
            time.sleep(1.0)
    finally:
        spinner.kill()
    assert quiet.cores is not None and busy.cores is not None and busy.cores > 0.5  # the spinner held a core


def test_our_own_work_is_not_counted_as_load(monkeypatch):
    from evalsuite import machine_load

    busy, own, clock = iter([1000, 1300]), iter([500, 750]), iter([10.0, 12.0])
    monkeypatch.setattr(machine_load, "_busy_ticks", lambda: next(busy))
    monkeypatch.setattr(machine_load, "_own_ticks", lambda: next(own))
    monkeypatch.setattr(machine_load.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(machine_load.os, "sysconf", lambda name: 100)
    with OtherLoad() as load:
        pass
    assert load.cores == pytest.approx(0.25)  # 300 busy ticks, 250 of them ours, over 2 s at 100 ticks/s


def test_reliability_says_why():
    assert reliability(0.05, 0.0) is None
    assert "1.50 cores" in reliability(0.05, 1.5)
    assert "spread 40%" in reliability(0.40, None)


def test_the_report_marks_noisy_ratios_and_impossible_roofline_shares():
    base = {"decode_ms_per_token": {"p50": 10.0, "p90": 11.0}, "latency": {"unreliable": None}}
    fast = {"decode_ms_per_token": {"p50": 0.05, "p90": 0.06}, "latency": {"unreliable": "other processes ..."}}
    assert unreliable(fast) and speedup(fast, base) == "200.00x (noisy timing)"
    assert speedup(base, base) == "1.00x"
    assert _host_fraction({"host_roofline": {"measured_over_projected": 1.18, "projected_tokens_per_s": 900}}) \
        == "118% of 900: above the bound, noise"
