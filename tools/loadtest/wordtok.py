"""A tokenizer that needs no download: one token per word or punctuation run of AIPerf's own
prompt corpus. Run inside `.venv-loadtest`: `python -m tools.loadtest.wordtok DIR`.

AIPerf cuts its synthetic prompts to a length in tokens with a Hugging Face tokenizer, which it
would otherwise fetch from the Hub by model name. A real model's tokenizer splits English
prose into a few more tokens than words, so the prompt a server sees is somewhat longer than
asked; the report gives the server's own count of prompt tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path


def build(dest: Path) -> None:
    import aiperf
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    corpus = (Path(aiperf.__file__).parent / "dataset" / "generator" / "assets" / "shakespeare.txt").read_text()
    split = pre_tokenizers.Whitespace()
    vocab = {"[UNK]": 0, "</s>": 1}
    for word in sorted({w for w, _ in split.pre_tokenize_str(corpus)}):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = split
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="</s>").save_pretrained(dest)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
