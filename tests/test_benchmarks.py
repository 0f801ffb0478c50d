"""The benchmark programs that are not Python: they build, run and print what the README reads."""

import json
import os
import platform
import shutil
import subprocess

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="cpu_peak.c needs gcc")
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="cpu_peak.c is for x86-64"
)
def test_cpu_peak_prints_the_rates_as_json(tmp_path):
    program = str(tmp_path / "cpu_peak")
    source = os.path.join(BENCHMARKS, "cpu_peak.c")
    build = ["gcc", "-O3", "-march=native", "-Wall", "-Werror", "-pthread", source, "-o", program]
    subprocess.run(build, check=True)
    rates = json.loads(subprocess.run([program, "0.01"], capture_output=True, check=True).stdout)
    assert rates["cores"] == os.cpu_count()
    assert rates["fp32_isa"] in ("AVX-512", "AVX2")
    assert rates["fp32_gflops_one_core"] > 0 and rates["fp32_gflops_all_cores"] > 0
    assert rates["fp32_flop_per_cycle"] == pytest.approx(
        rates["fp32_gflops_one_core"] / rates["clock_ghz"], rel=0.01
    )
    refused = subprocess.run([program, "-1"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "must be > 0, got -1" in refused.stderr
