"""CLIP's BPE tokenizer, which GLIDE's noisy CLIP reads prompts with: 49,408 tokens (the 256 bytes, the same
ending a word, 48,894 merges, start and end of text), from the vocabulary shipped in clip_bpe/ and checked by
sha256.

A text is cleaned as CLIP cleans it: ftfy.fix_text (mojibake, curly quotes, full-width forms, ligatures,
control characters), HTML entities unescaped twice, each run of whitespace one space, stripped, lower-cased.
Then it is split into the special tokens' text, contractions, runs of letters, single digits and runs of other
symbols (whitespace dropped), each piece's UTF-8 bytes spelled as characters and merged by BPE. ftfy and regex
(pinned in requirements.txt) make the ids GLIDE's on any text: ftfy's repairs are heuristics no short rule
reproduces, and the split needs Unicode classes and case-insensitive matching that the standard re lacks.
"""

import functools
import gzip
import hashlib
import html
from pathlib import Path

import ftfy
import regex
import torch as th

from ..errors import UsageError
from ..text.tokenizer import char_to_byte

VOCAB_PATH = Path(__file__).parent / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "67603cfda2e032ad77b5f8808af37789d590db664b26df8705d2bf8b3c553fc8"  # of the unzipped file
N_MERGES = 49152 - 256 - 2  # the merges CLIP keeps: its vocabulary less the bytes, the word ends and 2 specials
START_OF_TEXT, END_OF_TEXT, END_OF_WORD = "<|startoftext|>", "<|endoftext|>", "</w>"
SPLIT = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
                      regex.IGNORECASE)
WHITESPACE = regex.compile(r"\s+")


def read_merges(path):
    """CLIP's merges [(left, right)] in priority order, from the gzipped vocabulary file at path, once the
    unzipped file's sha256 is the pinned one."""
    data = gzip.decompress(Path(path).read_bytes())
    found = hashlib.sha256(data).hexdigest()
    if found != VOCAB_SHA256:
        raise UsageError(f"{path}: the unzipped vocabulary has sha256 {found}, expected {VOCAB_SHA256}: CLIP's "
                         "tokenizer file is damaged; reinstall the package (from a checkout: pip install -e .)")
    lines = data.decode("utf-8").split("\n")  # a version line, then one merge a line
    return [tuple(line.split()) for line in lines[1:N_MERGES + 1]]


def clean(text):
    """CLIP's cleaning of a text before it is split (module docstring)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    """Text <-> CLIP token ids (the API of glide_text2im's SimpleTokenizer; called on texts, open_clip's)."""

    def __init__(self, vocab_path=VOCAB_PATH):
        merges = read_merges(vocab_path)
        self.byte_of = char_to_byte()  # CLIP spells bytes with GPT-2's printable characters, in this order
        self.char_of = {byte: char for char, byte in self.byte_of.items()}
        self.vocab = [*self.byte_of, *(char + END_OF_WORD for char in self.byte_of), *("".join(m) for m in merges),
                      START_OF_TEXT, END_OF_TEXT]
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._merge)

    @property
    def n_vocab(self):
        """49408."""
        return len(self.vocab)

    @property
    def start_token(self):
        """49406 (<|startoftext|>): first in every padded text."""
        return self.ids[START_OF_TEXT]

    @property
    def end_token(self):
        """49407 (<|endoftext|>): after a text's tokens; the text encoder reads its features there."""
        return self.ids[END_OF_TEXT]

    def encode(self, text):
        """The ids of the cleaned text, a list of ints (no start or end token); the special tokens' text in a
        prompt ("<|endoftext|>") gives their ids, as in CLIP."""
        ids = []
        for piece in SPLIT.findall(clean(text)):
            ids += [self.ids[symbol] for symbol in self._bpe("".join(map(self.char_of.get, piece.encode("utf-8"))))]
        return ids

    def decode(self, tokens):
        """The text of a list of ids, a space after each word; bytes that are not valid UTF-8 become U+FFFD."""
        text = "".join(self.vocab[token] for token in tokens)
        return bytes(self.byte_of[char] for char in text).decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def padded_tokens_and_len(self, tokens, text_ctx):
        """(ids [text_ctx], length): start token, the first text_ctx - 2 tokens, end token, then 0 as padding;
        length counts up to the end token."""
        kept = [self.start_token, *tokens[:text_ctx - 2], self.end_token]
        return kept + [0] * (text_ctx - len(kept)), len(kept)

    def __call__(self, texts, context_length=77):
        """LongTensor [N, context_length]: each of texts (a str or a list of them) padded as padded_tokens_and_len."""
        texts = [texts] if isinstance(texts, str) else texts
        rows = [self.padded_tokens_and_len(self.encode(text), context_length)[0] for text in texts]
        return th.tensor(rows, dtype=th.long).reshape(len(texts), context_length)

    def _merge(self, word):
        """A word's BPE symbols (word: its bytes spelled as characters): the last character marked as ending the
        word, then the adjacent pair of the lowest merge rank joined everywhere, left to right, until no pair is
        a merge. The special tokens' text is one symbol."""
        if word in (START_OF_TEXT, END_OF_TEXT):
            return (word,)
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: self.ranks.get(p, N_MERGES))
            if pair not in self.ranks:
                break
            symbols = join_pair(symbols, pair)
        return tuple(symbols)


def join_pair(symbols, pair):
    """symbols with each occurrence of the adjacent pair (left, right), scanned left to right, joined into one."""
    joined, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            joined.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            joined.append(symbols[i])
            i += 1
    return joined


@functools.cache
def get_tokenizer():
    """The one shared Tokenizer of the shipped vocabulary, loaded on first use."""
    return Tokenizer()
