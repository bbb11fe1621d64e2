"""Exports on the tiny profile: adapter + model card, merged16 == base + adapter, Modelfiles, disk and hub guards."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from semifinetune import cli
from semifinetune.export import ExportError, export_path, export_run, ollama_modelfile, recommended_sampling

QUESTION = "What does a lithography scanner do?"


@pytest.fixture
def run_dir(tiny_run, tmp_path):
    """A private copy of the tiny run (adapter with perturbed B weights, 6 held-out questions): exports write into it.

    Results other tests may have written into the shared run (evaluation, sweep) stay behind: each test here adds
    the ones it needs."""
    target = tmp_path / "run"
    shutil.copytree(tiny_run, target, ignore=shutil.ignore_patterns("evaluation.csv", "sweep*", "recommended_settings.json"))
    return target


def card(run_dir: Path) -> str:
    return (export_path(run_dir, "adapter") / "README.md").read_text(encoding="utf-8")


def test_adapter_export_writes_adapter_and_card_from_run_files(run_dir):
    from semifinetune.config import load_config
    from semifinetune.data import read_examples
    from semifinetune.runs import resolve_data_path

    result = export_run(run_dir, "adapter")
    folder = Path(result["folder"])
    assert folder == run_dir / "export" / "adapter"
    assert (folder / "adapter_model.safetensors").read_bytes() == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert {"adapter_config.json", "tokenizer.json", "README.md"} <= set(result["files"])
    cfg = load_config(run_dir)
    train_count = len(read_examples(resolve_data_path(cfg.train_file), "train"))
    text = card(run_dir)
    assert f"| `semiconductor_train.jsonl` | training | {train_count} |" in text
    assert "| `eval6.jsonl` | held out, never trained on | 6 |" in text
    assert "| lora_r | 16 |" in text and "| target_modules | q_proj, k_proj, v_proj, o_proj |" in text
    assert "No evaluation.csv in this run" in text  # nothing measured, nothing claimed
    assert "no sweep in this run" in result["notes"][0] and "temperature 0.6" in result["notes"][0]
    assert not (run_dir / "export" / "adapter.partial").exists()


def test_the_card_parses_back_with_its_hub_metadata(run_dir):
    """ModelCard.load reads the header the hub reads: base model, library, tags, license; the body stays."""
    from huggingface_hub import ModelCard

    from semifinetune.config import load_config, make_config
    from semifinetune.export import model_card

    export_run(run_dir, "adapter")
    tiny = ModelCard.load(export_path(run_dir, "adapter") / "README.md")
    assert tiny.data.to_dict() == {"library_name": "peft", "pipeline_tag": "text-generation",
                                   "tags": ["lora", "semiconductor", "semifinetune"], "license": "mit"}  # no hub base
    assert tiny.text.startswith("\n# run: tiny:random-qwen2 fine-tuned on semiconductor Q&A") and "## Held-out results" in tiny.text
    sampling = recommended_sampling(run_dir, load_config(run_dir))
    cases = [("cpu", "adapter", "HuggingFaceTB/SmolLM2-135M-Instruct", "peft", "apache-2.0"),
             ("t4", "adapter", "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit", "peft", "mit"),
             ("t4", "merged16", "unsloth/DeepSeek-R1-Distill-Qwen-1.5B", "transformers", "mit")]  # merged on the 16-bit base
    for profile, kind, base, library, license in cases:
        path = run_dir / f"{profile}-{kind}.md"
        model_card(make_config(profile), run_dir, sampling, kind, "fp16").save(path)
        data = ModelCard.load(path).data
        assert (data.base_model, data.library_name, data.license) == (base, library, license), (profile, kind)
    other = model_card(make_config("tiny", {"model_name": "someone/their-model"}), run_dir, sampling, "adapter")
    assert other.data.base_model == "someone/their-model" and other.data.license is None  # not known: not guessed


def test_export_refuses_to_overwrite_unless_asked(run_dir):
    export_run(run_dir, "adapter")
    marker = export_path(run_dir, "adapter") / "README.md"
    marker.write_text("edited by hand", encoding="utf-8")
    with pytest.raises(ExportError, match="already exists. Pass --overwrite"):
        export_run(run_dir, "adapter")
    assert marker.read_text(encoding="utf-8") == "edited by hand"
    export_run(run_dir, "adapter", overwrite=True)
    assert marker.read_text(encoding="utf-8").startswith("---")


def test_card_reports_held_out_results_and_the_sweep_recommendation(run_dir):
    from semifinetune.atomic import write_json_atomic
    from semifinetune.evaluate import compare_base_tuned

    result = compare_base_tuned(run_dir, progress=False)
    recommended = {"rule": "highest recall", "model": "tuned", "temperature": 0.3, "top_p": 0.9,
                   "repetition_penalty": 1.0, "max_new_tokens": 16, "recall": 0.25, "answers": 12}
    write_json_atomic(run_dir / "recommended_settings.json", recommended)
    notes = export_run(run_dir, "adapter")["notes"]
    text = card(run_dir)
    assert f"| base | {result['base_correct']} of 6 |" in text
    assert f"| tuned | {result['tuned_correct']} of 6 |" in text
    assert "| temperature | 0.3 |" in text and "| top_p | 0.9 |" in text
    assert "From the sampling sweep (recommended_settings.json). Rule: highest recall." in text
    assert "temperature 0.3, top_p 0.9" in notes[0]


def test_merged16_gives_the_logits_of_base_plus_adapter(run_dir, tiny_cfg):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semifinetune.models import load_model

    folder = Path(export_run(run_dir, "merged16", dtype="fp32")["folder"])
    base, _ = load_model(tiny_cfg)
    tuned = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        expected = tuned(ids).logits
        with tuned.disable_adapter():
            plain = tuned(ids).logits
        got = merged(ids).logits
    assert (expected - plain).abs().max() > 0.05  # the adapter changes the output, so equality below means something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (folder / "Modelfile").read_text(encoding="utf-8").splitlines()[2] == "FROM ."
    generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    assert (generation["temperature"], generation["top_p"], generation["max_new_tokens"]) == (0.6, 0.95, 16)

    folder16 = Path(export_run(run_dir, "merged16", overwrite=True)["folder"])  # the default: 16-bit on this CPU
    with safe_open(folder16 / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    with torch.no_grad():
        got16 = AutoModelForCausalLM.from_pretrained(folder16, dtype=torch.float32)(ids).logits
    assert (got16 - expected).abs().max() < 0.1 * (expected - plain).abs().max()  # bf16 rounding, far below the adapter's effect


def ollama_render(modelfile: str, system: str, prompt: str) -> str:
    """What Ollama sends the model for one question: the TEMPLATE up to {{ .Response }}, .System and .Prompt filled."""
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1).split("{{ .Response }}")[0]
    values = {"System": system, "Prompt": prompt}
    template = re.sub(r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}", lambda m: m.group(2) if values[m.group(1)] else "", template, flags=re.S)
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], template)


def hf_render(tokenizer, system: str | None, prompt: str) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if "bos_token" in tokenizer.chat_template:  # R1's template writes BOS; llama.cpp adds it from the GGUF instead
        text = text.removeprefix(tokenizer.bos_token)
    return text


def test_modelfile_carries_r1_template_stops_and_sweep_settings(run_dir, tiny_tokenizer):
    from semifinetune.atomic import write_json_atomic
    from semifinetune.config import load_config

    write_json_atomic(run_dir / "recommended_settings.json", {"temperature": 0.3, "top_p": 0.9, "repetition_penalty": 1.0, "max_new_tokens": 256})
    text = ollama_modelfile(tiny_tokenizer, recommended_sampling(run_dir, load_config(run_dir)), "./model.Q8_0.gguf")
    assert "FROM ./model.Q8_0.gguf" in text.splitlines()
    assert ollama_render(text, "", QUESTION) == hf_render(tiny_tokenizer, None, QUESTION)
    assert ollama_render(text, "", QUESTION).endswith("<｜Assistant｜><think>\n")
    assert ollama_render(text, "Be brief.", QUESTION) == hf_render(tiny_tokenizer, "Be brief.", QUESTION)
    params = [line for line in text.splitlines() if line.startswith("PARAMETER")]
    assert params == [
        "PARAMETER temperature 0.3", "PARAMETER top_p 0.9", "PARAMETER repeat_penalty 1.0", "PARAMETER num_predict 256",
        'PARAMETER stop "<｜end▁of▁sentence｜>"', 'PARAMETER stop "<｜User｜>"',
    ]
    assert "SYSTEM" not in text  # DeepSeek: no system prompt for R1


def test_modelfile_for_smollm2_uses_chatml_and_its_default_system(smol_tokenizer, cpu_cfg, tmp_path):
    text = ollama_modelfile(smol_tokenizer, recommended_sampling(tmp_path, cpu_cfg), ".")
    system = re.search(r'^SYSTEM """(.*)"""$', text, re.M).group(1)
    assert "SmolLM" in system
    assert ollama_render(text, system, QUESTION) == hf_render(smol_tokenizer, None, QUESTION)
    assert ollama_render(text, "Be brief.", QUESTION) == hf_render(smol_tokenizer, "Be brief.", QUESTION)
    assert 'PARAMETER stop "<|im_end|>"' in text and f"PARAMETER temperature {cpu_cfg.temperature}" in text


# --- GGUF: llama.cpp's converter on the tiny model, read back with transformers ---

GGUF_TYPES = {"F16": "float16", "BF16": "bfloat16"}


@pytest.fixture(scope="module")
def gguf_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run exported once as GGUF f16, bf16 and q8_0 (one converter process, ~10 s)."""
    target = tmp_path_factory.mktemp("gguf") / "run"
    shutil.copytree(tiny_run, target, ignore=shutil.ignore_patterns("evaluation.csv", "sweep*", "recommended_settings.json", "export"))
    result = export_run(target, "gguf", quantization="f16,bf16,q8_0")
    return target, result


