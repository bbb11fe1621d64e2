"""Per-row sampling (transformers' warpers, row by row) and the static-cache decoding loop, run eagerly on CPU."""

from contextlib import contextmanager

import pytest
import torch

from semifinetune.decode import static_decode, warp_scores
from semifinetune.generate import SamplingSettings, eos_token_ids, generate

QUESTIONS = ["Who founded TSMC?", "What is EUV lithography used for in a modern semiconductor fab?", "CUDA?"]


def test_per_row_warping_equals_transformers_warpers_row_by_row():
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0)) * 3
    settings = [(0.3, 0.95), (0.6, 0.95), (1.0, 0.5), (0.7, 1.0), (1.2, 0.9)]
    got = warp_scores(logits, torch.tensor([t for t, _ in settings]), torch.tensor([p for _, p in settings]))
    for row, (temperature, top_p) in enumerate(settings):
        expected = TemperatureLogitsWarper(temperature)(None, logits[row : row + 1])
        if top_p < 1.0:  # transformers adds no top-p warper at 1.0
            expected = TopPLogitsWarper(top_p)(None, expected)
        assert torch.equal(torch.isinf(got[row]), torch.isinf(expected[0]))
        assert torch.allclose(got[row][~torch.isinf(got[row])], expected[0][~torch.isinf(expected[0])])
    assert (~torch.isinf(got[2])).sum() < (~torch.isinf(got[3])).sum()  # top_p 0.5 keeps fewer than 1.0


def test_temperature_zero_rows_are_greedy():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    scores = warp_scores(logits, torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.95, 0.95, 0.5]))
    for row in (0, 2):
        assert (~torch.isinf(scores[row])).sum() == 1 and scores[row].argmax() == logits[row].argmax()


def _sorted_warp(logits, temperature, top_p):
    """warp_scores with top_p's cut found by sorting the whole vocabulary (TopPLogitsWarper's way)."""
    import semifinetune.decode as decode

    scores = logits.float() / torch.where(temperature <= 0, 1.0, temperature).unsqueeze(1)
    return scores.masked_fill(decode._top_p_removed_by_sorting(scores, top_p), float("-inf"))


def test_top_p_cut_among_the_candidates_equals_the_sorted_cut():
    """Peaked rows (their cut among the 1,024 candidates) and flat ones (sorted): the same tokens kept either way."""
    from semifinetune.decode import _top_p_removed

    generator = torch.Generator().manual_seed(3)
    for spread in (8.0, 0.5):  # 8: a model's peaked next-token distribution; 0.5: nearly uniform, cut by sorting
        logits = torch.randn(16, 20_000, generator=generator) * spread
        top_p = torch.tensor([0.5, 0.9, 0.95, 1.0] * 4)
        temperature = torch.tensor([0.3, 0.6, 1.0, 1.5] * 4)
        scores = logits / temperature.unsqueeze(1)
        expected = torch.isinf(_sorted_warp(logits, temperature, top_p))
        assert torch.equal(_top_p_removed(scores, top_p), expected)
        assert 0 < expected[top_p < 1].sum() and not expected[top_p >= 1].any()


def test_sampling_draws_each_kept_token_as_often_as_its_warped_probability():
    """Rows whose first draws top_p mostly cuts (top_p 0.02: drawn again, then from the cut distribution) included;
    greedy rows take the argmax; the same seed draws the same tokens."""
    from semifinetune.decode import sample_next

    logits = torch.randn(8, 40, generator=torch.Generator().manual_seed(4)) * 2
    temperature = torch.tensor([0.0, 0.3, 0.6, 1.0, 1.5, 1.0, 0.7, 1.2])
    top_p = torch.tensor([0.9, 0.95, 1.0, 0.5, 0.9, 0.02, 0.8, 0.6])
    draws = 20_000

    def sample():
        torch.manual_seed(11)
        return sample_next(logits.repeat_interleave(draws, 0), temperature.repeat_interleave(draws),
                           top_p.repeat_interleave(draws)).view(8, draws)

    drawn = sample()
    expected = _sorted_warp(logits, temperature, top_p).softmax(dim=-1)
    expected[0] = torch.nn.functional.one_hot(logits[0].argmax(), 40).float()
    frequencies = torch.nn.functional.one_hot(drawn, 40).float().mean(dim=1)
    assert not frequencies[expected == 0].any()  # no token top_p cuts
    assert ((frequencies - expected).abs() <= 4 * (expected * (1 - expected) / draws).sqrt() + 1e-3).all()
    assert torch.equal(sample(), drawn)


