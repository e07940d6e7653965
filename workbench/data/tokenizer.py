"""Tokenizers for the synthetic tasks, wrapped as ``PreTrainedTokenizerFast``.

Two kinds, both built with HF ``tokenizers`` so they save/load with ``save_pretrained``:

* ``char``: one token per printable ASCII character (arithmetic, multiplication). The
  vocabulary is fixed, so every char tokenizer is identical whatever data it saw.
* ``word``: a word-level vocabulary built from a corpus; whitespace splits words, every
  punctuation character and every digit is its own token (ProsQA-style text, word problems).

Every workbench tokenizer carries the special tokens the sequence layout needs
(:data:`SPECIAL_TOKENS`). Any HF tokenizer can be used instead: :func:`ensure_special_tokens`
adds the missing ones (then resize the model's embeddings).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, EOS, BOT, EOT, LATENT, UNK = "<pad>", "<eos>", "<bot>", "<eot>", "<latent>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, BOT, EOT, LATENT, UNK)
"""Order fixes their ids 0..5 in the workbench's own tokenizers."""

TOKENIZER_KINDS = ("char", "word")


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the layout's special tokens for one tokenizer."""

    pad: int
    eos: int
    bot: int
    eot: int
    latent: int


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[BOT, EOT, LATENT],
        padding_side="left",
    )


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII plus the special tokens."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for c in map(chr, range(32, 127)):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return _wrap(tok)


def _word_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def build_word_tokenizer(texts: Iterable[str], min_count: int = 1) -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary is every word of ``texts`` (sorted, deterministic)."""
    pre = _word_pre_tokenizer()
    counts: dict[str, int] = {}
    for text in texts:
        for piece, _ in pre.pre_tokenize_str(text):
            counts[piece] = counts.get(piece, 0) + 1
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in sorted(w for w, c in counts.items() if c >= min_count and w not in vocab):
        vocab[w] = len(vocab)
    for d in "0123456789":  # numbers unseen in training still tokenize
        vocab.setdefault(d, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(
        prefix="##", cleanup=True
    )  # joins words with spaces, tidies punctuation
    return _wrap(tok)


def example_texts(examples: Iterable[dict]) -> Iterable[str]:
    """Every text field of schema examples (for building a word vocabulary)."""
    for ex in examples:
        yield ex["question"]
        yield from ex["steps"]
        yield ex["answer"]


def build_tokenizer(kind: str, examples: Iterable[dict] | None = None) -> PreTrainedTokenizerFast:
    """A ``char`` tokenizer, or a ``word`` tokenizer over the texts of ``examples``."""
    if kind == "char":
        return build_char_tokenizer()
    if kind == "word":
        if examples is None:
            raise ValueError("kind='word' needs examples to build its vocabulary (examples=...)")
        return build_word_tokenizer(example_texts(examples))
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {TOKENIZER_KINDS}")


def ensure_special_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the layout's special tokens that ``tokenizer`` lacks; returns how many were added.

    Call ``model.resize_token_embeddings(len(tokenizer))`` afterwards when this is > 0.
    """
    added = 0
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD})
    if tokenizer.eos_token is None:
        added += tokenizer.add_special_tokens({"eos_token": EOS})
    missing = [t for t in (BOT, EOT, LATENT) if t not in tokenizer.get_vocab()]
    if missing:
        added += tokenizer.add_tokens(missing, special_tokens=True)
    return added


def special_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialIds:
    """The ids of pad/eos/bot/eot/latent; a clear error when the tokenizer lacks one."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (BOT, EOT, LATENT) if t not in vocab]
    if missing or tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer lacks special tokens {missing or ['pad/eos']}; "
            "call workbench.data.tokenizer.ensure_special_tokens(tokenizer) and resize the model"
        )
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            "pad and eos share an id; give the tokenizer a distinct pad token "
            "(RESEARCH Part B 3(d).3: pad must not equal EOS)"
        )
    return SpecialIds(
        tokenizer.pad_token_id, tokenizer.eos_token_id, vocab[BOT], vocab[EOT], vocab[LATENT]
    )


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` without any special tokens added."""
    return tokenizer.encode(text, add_special_tokens=False)
