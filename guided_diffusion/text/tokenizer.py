"""GLIDE's caption tokenizer: GPT-2's byte-level BPE over lower-cased text (n_vocab 50257, end token 50256,
no start token), read from the vocabulary shipped in gpt2_bpe/ and checked by sha256.

tiktoken (pinned in requirements.txt) runs the BPE: a maintained implementation that builds an encoding
offline from ranks we read here, and gives GLIDE's ids on every case of tests/fixtures/glide/tokens.json.
"""

import functools
import gzip
import hashlib
import json
from pathlib import Path

import tiktoken
import torch as th

from ..errors import UsageError

VOCAB_DIR = Path(__file__).parent / "gpt2_bpe"
# sha256 of the unzipped files: the values tiktoken's own "gpt2" encoding pins.
VOCAB_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
END_OF_TEXT = "<|endoftext|>"
# GPT-2's split before BPE: contractions, then runs of letters, of digits, of other symbols (each with at
# most one leading space), then whitespace (a run followed by a word leaves its last space to the word).
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def read_vocab_file(vocab_dir, name):
    """The unzipped bytes of vocab_dir/<name>.gz, once their sha256 is the pinned one."""
    path = Path(vocab_dir) / f"{name}.gz"
    data = gzip.decompress(path.read_bytes())
    found = hashlib.sha256(data).hexdigest()
    if found != VOCAB_SHA256[name]:
        raise UsageError(f"{path}: the unzipped {name} has sha256 {found}, expected {VOCAB_SHA256[name]}: the "
                         "tokenizer's vocabulary is damaged; reinstall the package (pip install --force-reinstall "
                         "guided-diffusion, or from a checkout: pip install -e .)")
    return data


def char_to_byte():
    """GPT-2's spelling of bytes as printable characters, inverted: {character: byte}. Printable Latin-1
    bytes stand for themselves; the other 68 are chr(256), chr(257), ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {chr(byte): byte for byte in printable} | {chr(256 + i): byte for i, byte in enumerate(others)}


class Tokenizer:
    """Text <-> GPT-2 token ids the way GLIDE's UNet reads captions (the API of glide_text2im's Encoder)."""

    def __init__(self, vocab_dir=VOCAB_DIR):
        """vocab_dir holds encoder.json.gz (token -> id) and vocab.bpe.gz (the merges). The ids follow the
        merge order, so tiktoken, which merges the pair whose result has the lowest id, merges as GPT-2 does;
        it needs only the ids, and vocab.bpe is read to check that the pair is intact."""
        encoder = json.loads(read_vocab_file(vocab_dir, "encoder.json"))
        read_vocab_file(vocab_dir, "vocab.bpe")
        byte_of = char_to_byte()
        ranks = {bytes(byte_of[char] for char in token): token_id
                 for token, token_id in encoder.items() if token != END_OF_TEXT}
        self._bpe = tiktoken.Encoding("glide_gpt2", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={END_OF_TEXT: encoder[END_OF_TEXT]})

    @property
    def n_vocab(self):
        """50257: the rows of the text encoder's token embedding."""
        return self._bpe.n_vocab

    @property
    def end_token(self):
        """50256 (<|endoftext|>): what pads every caption."""
        return self._bpe.eot_token

    def encode(self, text):
        """The ids of text.lower(), a list of ints; "<|endoftext|>" written in a caption is text, not the end token."""
        return self._bpe.encode_ordinary(text.lower())

    def decode(self, tokens):
        """The text of a list of ids; bytes that are not valid UTF-8 (ids cut inside a character) become U+FFFD."""
        return self._bpe.decode(tokens, errors="replace")

    def padded_tokens_and_mask(self, tokens, text_ctx):
        """(ids, mask), two lists of length text_ctx: the first text_ctx tokens, then end_token as padding;
        mask is True on the kept tokens and False on the padding."""
        kept = list(tokens[:text_ctx])
        padding = text_ctx - len(kept)
        return kept + [self.end_token] * padding, [True] * len(kept) + [False] * padding


@functools.cache
def get_encoder():
    """The one shared Tokenizer of the shipped vocabulary, loaded on first use (GLIDE's name)."""
    return Tokenizer()


def tokens_and_mask(texts, text_ctx):
    """Captions as the text UNet's input: (tokens LongTensor [N, text_ctx], padded with end_token; mask
    BoolTensor [N, text_ctx], True on real tokens, all False for ""; truncated: the indices of the texts longer
    than text_ctx tokens, cut to their first text_ctx)."""
    tokenizer = get_encoder()
    encoded = [tokenizer.encode(text) for text in texts]
    padded = [tokenizer.padded_tokens_and_mask(tokens, text_ctx) for tokens in encoded]
    tokens = th.tensor([ids for ids, _ in padded], dtype=th.long).reshape(len(texts), text_ctx)
    mask = th.tensor([mask for _, mask in padded], dtype=th.bool).reshape(len(texts), text_ctx)
    return tokens, mask, [i for i, ids in enumerate(encoded) if len(ids) > text_ctx]