def _encoded(tokenizer, questions):
    from semifinetune.formats import chat_prompt

    tokenizer.padding_side = "left"
    prompts = [chat_prompt(tokenizer, q) for q in questions]
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_static_decode_matches_transformers_generate_greedy(tiny):
    """Left padding, positions and masking as generate() does them: the same greedy tokens row for row."""
    model, tokenizer = tiny
    encoded = _encoded(tokenizer, QUESTIONS)
    eos = eos_token_ids(model, tokenizer)
    with torch.inference_mode():
        expected = model.generate(**encoded, do_sample=False, max_new_tokens=10, eos_token_id=sorted(eos),
                                  pad_token_id=tokenizer.pad_token_id)[:, encoded["input_ids"].shape[1]:]
        got = static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] * 3, [1.0] * 3, 10, eos,
                            tokenizer.pad_token_id, cuda_graph=False)
    assert got.tolist() == torch.nn.functional.pad(expected, (0, 10 - expected.shape[1]), value=tokenizer.pad_token_id).tolist()


def _spy_on_prompt_runs(monkeypatch) -> list[int]:
    """The rows of each StaticDecoder._run_prompts call, appended as it runs."""
    import semifinetune.decode as decode

    ran = []
    run_prompts = decode.StaticDecoder._run_prompts
    monkeypatch.setattr(decode.StaticDecoder, "_run_prompts", lambda self, ids, *a: ran.append(len(ids)) or run_prompts(self, ids, *a))
    return ran


def test_repeated_prompts_are_run_once_where_every_row_samples(tiny, monkeypatch):
    """A sweep's batch repeats each prompt in many rows: 3 questions x 4 rows run through the model as 3 rows, and
    every row gets the logits, keys and values that running all 12 gives it."""
    from semifinetune.decode import StaticDecoder
    from semifinetune.decode_attention import decode_attention

    ran = _spy_on_prompt_runs(monkeypatch)
    model, tokenizer = tiny
    encoded = _encoded(tokenizer, QUESTIONS * 4)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    prompt_len = ids.shape[1]

    def prefill(share: bool):
        decoder = StaticDecoder(model, 12, prompt_len, 8, cuda_graph=False)
        decoder.load_prompts(mask, tokenizer.pad_token_id)
        with torch.inference_mode(), decode_attention(model) as cut:
            logits = decoder._prefill(ids, mask, cut, share)
        return logits, [(layer.keys[:, :, :prompt_len], layer.values[:, :, :prompt_len]) for layer in decoder.cache.layers]

    (shared, shared_cache), (every, every_cache) = prefill(True), prefill(False)
    assert ran == [3, 12]
    assert torch.allclose(shared, every, atol=1e-5)
    for (keys, values), (every_keys, every_values) in zip(shared_cache, every_cache):
        assert torch.allclose(keys, every_keys, atol=1e-5) and torch.allclose(values, every_values, atol=1e-5)


def test_the_step_writes_the_models_logits_into_the_tensor_it_is_given(tiny):
    """The recorded step's LM head writes straight into the graph's logits: the model's own logits, bit for bit."""
    from semifinetune.decode import StaticDecoder, _plain_head
    from semifinetune.decode_attention import decode_attention

    model, tokenizer = tiny
    encoded = _encoded(tokenizer, QUESTIONS)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    decoder = StaticDecoder(model, len(ids), ids.shape[1], 8, cuda_graph=False)
    decoder.load_prompts(mask, tokenizer.pad_token_id)
    with torch.inference_mode(), decode_attention(model) as cut:
        decoder._prefill(ids, mask, cut, False)
        decoder.cache_position.fill_(ids.shape[1])
        expected = decoder._step(decoder.total)
        out = torch.full_like(expected, float("nan"))
        got = decoder._step(decoder.total, out)
    assert _plain_head(model) is not None and got.data_ptr() == out.data_ptr() and torch.equal(out, expected)


