"""Run options carried whole: one parser of a device name (`config.Device`), one place that
checks a run's options (`config.RunOptions`), and one events object through the Python API."""

from __future__ import annotations

import pytest

from matpac_cli.config import Device
from matpac_cli.errors import UsageError


@pytest.mark.parametrize(
    "text, kind, index, name",
    [
        (None, "auto", None, "auto"),
        ("", "auto", None, "auto"),
        ("auto", "auto", None, "auto"),
        ("cpu", "cpu", None, "cpu"),
        ("CPU", "cpu", None, "cpu"),
        ("cuda", "cuda", None, "cuda"),
        ("cuda:1", "cuda", 1, "cuda:1"),
        ("CUDA:0", "cuda", 0, "cuda:0"),
        ("mps", "mps", None, "mps"),
    ],
)
def test_each_device_form_parses(text, kind, index, name):
    device = Device.parse(text)
    assert (device.kind, device.index, device.name, str(device)) == (kind, index, name, name)
    assert Device.parse(device) is device  # a parsed device passes through
    assert [device.is_auto, device.is_cpu, device.is_cuda, device.is_mps] == [
        kind == k for k in ("auto", "cpu", "cuda", "mps")
    ]


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cuda:12345", "cpu:0", "mps:1", "auto:1", " cpu", "tpu"])
def test_each_bad_device_is_refused_in_one_line(text):
    with pytest.raises(UsageError) as caught:
        Device.parse(text)
    assert str(caught.value) == f"--device {text}: expected auto, cpu, cuda, cuda:N or mps"


def test_every_device_question_is_answered_by_the_one_parser():
    """The defaults that depend on the device read it through `Device`, whatever spelling."""
    from matpac_cli.inference.predictor import default_batch, pick_device
    from matpac_cli.pipeline.feed import default_workers

    for spelling in ("cuda", "cuda:1", "CUDA:1", Device("cuda", 1)):
        assert default_batch(spelling) == 128
        assert default_workers(spelling) == default_workers("cuda")
    assert default_batch("cpu") == default_batch(Device("cpu")) == 8
    assert default_batch("mps") == 16
    assert pick_device("CPU") == "cpu"
    with pytest.raises(UsageError, match="expected auto, cpu, cuda, cuda:N or mps"):
        pick_device("gpu")
