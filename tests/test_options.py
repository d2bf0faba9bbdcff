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
    assert str(caught.value) == f"device={text}: expected auto, cpu, cuda, cuda:N or mps"


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


def test_run_options_default_and_normalise():
    from matpac_cli.config import RunOptions

    options = RunOptions()
    assert options == RunOptions("auto", "auto", None, None, None, "local", None)
    assert options.device == Device("auto")
    built = RunOptions("CUDA:1", "BF16", threads=0, batch_size=4, workers=0, engine="Local")
    assert (built.device, built.precision, built.threads, built.workers, built.engine) == (
        Device("cuda", 1),
        "bf16",
        None,  # 0: the default
        None,
        "local",
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size=0: give at least 1"),
        ({"batch_size": -3}, "batch_size=-3: give at least 1"),
        ({"workers": -1}, "workers=-1: give a positive count, or 0 for the default"),
        ({"threads": -2}, "threads=-2: give a positive count, or 0 for the default"),
        ({"precision": "fp8"}, "precision=fp8: expected auto, fp32, bf16 or fp16"),
        ({"device": "gpu"}, "device=gpu: expected auto, cpu, cuda, cuda:N or mps"),
        ({"engine": "spark"}, "engine=spark: expected local or ray"),
    ],
)
def test_run_options_are_checked_once_when_built(kwargs, message):
    from matpac_cli.config import RunOptions

    with pytest.raises(UsageError) as caught:
        RunOptions(**kwargs)
    assert str(caught.value) == message


def test_a_bad_batch_size_is_refused_once_by_the_options(tmp_path):
    """The one check of `--batch-size`: the command's line is the options' line, and no other
    module has a copy of the rule (the engines take the options as built)."""
    import re
    from pathlib import Path

    from conftest import run_matpac, write_audio

    write_audio(tmp_path / "a.wav", 1.0)
    proc = run_matpac(["embed", "a.wav", "--out", "e.npy", "--batch-size", "0"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == "matpac: error: --batch-size 0: give at least 1"
    package = Path(__file__).resolve().parents[1] / "matpac_cli"
    homes = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if re.search(r"batch_size\s*<\s*1|--batch-size[^\n]*at least 1", p.read_text(encoding="utf-8"))
    ]
    assert homes == ["config.py"], homes


def test_the_precision_rule_has_one_home(monkeypatch):
    """`auto` -> bf16 on CUDA (fp16 without bf16), fp32 elsewhere, decided by
    `config.pick_precision` alone: the local predictor's dtype and a Ray cluster's placement give
    the same answer, and no other module spells the rule or the dtype -> name table."""
    import re
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from matpac_cli.config import pick_precision, precision_name
    from matpac_cli.engines.ray.cluster import Cluster
    from matpac_cli.inference.predictor import pick_dtype

    assert [pick_precision("auto", d) for d in ("cpu", "mps", "cuda", "CUDA:1", Device("cuda", 0))] == [
        "fp32",
        "fp32",
        "bf16",
        "bf16",
        "bf16",
    ]
    assert pick_precision("auto", "cuda", lambda: False) == "fp16"
    assert pick_precision("FP16", "cpu") == "fp16" and pick_precision(None, "cpu") == "fp32"
    with pytest.raises(UsageError, match="precision=fp8: expected auto, fp32, bf16 or fp16"):
        pick_precision("fp8", "cpu")
    for bf16 in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        for device in ("cpu", "cuda"):
            for precision in ("auto", "fp32", "bf16", "fp16"):
                assert precision_name(pick_dtype(precision, device)) == pick_precision(
                    precision, device, lambda bf16=bf16: bf16
                )
    cluster = SimpleNamespace(resources=lambda: (4.0, 1))  # a cluster with a GPU: bf16 there
    for device in ("auto", "cpu", "cuda"):
        for precision in ("auto", "fp32", "bf16", "fp16"):
            where, name = Cluster.placement(cluster, device, precision)
            assert name == pick_precision(precision, where), (device, precision)
    assert [precision_name(t) for t in (torch.float32, torch.bfloat16, torch.float16, torch.float64)] == [
        "fp32",
        "bf16",
        "fp16",
        None,
    ]
    root = Path(__file__).resolve().parents[1]  # a torch.device's `.type == "cuda"` is not a name test
    rule = re.compile(
        r"""["']bf16["'] if |["']bfloat16["']\s*:\s*["']bf16|startswith\(["']cuda|(?<!\.type) == ["']cuda["']"""
    )
    homes = sorted(
        p.relative_to(root).as_posix()
        for folder in ("matpac_cli", "benchmarks")
        for p in (root / folder).rglob("*.py")
        if rule.search(p.read_text(encoding="utf-8"))
    )
    assert homes == ["matpac_cli/config.py"], homes