def test_a_batch_with_greedy_rows_runs_every_prompt_and_decodes_what_generate_does(tiny, monkeypatch):
    """Another batch shape may round differently, which can turn a greedy near-tie: greedy batches run every row."""
    ran = _spy_on_prompt_runs(monkeypatch)
    model, tokenizer = tiny
    encoded = _encoded(tokenizer, QUESTIONS * 4)
    eos = eos_token_ids(model, tokenizer)
    with torch.inference_mode():
        expected = model.generate(**encoded, do_sample=False, max_new_tokens=20, min_new_tokens=20,
                                  eos_token_id=sorted(eos), pad_token_id=tokenizer.pad_token_id)
        got = static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] + [0.6] * 11, [1.0] * 12, 20,
                            [-1], tokenizer.pad_token_id, cuda_graph=False)
    assert ran == [12]
    assert got[0].tolist() == expected[0, encoded["input_ids"].shape[1]:].tolist()


def test_attention_over_the_filled_slots_changes_no_token(tiny, monkeypatch):
    """Attention lengths of 4 slots: the loop crosses a dozen of them and still decodes what generate() does."""
    import semifinetune.decode as decode
    import semifinetune.decode_attention as attention

    calls = []
    grouped = attention.grouped_attention
    monkeypatch.setattr(decode, "KV_BUCKET", 4)
    monkeypatch.setattr(attention, "grouped_attention", lambda m, q, k, *a, **kw: calls.append((q.shape[2], a[1].shape[-1])) or grouped(m, q, k, *a, **kw))
    model, tokenizer = tiny
    encoded = _encoded(tokenizer, QUESTIONS)
    eos = eos_token_ids(model, tokenizer)
    with torch.inference_mode():
        expected = model.generate(**encoded, do_sample=False, max_new_tokens=40, min_new_tokens=40, eos_token_id=sorted(eos),
                                  pad_token_id=tokenizer.pad_token_id)[:, encoded["input_ids"].shape[1]:]
        got = static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] * 3, [1.0] * 3, 40, [-1],
                            tokenizer.pad_token_id, cuda_graph=False)
    assert got.tolist() == expected.tolist()
    assert model.config._attn_implementation == "sdpa"  # restored after the loop
    lengths = [length for queries, length in calls if queries == 1]
    assert len(set(lengths)) >= 10 and all(n % 4 == 0 for n in lengths)


def test_the_recorded_steps_extra_runs_write_the_same_cache_slot(tiny, monkeypatch):
    """The CUDA-graph path on CPU: the step runs as a warm-up before it is recorded, then once per replay, each time
    at the slot it was given. transformers' static cache layers keep their own write counter, which the loop pins."""

    def record_on_cpu(step, pool=None):
        step()  # the warm-up
        output = step()  # the recording (a CUDA graph records without running; running it again must not matter)
        return (lambda: output.copy_(step())), output, "pool"

    eager, recorded = _greedy_eager_and_recorded(tiny, monkeypatch, record_on_cpu)
    assert recorded == eager


def _greedy_eager_and_recorded(tiny, monkeypatch, record):
    """Greedy ids for QUESTIONS: eagerly, then on the CUDA-graph path with `record` standing in for decode._record."""
    import semifinetune.decode as decode

    model, tokenizer = tiny
    encoded = _encoded(tokenizer, QUESTIONS)
    eos = eos_token_ids(model, tokenizer)

    def run(cuda_graph: bool):
        with torch.inference_mode():
            return static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] * 3, [1.0] * 3, 10, eos,
                                 tokenizer.pad_token_id, cuda_graph=cuda_graph).tolist()

    eager = run(False)
    monkeypatch.setattr(decode, "_graphs_supported", lambda device: True)
    monkeypatch.setattr(decode, "_record", record)
    return eager, run(True)


def test_a_failed_recording_decodes_on_without_graphs(tiny, monkeypatch, capsys):
    def failing_record(step, pool=None):
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture\nmore")

    eager, recorded = _greedy_eager_and_recorded(tiny, monkeypatch, failing_record)
    assert recorded == eager
    assert "previous error during capture); the rest of this call decodes without graphs" in capsys.readouterr().out


