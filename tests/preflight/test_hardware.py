"""Machine types and GKE's allocatable arithmetic (hardware.py's additions for the preflight)."""

from __future__ import annotations

import pytest

from glimp_ray.hardware import GIB, MACHINES, gke_allocatable, gpus_named


def test_gke_allocatable_of_a_g2_standard_8() -> None:
    machine = MACHINES["g2-standard-8"]
    memory = 32e9 / GIB  # GB read as 10^9 bytes: 29.80 GiB
    assert machine.memory_gib == pytest.approx(memory) and machine.gpu_type is not None
    reserved = 0.25 * 4 + 0.2 * 4 + 0.1 * 8 + 0.06 * (memory - 16)
    cpu, allocatable = gke_allocatable(machine)
    assert allocatable == pytest.approx(memory - reserved - 100 / 1024)
    assert allocatable == pytest.approx(26.28, abs=0.01)
    assert cpu == pytest.approx(8 - 0.06 - 0.01 - 2 * 0.005 - 4 * 0.0025)


def test_gke_allocatable_above_128_gib() -> None:
    machine = MACHINES["a2-ultragpu-2g"]
    reserved = 1 + 0.8 + 0.8 + 0.06 * 112 + 0.02 * (machine.memory_gib - 128)
    assert gke_allocatable(machine)[1] == pytest.approx(machine.memory_gib - reserved - 100 / 1024)


def test_gpus_named_as_ray_names_them() -> None:
    assert [g.memory_gib for g in gpus_named("A100")] == [80.0, 40.0]
    assert [g.name for g in gpus_named("L4")] == ["L4"] and gpus_named("A100-80G") == []
