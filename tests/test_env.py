from semifinetune.env import choose_backend, choose_precision, environment_report, format_report


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


def test_report_without_a_gpu_driver_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from semifinetune.env import environment_report as r; r(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # notebook 01 shows its table without torch's import time
