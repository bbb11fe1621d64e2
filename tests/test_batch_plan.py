"""Rows per generation batch: from free GPU memory, capped, 64 on a card the size of a T4."""

from types import SimpleNamespace

import semifinetune.batch_plan as plan
from semifinetune.models import r1_distill_config


def _gpu(monkeypatch, usable: float, free: float, copy: float = 2.6e9):
    monkeypatch.setattr(plan, "usable_gpu_bytes", lambda: int(usable))
    monkeypatch.setattr(plan, "available_gpu_bytes", lambda: int(free))
    monkeypatch.setattr(plan, "dequantized_copy_bytes", lambda model: int(copy))
    monkeypatch.setattr(plan, "copy_fits", lambda model: True)
    embeddings = SimpleNamespace(weight=SimpleNamespace(element_size=lambda: 2))
    return SimpleNamespace(device=SimpleNamespace(type="cuda"), config=r1_distill_config(), get_input_embeddings=lambda: embeddings)


def test_a_row_holds_its_kv_cache_and_sampling_work():
    config = r1_distill_config()
    # 28 layers x 2 key heads x 128 dims x (key, value) x 2 bytes = 28,672 bytes a slot; 40 bytes a vocabulary entry
    assert plan.row_bytes(config, 576, 2) == 28_672 * 576 + 40 * 151_936


def test_the_batch_grows_with_free_memory_up_to_the_cap(monkeypatch):
    tokens = 576
    per_row = plan.row_bytes(r1_distill_config(), tokens, 2)
    model = _gpu(monkeypatch, usable=139e9, free=plan.HEADROOM_BYTES + 2.6e9 + 300 * per_row)
    assert plan.default_batch_size(model, tokens) == 300
    model = _gpu(monkeypatch, usable=139e9, free=120e9)
    assert plan.default_batch_size(model, tokens) == plan.GPU_MAX_BATCH
    model = _gpu(monkeypatch, usable=139e9, free=1e9)
    assert plan.default_batch_size(model, tokens) == 1  # the out-of-memory fallback takes it from there


def test_a_t4_sized_card_keeps_64_rows(monkeypatch):
    model = _gpu(monkeypatch, usable=15e9, free=12e9)
    assert plan.default_batch_size(model, 576) == plan.SMALL_CARD_BATCH == 64


def test_cpu_batches_48(tiny):
    model, _ = tiny
    assert plan.default_batch_size(model, 100) == plan.CPU_BATCH == 48