def test_one_decoder_decodes_later_smaller_batches_as_a_decoder_of_their_own(tiny):
    """A generate() call's batches share one StaticDecoder: a later batch of fewer rows and a shorter prompt (filled
    up with finished rows, its prompt length in the step's tensors) gives what a decoder sized to it gives, and a
    sampled batch decoded again from the same seed draws the same."""
    from semifinetune.decode import StaticDecoder

    model, tokenizer = tiny
    eos = eos_token_ids(model, tokenizer)
    batches = [_encoded(tokenizer, QUESTIONS), _encoded(tokenizer, QUESTIONS[::2]), _encoded(tokenizer, QUESTIONS[2:])]
    assert batches[0]["input_ids"].shape[1] > batches[2]["input_ids"].shape[1]
    settings = ([0.0, 1.2, 0.7], [1.0, 0.9, 0.95])

    def decode(decoder, encoded):
        rows = encoded["input_ids"].shape[0]
        torch.manual_seed(3)
        return decoder.decode(encoded["input_ids"], encoded["attention_mask"], settings[0][:rows], settings[1][:rows],
                              eos, tokenizer.pad_token_id).tolist()

    with torch.inference_mode():
        shared = StaticDecoder(model, 3, batches[0]["input_ids"].shape[1], 12, cuda_graph=False)
        got = [decode(shared, encoded) for encoded in batches + batches[:1]]
        alone = [decode(StaticDecoder(model, *encoded["input_ids"].shape, 12, cuda_graph=False), encoded) for encoded in batches]
    assert got[:3] == alone
    assert got[3] == got[0]
    assert got[0][0] != got[0][1]  # the rows really sampled
    with pytest.raises(ValueError, match="does not fit this decoder"):
        shared.decode(*_encoded(tokenizer, QUESTIONS * 2).values(), [0.0] * 6, [1.0] * 6, eos, tokenizer.pad_token_id)


def test_a_mixed_grid_batch_keeps_each_rows_settings(tiny):
    """Greedy rows give their greedy text inside a batch that also samples hot rows."""
    model, tokenizer = tiny
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=8)
    hot = SamplingSettings(temperature=1.5, top_p=1.0, max_new_tokens=8)
    alone = [g.text for g in generate(model, tokenizer, QUESTIONS, greedy, progress=False)]
    mixed = generate(model, tokenizer, QUESTIONS * 2, [greedy] * 3 + [hot] * 3, batch_size=6, progress=False)
    assert [g.text for g in mixed[:3]] == alone


def test_rows_of_other_lengths_never_share_a_batch(tiny, monkeypatch):
    import semifinetune.generate as gen

    model, tokenizer = tiny
    batches = []
    real = gen._generate_batch
    monkeypatch.setattr(gen, "_generate_batch", lambda m, t, prompts, settings, *a: batches.append(settings) or real(m, t, prompts, settings, *a))
    short, long_ = SamplingSettings(0.6, 0.95, 4), SamplingSettings(0.3, 0.95, 6)
    out = generate(model, tokenizer, QUESTIONS * 2, [short, long_] * 3, batch_size=16, progress=False)
    assert len(batches) == 2 and all(len({s.max_new_tokens for s in b}) == 1 for b in batches)
    assert [g.new_tokens <= s.max_new_tokens for g, s in zip(out, [short, long_] * 3)] == [True] * 6


def test_settings_list_must_match_questions(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="2 settings for 3 questions"):
        generate(model, tokenizer, QUESTIONS, [SamplingSettings()] * 2, progress=False)


def _lora_4bit_layer(portable: bool = True):
    bnb = pytest.importorskip("bitsandbytes")
    from peft import LoraConfig
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    torch.manual_seed(0)
    base_layer = bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    if portable:
        # bitsandbytes' own switch, set from the CPU's flags: on a CPU with AVX512-BF16 the layer's first forward in
        # eval mode moves the weight into its bf16 kernel's layout and computes in bf16, whatever compute_dtype says.
        # Off, every CPU computes in float32, so the references below hold to 1e-4 on any CPU; the bf16 kernel's
        # layout and outputs have tests of their own.
        base_layer.support_avx512bf16_for_cpu = False
    lora = LoraLinear4bit(base_layer, "default", config=LoraConfig(r=4), r=4, lora_alpha=8)
    torch.nn.init.normal_(lora.lora_B["default"].weight)  # a trained adapter: B no longer zero
    return torch.nn.Sequential(lora).eval(), lora, base_layer


