"""Device parsing, the current-device stack, and the clear error for a missing GPU."""
import pytest

import flowjit as fj
from flowjit.frontend import device as D


def test_list_devices_starts_with_cpu():
    devs = fj.list_devices()
    assert devs[0] == D.CPU0
    assert all(d.kind in ("CPU", "GPU") for d in devs)


@pytest.mark.parametrize("s", ["/cpu:0", "cpu", "CPU:0", "/device:CPU:0",
                               "/job:localhost/replica:0/task:0/device:CPU:0"])
def test_parse_cpu_spellings(s):
    assert D.parse(s) == D.CPU0


def test_device_block_nests_and_restores():
    assert D.current() == D.CPU0
    with fj.device("/cpu:0") as d:
        assert d == D.CPU0 and D.current() == D.CPU0
    assert D.current() == D.CPU0


def test_bad_device_strings_are_clear_errors():
    with pytest.raises(fj.errors.DeviceError, match="cannot parse"):
        D.parse("/tpu:0")
    with pytest.raises(fj.errors.DeviceError, match="does not exist"):
        D.parse("/cpu:3")


def test_missing_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(D, "_gpu_count", lambda: 0)
    with pytest.raises(fj.errors.DeviceError, match="no CUDA GPU"):
        with fj.device("/gpu:0"):
            pass
    assert D.current() == D.CPU0
