import pytest

from semifinetune.env import choose_backend, choose_precision, environment_report, format_report, nvidia_driver_present


def test_report_on_this_cpu_machine():
    report = environment_report()
    assert report["cuda_available"] is False
    assert report["cpu_count"] >= 1 and report["ram_gib"] > 0
    assert report["versions"]["torch"] != "not installed"
    assert report["backend"] == "transformers" and report["precision"] == "fp32"
    assert "transformers" in format_report(report)


def test_backend_and_precision_rules():
    t4 = {"cuda_available": True, "bf16_supported": False, "unsloth_importable": True}
    h100 = {"cuda_available": True, "bf16_supported": True, "unsloth_importable": False}
    cpu = {"cuda_available": False, "bf16_supported": False, "unsloth_importable": True}
    assert (choose_backend(t4), choose_precision(t4)) == ("transformers", "fp16")  # CUDA-graphed: faster than Unsloth
    assert (choose_backend(h100), choose_precision(h100)) == ("transformers", "bf16")
    assert (choose_backend(cpu), choose_precision(cpu)) == ("transformers", "fp32")
    assert choose_backend(t4, "unsloth") == "unsloth"


@pytest.mark.skipif("nvidia_driver_present()", reason="machine-dependent: this machine has an NVIDIA driver, so the "
                    "report imports torch to ask it for the GPU (CUDA hidden or not)")
def test_report_without_a_gpu_driver_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from semifinetune.env import environment_report as r; r(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # notebook 01 shows its table without torch's import time


X86_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8 sha_ni
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes sve sve2 bf16 i8mm
CPU part\t: 0xd4f
"""


def test_cpuinfo_gives_the_model_and_the_numeric_flags_of_the_first_processor():
    from semifinetune.env import parse_cpuinfo

    x86 = parse_cpuinfo(X86_CPUINFO)
    assert x86 == {"model": "Intel(R) Xeon(R) Platinum 8480+",
                   "flags": ["amx_bf16", "amx_int8", "amx_tile", "avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"]}
    assert parse_cpuinfo(ARM_CPUINFO) == {"model": "0xd4f", "flags": ["asimd", "bf16", "i8mm", "sve", "sve2"]}


def test_cpu_line_names_this_cpu_and_the_kernels_it_gets():
    from semifinetune.env import cpu_features, cpu_line

    features = cpu_features()
    line = cpu_line(features)
    assert features["cores"] >= 1 and features["model"] in line
    assert f"torch CPU capability {features['torch_cpu_capability']}" in line
    assert all(flag in line for flag in features["flags"])