def test_dequantized_weights_fold_the_adapter_in_and_give_the_same_outputs():
    """A 4-bit layer inside peft's LoRA wrapper (whose class is also named Linear4bit): the copy holds W + the adapter
    and shadows the wrapper; with the adapter switched off, the copy is W alone."""
    from semifinetune.dense_weights import dequantized_weights
    from semifinetune.models import four_bit_layers

    model, lora, base_layer = _lora_4bit_layer()
    assert four_bit_layers(model) == [base_layer]
    x = torch.randn(5, 64)
    with torch.no_grad():
        tuned, base = model(x), base_layer(x)
        with dequantized_weights(model) as copies:
            tuned_dense = model(x)
        with _adapter_off(lora), dequantized_weights(model) as base_copies:
            base_dense = model(x)
        after = model(x)
    assert [c[0] for c in copies] == [lora] and [c[0] for c in base_copies] == [base_layer]
    assert torch.allclose(tuned_dense, tuned, atol=1e-4) and torch.allclose(base_dense, base, atol=1e-4)
    assert not torch.allclose(tuned, base, atol=1e-2)  # the adapter matters, so it was folded in, not dropped
    assert torch.equal(after, tuned)  # the 4-bit forward and the adapter are back after the block


def test_the_copy_reads_the_layout_of_bitsandbytes_bf16_cpu_kernel():
    """On a CPU with AVX512-BF16, bitsandbytes moves a 4-bit weight into another layout (codes interleaved by 32 rows,
    absmax transposed, as bf16) at the layer's first forward in eval mode. The copy is the same weight from either
    layout, up to absmax's rounding to bf16. The move is bitsandbytes' own function, so this runs on every CPU."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu, dequantize_4bit

    from semifinetune.dense_weights import dequantized_weights

    model, lora, base_layer = _lora_4bit_layer()
    with torch.no_grad():
        with dequantized_weights(model) as copies:
            plain = copies[0][2].clone()
        weight = base_layer.weight
        weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, weight.quant_state)
        # the packed bytes read as the plain layout, the adapter added: off by whole units where the weight is
        misread = dequantize_4bit(weight.data, weight.quant_state).float() + _delta(lora)
        with dequantized_weights(model) as copies:
            packed = copies[0][2]
    assert weight.quant_state.packing_format_for_cpu and packed.dtype == plain.dtype == torch.float32
    base_weight = plain - _delta(lora)
    assert ((packed - plain).abs() <= 2**-8 * base_weight.abs() + 1e-6).all()  # absmax as bf16: 8 significant bits
    assert (misread - plain).abs().max() > 100 * (packed - plain).abs().max()


def _delta(lora):
    """The adapter's part of the copy: scaling x B @ A."""
    return lora.scaling["default"] * (lora.lora_B["default"].weight @ lora.lora_A["default"].weight)


def _has_avx512_bf16() -> bool:
    bnb = pytest.importorskip("bitsandbytes")
    return bool(bnb.functional.has_avx512bf16())


@pytest.mark.skipif("not _has_avx512_bf16()", reason="CPU-dependent: bitsandbytes uses its bf16 CPU kernel only where the "
                    "CPU has AVX512-BF16, which this one lacks (its layout is tested on every CPU above)")
def test_on_a_cpu_with_avx512_bf16_the_copy_agrees_with_the_bf16_kernel():
    """The layer's own forward moves the weight and computes in bf16; the copy (float32) agrees to bf16 rounding."""
    from semifinetune.dense_weights import dequantized_weights

    model, lora, base_layer = _lora_4bit_layer(portable=False)
    x = torch.randn(5, 64)
    with torch.no_grad():
        tuned = model(x)
        assert base_layer.weight.quant_state.packing_format_for_cpu  # the forward moved the weight
        with dequantized_weights(model):
            tuned_dense = model(x)
        after = model(x)
    assert torch.allclose(tuned_dense, tuned, rtol=2**-7, atol=1e-2)  # bf16 inputs and weights: 8 significant bits
    assert torch.equal(after, tuned)


@contextmanager
def _adapter_off(lora):
    lora.enable_adapters(False)
    try:
        yield
    finally:
        lora.enable_adapters(True)