@pytest.fixture(scope="module")
def merged_reference(gguf_run, tiny_cfg):
    """(merged fp32 model, base model, tokenizer, prompts, greedy answers) for the 6 held-out questions."""
    from semifinetune.export import merge_adapter
    from semifinetune.gguf_check import greedy_answers, prompt_ids
    from semifinetune.models import load_model

    run_dir, _ = gguf_run
    merged, tokenizer = merge_adapter(tiny_cfg, run_dir / "adapter")
    base, _ = load_model(tiny_cfg)
    questions = [json.loads(line)["input"] for line in (run_dir / "eval6.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = prompt_ids(tokenizer, questions)
    answers = greedy_answers(merged, prompts, tiny_cfg.max_new_tokens, tokenizer.eos_token_id)
    return merged, base, tokenizer, prompts, answers


def test_gguf_export_writes_one_file_per_type_a_modelfile_and_a_card(gguf_run):
    run_dir, result = gguf_run
    folder = Path(result["folder"])
    assert set(result["files"]) == {"model-F16.gguf", "model-BF16.gguf", "model-Q8_0.gguf", "Modelfile", "README.md"}
    assert not (folder / ".merged").exists() and not (run_dir / "export" / "gguf.partial").exists()
    assert result["files"]["model-Q8_0.gguf"] < 0.6 * result["files"]["model-F16.gguf"]  # 8.5 bits per weight, not 16
    assert "FROM ./model-Q8_0.gguf" in (folder / "Modelfile").read_text(encoding="utf-8").splitlines()
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    assert card.data.tags == ["lora", "semiconductor", "semifinetune", "gguf"] and card.data.library_name == "transformers"
    use = card.text.split("## Use", 1)[1]
    assert "| `model-F16.gguf` | F16 |" in use and "| `model-Q8_0.gguf` | Q8_0 |" in use
    assert "ollama create NAME -f Modelfile" in use
    assert "llama-cli -m model-Q8_0.gguf --jinja --temp 0.6 --top-p 0.95 --repeat-penalty 1.0 -n 16" in use
    assert any("converted by llama.cpp's converter" in note for note in result["notes"])


def test_gguf_f16_and_bf16_hold_the_merged_weights_and_answer_as_it_does(gguf_run, merged_reference):
    import torch

    from semifinetune.gguf_check import cast_mismatches, compare_answers, greedy_answers, load_gguf_model

    run_dir, _ = gguf_run
    merged, base, tokenizer, prompts, answers = merged_reference
    # the adapter changes the answers, so answers equal to the merged model's mean the adapter is in the file
    assert greedy_answers(base, prompts, 16, tokenizer.eos_token_id) != answers
    for name, dtype in GGUF_TYPES.items():
        model = load_gguf_model(run_dir / "export" / "gguf" / f"model-{name}.gguf")
        assert cast_mismatches(model, merged, getattr(torch, dtype)) == []  # each weight: the merged one, rounded once
        # the merged model as a 16-bit export holds it: its weights rounded to this type (the norms stay f32)
        rounded = _rounded_copy(merged, getattr(torch, dtype))
        expected = greedy_answers(rounded, prompts, 16, tokenizer.eos_token_id)
        found = compare_answers(model, prompts, expected, 16, tokenizer.eos_token_id)
        assert (found["answers_identical"], found["token_agreement"]) == (6, 1.0), name


def _rounded_copy(model, dtype):
    """A copy of `model` whose matrices are rounded to `dtype` and back to float32, as a 16-bit file stores them."""
    import copy

    import torch

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for param in rounded.parameters():
            if param.ndim > 1:
                param.copy_(param.to(dtype).float())
    return rounded


def test_gguf_q8_0_rounds_each_block_within_its_step_and_mostly_agrees(gguf_run, merged_reference):
    from semifinetune.gguf_check import compare_answers, load_gguf_model, q8_0_step_ratio

    run_dir, _ = gguf_run
    merged, _, tokenizer, prompts, answers = merged_reference
    model = load_gguf_model(run_dir / "export" / "gguf" / "model-Q8_0.gguf")
    # |error| <= half a step (block max / 254) + 127 x the f16 rounding of the scale (2^-11): ratio <= 1 + 254/2048
    assert 0.5 < q8_0_step_ratio(model, merged) <= 1 + 254 / 2048  # measured 1.09: it rounds, and no further
    found = compare_answers(model, prompts, answers, 16, tokenizer.eos_token_id)
    # measured on this random model: 92 of 96 answer tokens (95.8%), 3 of 6 answers identical to the last token
    assert found["tokens_teacher_forced"] == 96 and found["token_agreement"] >= 0.9


def test_gguf_carries_the_tokenizer_chat_template_and_end_of_turn_token(gguf_run, merged_reference):
    from semifinetune.gguf_convert import gguf_fields

    run_dir, _ = gguf_run
    merged, _, tokenizer, _, _ = merged_reference
    folder = run_dir / "export" / "gguf"
    vocab_size = merged.config.vocab_size
    merges = json.loads((run_dir / "adapter" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    modelfile = (folder / "Modelfile").read_text(encoding="utf-8")
    for name in ("F16", "BF16", "Q8_0"):
        fields = gguf_fields(folder / f"model-{name}.gguf")
        assert fields["tokens"] == tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        assert fields["merges"] == [" ".join(pair) if isinstance(pair, list) else pair for pair in merges]
        assert (fields["tokenizer_model"], fields["pre_tokenizer"]) == ("gpt2", "gpt2")  # GPT-2's byte-level split
        assert fields["chat_template"] == tokenizer.chat_template
        assert fields["tokens"][fields["eos_token_id"]] == tokenizer.eos_token == "<｜end▁of▁sentence｜>"
        assert fields["tokens"][fields["bos_token_id"]] == tokenizer.bos_token and fields["add_bos_token"] is True
        # the Modelfile: its TEMPLATE renders what the GGUF's own template renders (BOS left to add_bos_token),
        # and Ollama stops at the GGUF's eos
        for system in (None, "Be brief."):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": QUESTION}]
            own = tokenizer.apply_chat_template(messages, chat_template=fields["chat_template"], add_generation_prompt=True, tokenize=False)
            assert ollama_render(modelfile, system or "", QUESTION) == own.removeprefix(tokenizer.bos_token)
        assert f'PARAMETER stop "{fields["tokens"][fields["eos_token_id"]]}"' in modelfile


def test_the_converters_tokenizer_copy_encodes_as_the_tokenizer_does(smol_tokenizer, tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from semifinetune.gguf_convert import prepare_tokenizer_files

    texts = [QUESTION, "  Wafers: 300 mm, 3.3 V; EUV 13.5 nm! 🚀 ünïcode\n\tend", "<|im_start|>user\nhi<|im_end|>"]
    expected = {"smol": ["byte-level BPE written without byte_fallback"],
                "tiny": ["left out of the GGUF (no embedding row among 2048): <|endoftext|>", "add_bos_token set"]}
    for name, tokenizer, vocab_size in (("smol", smol_tokenizer, 49152), ("tiny", tiny_tokenizer, 2048)):
        tokenizer.save_pretrained(tmp_path / name)
        notes = prepare_tokenizer_files(tmp_path / name, vocab_size)
        assert [note[:len(want)] for note, want in zip(notes, expected[name])] == expected[name]
        copy = AutoTokenizer.from_pretrained(tmp_path / name)
        assert len(copy) == vocab_size and copy.chat_template == tokenizer.chat_template
        for text in texts:
            assert copy(text).input_ids == tokenizer(text).input_ids, (name, text)
            assert copy.decode(copy(text).input_ids) == tokenizer.decode(tokenizer(text).input_ids)


def fake_llama_quantize(folder: Path) -> Path:
    """A llama-quantize on PATH that records its arguments and copies its input: the plumbing, not the quantizer."""
    import sys

    script = folder / "llama-quantize"
    script.write_text(f"#!{sys.executable}\nimport json, shutil, sys\n"
                      f"open({str(folder / 'calls.jsonl')!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                      "shutil.copy(sys.argv[1], sys.argv[2])\n", encoding="utf-8")
    script.chmod(0o755)
    return folder / "calls.jsonl"


def test_llama_quantize_types_are_quantized_from_a_converted_f16_file(run_dir, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = fake_llama_quantize(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    result = export_run(run_dir, "gguf", quantization="q4_k_m")
    assert set(result["files"]) == {"model-Q4_K_M.gguf", "Modelfile", "README.md"}  # the f16 input is not kept
    [call] = [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()]
    assert [Path(call[0]).name, Path(call[1]).name, call[2]] == ["model-F16.gguf", "model-Q4_K_M.gguf", "Q4_K_M"]
    assert "FROM ./model-Q4_K_M.gguf" in (Path(result["folder"]) / "Modelfile").read_text(encoding="utf-8")


def test_llama_quantize_types_without_a_quantizer_are_one_clear_line(run_dir, monkeypatch, capsys):
    import semifinetune.export as export
    import semifinetune.gguf_convert as gguf_convert

    monkeypatch.setattr(gguf_convert, "find_llama_quantize", lambda: None)
    monkeypatch.setattr(export, "gguf_missing", lambda: ["Unsloth (pip install unsloth)", "a CUDA GPU"])
    assert cli.main(["export", "--run-dir", str(run_dir), "--format", "gguf", "--quantization", "q8_0,q4_k_m"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "q4_k_m needs llama.cpp's compiled llama-quantize" in err
    assert "--quantization q8_0" in err
    assert not (run_dir / "export").exists()  # refused before the merge


def test_gguf_types_are_read_from_a_list_or_commas_and_unknown_ones_refused(run_dir):
    from semifinetune.export import gguf_routes, gguf_types

    assert gguf_types("F16, q8_0,fast_quantized") == ["f16", "q8_0"]  # Unsloth's fast_quantized is q8_0
    assert gguf_routes(gguf_types(["bf16", "q8_0"]), run_dir) == {"bf16": "converter", "q8_0": "converter"}
    with pytest.raises(ExportError, match="Unknown GGUF type.*q9_9.*converter writes f16, bf16, q8_0"):
        gguf_routes(gguf_types("q9_9"), run_dir)


def test_export_fails_before_writing_when_the_disk_is_full(run_dir, monkeypatch):
    import semifinetune.export as export

    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    from semifinetune.safety import DiskSpaceError

    with pytest.raises(DiskSpaceError, match="Not enough disk space for the adapter"):
        export_run(run_dir, "adapter")
    assert list((run_dir / "export").iterdir()) == []  # neither the export nor a .partial folder


def test_push_without_token_fails_before_exporting(run_dir, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert cli.main(["export", "--run-dir", str(run_dir), "--format", "adapter", "--push-to-hub", "me/semi"]) == 2
    assert "No Hugging Face token: set HF_TOKEN" in capsys.readouterr().err
    assert not (run_dir / "export").exists()


class FakeHfApi:
    calls: list = []
    fail_with: str | None = None

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        self.calls.append(("upload_folder", kwargs))


def test_push_uploads_the_export_and_never_shows_the_token(run_dir, monkeypatch, capsys):
    import huggingface_hub

    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    assert cli.main(["export", "--run-dir", str(run_dir), "--format", "adapter", "--push-to-hub", "me/semi"]) == 0
    out = capsys.readouterr()
    assert "pushed to https://huggingface.co/me/semi" in out.out
    assert ("init", secret) in FakeHfApi.calls
    upload = next(c[1] for c in FakeHfApi.calls if c[0] == "upload_folder")
    assert upload["repo_id"] == "me/semi" and Path(upload["folder_path"]) == export_path(run_dir, "adapter")
    # a failing upload whose error quotes the token: the message is scrubbed
    FakeHfApi.fail_with = f"401 Unauthorized for token {secret}"
    try:
        assert cli.main(["export", "--run-dir", str(run_dir), "--format", "adapter", "--overwrite", "--push-to-hub", "me/semi"]) == 2
    finally:
        FakeHfApi.fail_with = None
    failed = capsys.readouterr()
    assert "Upload of" in failed.err and "token ***" in failed.err
    assert secret not in out.out + out.err + failed.out + failed.err
    assert not any(secret.encode() in p.read_bytes() for p in run_dir.rglob("*") if p.is_file())


def test_merging_uses_the_unquantized_base_under_its_hub_name():
    from semifinetune.config import make_config
    from semifinetune.export import hub_base_model, merge_config

    t4 = merge_config(make_config("t4"))
    assert (t4.model_name, t4.load_in_4bit, t4.backend) == ("unsloth/DeepSeek-R1-Distill-Qwen-1.5B", False, "transformers")
    assert hub_base_model(make_config("cpu")) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # not the local cache path
    assert hub_base_model(make_config("tiny")) is None
