"""GLIDE's tokenizer (guided_diffusion/text/tokenizer.py) against the ids, decoding and padding of GLIDE's own
code pinned in fixtures/glide/tokens.json (fixtures/make_glide_tokens.py), plus the vocabulary's hash check
and the batch helper."""

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch as th

from guided_diffusion.errors import UsageError
from guided_diffusion.text.tokenizer import (VOCAB_DIR, VOCAB_SHA256, Tokenizer, char_to_byte, get_encoder,
                                             read_vocab_file, tokens_and_mask)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "glide" / "tokens.json").read_text())
CASES = [pytest.param(case, id=case["covers"]) for case in FIXTURE["cases"]]


@pytest.mark.parametrize("case", CASES)
def test_encode_gives_glides_ids(case):
    assert get_encoder().encode(case["text"]) == case["tokens"]


@pytest.mark.parametrize("case", CASES)
def test_decode_and_padding_match_glide(case):
    tokenizer = get_encoder()
    assert tokenizer.decode(case["tokens"]) == case["decoded"]
    assert tokenizer.decode(case["tokens"][:1]) == case["first_token_decoded"]  # U+FFFD for a cut character
    padded, mask = tokenizer.padded_tokens_and_mask(case["tokens"], FIXTURE["text_ctx"])
    assert (padded, mask) == (case["padded"], case["mask"])


@pytest.mark.parametrize("case", CASES)
def test_decode_inverts_encode_up_to_lower_case(case):
    tokenizer = get_encoder()
    assert tokenizer.decode(tokenizer.encode(case["text"])) == case["text"].lower()


def test_vocabulary_size_and_end_token_are_glides():
    tokenizer = get_encoder()
    assert (tokenizer.n_vocab, tokenizer.end_token) == (FIXTURE["n_vocab"], FIXTURE["end_token"]) == (50257, 50256)
    assert get_encoder() is tokenizer


def test_ids_follow_the_merge_order():
    """What lets tiktoken, which merges the pair whose result has the lowest id, merge in vocab.bpe's order."""
    encoder = json.loads(read_vocab_file(VOCAB_DIR, "encoder.json"))
    merges = read_vocab_file(VOCAB_DIR, "vocab.bpe").decode().splitlines()[1:]  # after the version line
    assert sorted(encoder[char] for char in char_to_byte()) == list(range(256))
    assert [encoder["".join(merge.split(" "))] for merge in merges] == list(range(256, 256 + len(merges)))


@pytest.mark.parametrize("name", sorted(VOCAB_SHA256))
def test_a_tampered_vocabulary_is_refused(tmp_path, name):
    vocab_dir = Path(shutil.copytree(VOCAB_DIR, tmp_path / "gpt2_bpe"))
    data = bytearray(gzip.decompress((vocab_dir / f"{name}.gz").read_bytes()))
    data[1000] ^= 1
    (vocab_dir / f"{name}.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(UsageError) as error:
        Tokenizer(vocab_dir)
    found = hashlib.sha256(data).hexdigest()
    for part in (f"{name}.gz", VOCAB_SHA256[name], found, "reinstall"):
        assert part in str(error.value)


def test_tokens_and_mask_pads_masks_and_reports_truncation():
    text_ctx = FIXTURE["text_ctx"]
    caption, empty, long = (next(case for case in FIXTURE["cases"] if case["covers"] == covers)
                            for covers in ("plain caption", "empty caption", "longer than the context"))
    tokens, mask, truncated = tokens_and_mask([caption["text"], empty["text"], long["text"]], text_ctx)
    assert (tokens.shape, tokens.dtype, mask.shape, mask.dtype) == ((3, text_ctx), th.long, (3, text_ctx), th.bool)
    assert tokens.tolist() == [caption["padded"], empty["padded"], long["padded"]]
    assert mask.tolist() == [caption["mask"], empty["mask"], long["mask"]]
    assert not mask[1].any() and (tokens[1] == get_encoder().end_token).all()
    assert truncated == [2]
    assert tokens_and_mask([caption["text"]], len(caption["tokens"]))[2] == []  # exactly text_ctx tokens: kept
    assert [t.shape for t in tokens_and_mask([], text_ctx)[:2]] == [(0, text_ctx), (0, text_ctx)]
