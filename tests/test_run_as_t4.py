"""benchmarks/run_as_t4.py's pieces that need no GPU: the T4 it makes torch report, as the package reads it (an
80 GB H100's torch.cuda faked), the whole-process memory peak, the planned batches and the child's command line."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from semifinetune.runs import PROJECT_ROOT

H100_NAME = "NVIDIA H100 80GB HBM3"
H100_BYTES = 85_045_854_208


class FakeCuda:
    """torch.cuda as an 80 GB H100 shows it; the allocator's state as plain numbers."""

    def __init__(self):
        self.fraction, self.free = 1.0, 70 * 10**9
        self.allocated, self.reserved, self.peak = 2 * 10**9, 3 * 10**9, 3 * 10**9

    def is_available(self):
        return True

    def device_count(self):
        return 1

    def get_device_properties(self, device=None):
        return SimpleNamespace(name=H100_NAME, major=9, minor=0, multi_processor_count=132, total_memory=H100_BYTES,
                               L2_cache_size=50 * 2**20)

    def get_device_name(self, device=None):
        return H100_NAME

    def get_device_capability(self, device=None):
        return (9, 0)

    def is_bf16_supported(self, including_emulation=True):
        return True

    def set_per_process_memory_fraction(self, fraction, device=None):
        self.fraction = fraction

    def get_per_process_memory_fraction(self, device=None):
        return self.fraction

    def mem_get_info(self, device=None):
        return self.free, H100_BYTES

    def memory_allocated(self, device=None):
        return self.allocated

    def memory_reserved(self, device=None):
        return self.reserved

    def max_memory_reserved(self, device=None):
        return self.peak

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.reserved


@pytest.fixture
def script(monkeypatch):
    """benchmarks/run_as_t4.py as a module (it imports its neighbours in benchmarks/ as the scripts do)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("run_as_t4", PROJECT_ROOT / "benchmarks" / "run_as_t4.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_torch(monkeypatch):
    """`import torch` gives an H100's torch.cuda and SDPA switches; the package looks for a driver and finds one."""
    from semifinetune import env

    sdp = {"flash": True, "cudnn": True, "mem_efficient": True, "math": True}
    backends = SimpleNamespace(cuda=SimpleNamespace(enable_flash_sdp=lambda on: sdp.update(flash=on),
                                                    enable_cudnn_sdp=lambda on: sdp.update(cudnn=on)))
    torch = SimpleNamespace(cuda=FakeCuda(), backends=backends, version=SimpleNamespace(cuda="13.0", hip=None), sdp=sdp)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(env, "nvidia_driver_present", lambda: True)
    return torch


def test_the_package_reads_a_t4_and_chooses_fp16(script, fake_torch):
    from semifinetune.env import environment_report
    from semifinetune.workload import this_card, tokens_per_s

    real = script.look_like_a_t4(fake_torch)
    report = environment_report()
    assert real == {"real_card": H100_NAME, "real_memory_bytes": H100_BYTES}
    assert (report["gpu_name"], report["compute_capability"], report["gpu_memory_gib"]) == ("Tesla T4", "7.5", 14.0)
    assert report["bf16_supported"] is False and report["precision"] == "fp16"
    assert fake_torch.cuda.is_bf16_supported() is True  # emulated, as torch says on a real T4
    assert this_card() == "Tesla T4" and tokens_per_s(this_card()) == (2_800, "estimated")  # workload.py's T4 rate
    assert fake_torch.sdp == {"flash": False, "cudnn": False, "mem_efficient": True, "math": True}
    # the real card's allocator is what holds the process to 15 GB
    assert fake_torch.cuda.fraction == pytest.approx(15e9 / H100_BYTES)
    assert fake_torch.cuda.get_device_properties(0).L2_cache_size == 50 * 2**20  # the rest stays the real card's


def test_batch_plan_holds_to_15_gb_not_15_gb_times_the_fraction(script, fake_torch):
    from semifinetune.batch_plan import SMALL_CARD_BYTES, available_gpu_bytes, usable_gpu_bytes

    cuda = fake_torch.cuda
    script.look_like_a_t4(fake_torch)
    assert usable_gpu_bytes() == 15 * 10**9 < SMALL_CARD_BYTES  # the T4's 64-row cap applies
    assert available_gpu_bytes() == 15 * 10**9 - cuda.allocated
    assert cuda.mem_get_info() == (15 * 10**9 - cuda.reserved, 15 * 10**9)
    cuda.free = 5 * 10**9  # the real card fuller than the T4's share: its free memory is the bound
    assert cuda.mem_get_info() == (5 * 10**9, 15 * 10**9)


def test_the_peak_reserved_outlives_the_pipelines_resets(script):
    cuda = FakeCuda()
    peak = script.PeakReserved(cuda)
    cuda.peak = 9 * 10**9  # training
    cuda.reset_peak_memory_stats()  # as the sweep starts
    cuda.peak = 5 * 10**9
    assert cuda.peak == 5 * 10**9 and peak.bytes() == 9 * 10**9
    cuda.reset_peak_memory_stats()
    cuda.peak = 11 * 10**9
    assert peak.bytes() == 11 * 10**9


def test_the_batches_generate_plans_are_recorded(script, tiny, monkeypatch):
    from semifinetune import generate
    from semifinetune.batch_plan import CPU_BATCH

    model, tokenizer = tiny
    monkeypatch.setattr(generate, "default_batch_size", generate.default_batch_size)  # undone after the test
    planned = script.record_results(generate, "default_batch_size")
    settings = generate.SamplingSettings(temperature=0.0, max_new_tokens=2)
    answers = generate.generate(model, tokenizer, ["What is a wafer?", "What is a die?"], settings, progress=False)
    generate.generate(model, tokenizer, ["What is a wafer?"], settings, batch_size=1, progress=False)
    assert len(answers) == 2 and planned == [CPU_BATCH]  # the call given a batch size plans none


def test_the_child_runs_the_t4_pipeline_on_the_model_with_the_overrides_after_it(script):
    from semifinetune.cli import _overrides, build_parser, cmd_run

    args = build_parser().parse_args(script.cli_args("/tmp/r1", "/tmp/run", ["max_steps=20", "model_name=/tmp/other"]))
    assert (args.func, args.profile, args.run_dir) == (cmd_run, "t4", "/tmp/run")
    assert _overrides(args) == {"model_name": "/tmp/other", "max_steps": 20}
    assert _overrides(build_parser().parse_args(script.cli_args("/tmp/r1", "/tmp/run", [])))["model_name"] == "/tmp/r1"
