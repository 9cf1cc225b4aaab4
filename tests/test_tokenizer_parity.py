"""Exactness against the references: GPT-2 via tiktoken (100% of tokens, both our encoders),
GPT-2's release files, tiktoken ranks files and Hugging Face ``tokenizers`` export."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylm.errors import TinyLMError
from tinylm.tokenizer import DisallowedSpecial
from tinylm.tokenizer.bpe import BPETokenizer
from tinylm.tokenizer.io import load_hf, load_tiktoken_ranks, save_hf, save_tiktoken_ranks, to_hf_tokenizer

from conftest import shared_text, stdlib_text

tiktoken = pytest.importorskip("tiktoken")
EOT = "<|endoftext|>"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PIECES = ["'s", "'ll", "'re", "'ve", "'m", "'d", "'t", "'LL", " ", "  ", "   ", "\n", "\n\n", "\t",
          "\r\n", " \n ", "\u00a0", "\u3000", "\u2028", "\x1c", "\u200b", "\ufeff", "0", "123", "4567890",
          "½", "hello", "Hello", " world", " don't", "😀", "👋🏽", "🇫🇷", "👨‍👩‍👧", "日本語", "中文",
          "한국어", "é", "e\u0301", "a\u0308\u0323", "ﬁ", "—", "...", "?!", EOT, "<|", "ß", "İ", "Ω",
          "ǅ", "\\", "\x00", "\x7f", "\U0001d54f", "عربى", "עברית", "देवनागरी"]
# Characters Unicode has assigned (Python's tables). The fast path's regex (tiktoken, Rust) and the
# reference's (the `regex` package) carry Unicode tables of different versions, and disagree on
# whether a newly assigned code point is a letter: U+1DF90 splits "'s" off in one and not in the
# other. That is the libraries' data, not the BPE; every character assigned long enough is fuzzed.
# (Surrogates, Cs, are left out as st.text's default does.)
chars = st.characters(exclude_categories=("Cn", "Cs"))
texts = st.one_of(st.text(chars, max_size=80),
                  st.lists(st.one_of(st.sampled_from(PIECES), st.text(chars, max_size=4)), max_size=30).map("".join))


@pytest.fixture(scope="module")
def gpt2_enc():
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        pytest.skip(f"tiktoken's GPT-2 files are unavailable ({type(e).__name__}); set TIKTOKEN_CACHE_DIR")


@pytest.fixture(scope="module")
def gpt2(gpt2_enc) -> BPETokenizer:
    return BPETokenizer.from_tiktoken(gpt2_enc)


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    text = shared_text("tinystories/train-head-lowercase.txt")[:400_000]
    return BPETokenizer.train([text], 2048)


# ---------------------------------------------------------------------------- GPT-2 parity

def test_gpt2_known_answers(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.n_merges == 50000 and gpt2.eot_token == 50256
    assert gpt2.encode("hello world") == gpt2.encode_reference("hello world") == [31373, 995]
    assert gpt2.encode(" hello") == [23748]
    assert gpt2.encode(EOT, allowed_special="all") == [50256]
    assert gpt2.vocab[gpt2.merges[0][0]] + gpt2.vocab[gpt2.merges[0][1]] == b" t"  # vocab.bpe line 1: "Ġ t"


@pytest.mark.parametrize("name", ["tinyshakespeare/input.txt", "tinystories/valid-head.txt",
                                  "tinystories/train-head-lowercase.txt", "stdlib"])
def test_gpt2_parity_on_real_text(gpt2, gpt2_enc, name):
    text = stdlib_text() if name == "stdlib" else shared_text(name)
    want = gpt2_enc.encode_ordinary(text)
    assert gpt2.encode_ordinary(text) == want   # fast path: 100% of tokens
    assert gpt2.encode_reference(text) == want  # pure-Python reference: 100% of tokens
    assert gpt2.decode(want) == text


@FUZZ
@given(text=texts)
def test_gpt2_parity_fuzz(gpt2, gpt2_enc, text):
    want = gpt2_enc.encode_ordinary(text)
    assert gpt2.encode_ordinary(text) == want
    assert gpt2.encode_reference(text) == want
    want = gpt2_enc.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special="all") == want
    assert gpt2.encode_reference(text, allowed_special="all") == want
    assert gpt2.decode(want) == text


# the special-token settings tiktoken users pass; each is compared call for call
SPECIAL_KWARGS = [{}, {"allowed_special": "all"}, {"allowed_special": {EOT}}, {"disallowed_special": ()},
                  {"allowed_special": "all", "disallowed_special": ()}, {"disallowed_special": {EOT}},
                  {"allowed_special": {EOT}, "disallowed_special": {EOT}}, {"disallowed_special": {"<|"}}]


def _outcome(encode, text, kwargs):
    """The ids, or "ValueError" when the call raises one (as tiktoken does for a disallowed special token)."""
    try:
        return encode(text, **kwargs)
    except ValueError:
        return "ValueError"


@FUZZ
@given(text=texts)
def test_gpt2_special_token_rules_match_tiktoken_call_for_call(gpt2, gpt2_enc, text):
    for kwargs in SPECIAL_KWARGS:
        assert _outcome(gpt2.encode, text, kwargs) == _outcome(gpt2_enc.encode, text, kwargs), kwargs
    assert gpt2.encode_ordinary(text) == gpt2_enc.encode_ordinary(text)


def test_gpt2_tiktoken_api_known_answers(gpt2, gpt2_enc):
    assert gpt2.n_vocab == gpt2_enc.n_vocab == 50257 and gpt2.eot_token == gpt2_enc.eot_token == 50256
    text = f"Hello{EOT} world"
    for tok in (gpt2, gpt2_enc):  # the same defaults: special-token text raises unless allowed
        with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
            tok.encode(text)
    with pytest.raises(DisallowedSpecial):
        gpt2.encode(text)
    assert gpt2.encode(text, allowed_special="all") == [15496, 50256, 995]
    assert gpt2.encode_ordinary(text) == gpt2_enc.encode_ordinary(text) == gpt2.encode(text, disallowed_special=())
    batch = ["hello world", text, "", " café 🙂"]
    for kwargs in ({"allowed_special": "all"}, {"disallowed_special": ()}):
        assert gpt2.encode_batch(batch, **kwargs) == gpt2_enc.encode_batch(batch, **kwargs)
    with pytest.raises(ValueError):
        gpt2.encode_batch(batch)


def test_gpt2_decoding_matches_tiktoken_for_every_id(gpt2, gpt2_enc):
    ids = range(gpt2.n_vocab)
    assert [gpt2.decode_single_token_bytes(i) for i in ids] == [gpt2_enc.decode_single_token_bytes(i) for i in ids]
    some = gpt2_enc.encode("naïve café 🙂 — <|endoftext|>", allowed_special="all")
    assert gpt2.decode_bytes(some) == gpt2_enc.decode_bytes(some)
    assert gpt2.decode_bytes(some[:3] + some[5:6]) == gpt2_enc.decode_bytes(some[:3] + some[5:6])  # split characters
    with pytest.raises(TinyLMError, match="not in this tokenizer"):
        gpt2.decode_single_token_bytes(50257)


def test_gpt2_from_release_files(gpt2):
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR", ""))
    # tiktoken caches GPT-2's encoder.json and vocab.bpe under these names (sha1 of their URLs)
    enc_json = cache / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"
    vocab_bpe = cache / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"
    if not (enc_json.is_file() and vocab_bpe.is_file()):
        pytest.skip("GPT-2's encoder.json / vocab.bpe are not in TIKTOKEN_CACHE_DIR")
    tok = BPETokenizer.from_files(enc_json, vocab_bpe)
    assert tok.__getstate__() == gpt2.__getstate__()
    with pytest.raises(TinyLMError, match="cannot read GPT-2 files"):
        BPETokenizer.from_files(vocab_bpe, enc_json)


def test_gpt2_file_round_trip(gpt2, tmp_path):
    from tinylm.tokenizer import load_tokenizer
    gpt2.save(tmp_path / "gpt2.bpe")
    again = load_tokenizer(tmp_path / "gpt2.bpe")
    assert again.__getstate__() == gpt2.__getstate__()
    assert again.byte_ids != list(range(256))  # GPT-2 numbers its bytes in its own order
    assert "\n198\t\"\\n\"" in (tmp_path / "gpt2.vocab.txt").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- trained tokenizers

@FUZZ
@given(text=texts)
def test_trained_fast_reference_and_tiktoken_agree(trained, text):
    ids = trained.encode(text, allowed_special="all")
    assert ids == trained.encode_reference(text, allowed_special="all")
    assert trained.decode(ids) == text


def test_tiktoken_ranks_file_round_trip(trained, tmp_path):
    from tiktoken.load import load_tiktoken_bpe
    path = tmp_path / "tok.tiktoken"
    save_tiktoken_ranks(trained, path)
    enc = tiktoken.Encoding("t", pat_str=trained.pattern, mergeable_ranks=load_tiktoken_bpe(str(path)),
                            special_tokens=trained.special_tokens)
    text = shared_text("tinystories/valid-head.txt")
    assert enc.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    back = load_tiktoken_ranks(path, trained.special_tokens)
    assert back.merges == trained.merges and back.special_tokens == trained.special_tokens


@pytest.fixture(scope="module")
def hf_trained(trained):
    pytest.importorskip("tokenizers")
    return to_hf_tokenizer(trained)


def test_hf_export_encodes_identically_on_real_text(trained, hf_trained):
    text = shared_text("tinystories/valid-head.txt")[:300_000] + f"{EOT}The end.\n" + stdlib_text(150_000)
    assert hf_trained.encode(text).ids == trained.encode(text, allowed_special="all")
    assert hf_trained.decode(trained.encode("Once upon a time")) == "Once upon a time"


@FUZZ
@given(text=texts)
def test_hf_export_fuzz(trained, hf_trained, text):
    assert hf_trained.encode(text).ids == trained.encode(text, allowed_special="all")


def test_hf_export_of_gpt2(gpt2, gpt2_enc, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    save_hf(gpt2, tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = shared_text("tinystories/valid-head.txt")[:200_000] + EOT + stdlib_text(100_000)
    assert hf.encode(text).ids == gpt2_enc.encode(text, allowed_special="all")
    # Hugging Face's token names ("Ġworld"): the same lookups both ways, for every id
    names = [hf.id_to_token(i) for i in range(gpt2.n_vocab)]
    assert [gpt2.id_to_token(i) for i in range(gpt2.n_vocab)] == names
    assert [gpt2.token_to_id(t) for t in names] == list(range(gpt2.n_vocab))
    assert gpt2.token_to_id("Ġworld") == hf.token_to_id("Ġworld") == 995 and gpt2.token_to_id("nope nope") is None


def test_a_tokenizer_json_reads_back_as_the_same_tokenizer(trained, gpt2, gpt2_enc, tmp_path):
    """load_hf reads what save_hf wrote, and GPT-2's own layout (ByteLevel splitting with its regex),
    saved by `tokenizers` itself; what it cannot encode the same way is refused by name."""
    tokenizers = pytest.importorskip("tokenizers")
    save_hf(trained, tmp_path / "ours.json")
    assert load_hf(tmp_path / "ours.json").same_ids(trained)
    hf = to_hf_tokenizer(gpt2)  # GPT-2's tokenizer.json: ByteLevel pre-tokenizer with use_regex, no Split step
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.save(str(tmp_path / "gpt2.json"))
    back = load_hf(tmp_path / "gpt2.json")
    assert back.same_ids(gpt2)
    text = shared_text("tinystories/valid-head.txt")[:50_000] + EOT + stdlib_text(20_000)
    assert back.encode(text, allowed_special="all") == hf.encode(text).ids == \
        gpt2_enc.encode(text, allowed_special="all")
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=True)
    hf.save(str(tmp_path / "prefix.json"))
    with pytest.raises(TinyLMError, match=r"prefix.json holds the setting add_prefix_space, which tinylm has no"):
        load_hf(tmp_path / "prefix.json")
    wordpiece = tokenizers.Tokenizer(tokenizers.models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.save(str(tmp_path / "wp.json"))
    with pytest.raises(TinyLMError, match=r"holds a 'WordPiece' model, which tinylm has no counterpart"):
        load_hf(tmp_path / "wp.json")
    (tmp_path / "bad.json").write_text('{"model": []}')
    with pytest.raises(TinyLMError, match=r"cannot read .*bad.json as a Hugging Face tokenizer.json"):
        load_hf(tmp_path / "bad.json")


def test_bad_ranks_are_rejected():
    ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(TinyLMError, match="not a BPE vocabulary"):
        BPETokenizer.from_ranks({**ranks, b"abc": 256})  # no two lower tokens make "abc"
    with pytest.raises(TinyLMError, match="distinct ids"):
        BPETokenizer.from_ranks({**ranks, b"ab": 300})


def test_lone_surrogates_are_replaced_like_tiktoken(gpt2, gpt2_enc):
    text = "a\ud800b \udfff c\ud83d\ude00"  # two lone surrogates and a valid pair (an emoji)
    want = gpt2_enc.encode(text)
    assert gpt2.encode(text) == gpt2.encode_reference(text) == want
    assert gpt2.decode(want) == "a\ufffdb \ufffd c\U0001f600"


def test_token_stats_count_special_token_text_as_text(gpt2, gpt2_enc):
    from tinylm.tokenizer.stats import token_stats
    text = f"Once upon a time.{EOT}The end.\n"
    rows = token_stats([text], [256], width=8)
    assert rows[-1]["tokenizer"] == "gpt2" and rows[-1]["tokens"] == len(gpt2_enc.encode_ordinary(text))
