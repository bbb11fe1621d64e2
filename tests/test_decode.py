"""Per-row sampling (transformers' warpers, row by row) and the static-cache decoding loop, run eagerly on CPU."""

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


def test_the_recorded_steps_extra_runs_write_the_same_cache_slot(tiny, monkeypatch):
    """The CUDA-graph path on CPU: the step runs as a warm-up before it is recorded, then once per replay, each time
    at the slot it was given. transformers' static cache layers keep their own write counter, which the loop pins."""
    import semifinetune.decode as decode

    def record_on_cpu(step):
        step()  # the warm-up
        output = step()  # the recording (a CUDA graph records without running; running it again must not matter)
        return (lambda: output.copy_(step())), output

    monkeypatch.setattr(decode, "_graphs_supported", lambda device: True)
    monkeypatch.setattr(decode, "_record", record_on_cpu)
    model, tokenizer = tiny
    encoded = _encoded(tokenizer, QUESTIONS)
    eos = eos_token_ids(model, tokenizer)
    with torch.inference_mode():
        expected = static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] * 3, [1.0] * 3, 10, eos,
                                 tokenizer.pad_token_id, cuda_graph=False)
        got = static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] * 3, [1.0] * 3, 10, eos,
                            tokenizer.pad_token_id, cuda_graph=True)
    assert got.tolist() == expected.tolist()


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


def test_dequantized_weights_give_the_same_outputs_and_keep_lora():
    """A 4-bit layer inside peft's LoRA wrapper (whose class is also named Linear4bit) computes from the copy; the
    wrapper keeps its forward, so the adapter still applies."""
    bnb = pytest.importorskip("bitsandbytes")
    from peft import LoraConfig
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    from semifinetune.decode import dequantized_weights
    from semifinetune.models import four_bit_layers

    torch.manual_seed(0)
    base_layer = bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    lora = LoraLinear4bit(base_layer, "default", config=LoraConfig(r=4), r=4, lora_alpha=8)
    torch.nn.init.normal_(lora.lora_B["default"].weight)  # a trained adapter: B no longer zero
    model = torch.nn.Sequential(lora)
    assert four_bit_layers(model) == [base_layer]
    x = torch.randn(5, 64)
    with torch.no_grad():
        tuned, base = model(x), base_layer(x)
        with dequantized_weights(model) as applied:
            tuned_dense, base_dense = model(x), base_layer(x)
        after = model(x)
    assert applied
    assert torch.allclose(tuned_dense, tuned, atol=1e-4) and torch.allclose(base_dense, base, atol=1e-4)
    assert not torch.allclose(tuned, base, atol=1e-2)  # the adapter matters, so it was not bypassed
    assert torch.equal(after, tuned)  # the 4-bit forward is back after the block
