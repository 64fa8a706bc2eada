import pytest

from persona_axes import ChatTemplateError, ConversationError, SpanError, render_chat

from helpers import conversations


def _decode(tok, r, s):
    return tok.decode(list(r.input_ids[s.start : s.end]))


@pytest.mark.parametrize("gen", [False, True])
def test_content_spans_decode_to_message_text(chatml_tokenizer, gen):
    for conv in conversations(6):
        r = render_chat(chatml_tokenizer, conv, add_generation_prompt=gen)
        assert len(r.spans) == len(conv)
        for m, s in zip(conv, r.spans):
            assert s.role == m["role"]
            assert _decode(chatml_tokenizer, r, s) == m["content"]
        # no special/template tokens inside any span
        special = set(chatml_tokenizer.all_special_ids)
        for s in r.spans:
            assert not special & set(r.input_ids[s.start : s.end])
        assert r.text.endswith("<|im_start|>assistant\n") == gen


def test_turn_indices_and_order(chatml_tokenizer):
    conv = conversations(3)[2]  # system + 3 user/assistant pairs
    r = render_chat(chatml_tokenizer, conv)
    assert [s.turn for s in r.spans] == [0, 0, 0, 1, 1, 2, 2]
    assert all(a.end <= b.start for a, b in zip(r.spans, r.spans[1:]))


def test_content_equal_to_role_name_is_found_in_the_right_place(chatml_tokenizer):
    conv = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "assistant"}]
    r = render_chat(chatml_tokenizer, conv)
    assert [_decode(chatml_tokenizer, r, s) for s in r.spans] == ["user", "assistant"]
    # the content tokens come after the role header tokens
    assert r.spans[0].start > 1


def test_system_is_folded_when_template_has_no_system_role(nosystem_tokenizer):
    conv = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": "  Arr, matey!  "},  # the template trims content
    ]
    r = render_chat(nosystem_tokenizer, conv)
    assert r.system_folded
    assert "You are a pirate.\n\nHello there!" in r.text
    got = [_decode(nosystem_tokenizer, r, s) for s in r.spans]
    assert got == ["You are a pirate.", "Hello there!", "Arr, matey!"]
    assert [s.role for s in r.spans] == ["system", "user", "assistant"]


def test_no_system_template_without_system_message_is_not_folded(nosystem_tokenizer):
    r = render_chat(nosystem_tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    assert not r.system_folded


def test_select(chatml_tokenizer):
    conv = conversations(3)[2]
    r = render_chat(chatml_tokenizer, conv)
    assert r.select("last_assistant") == [r.spans[-1]]
    assert r.select("assistant") == [s for s in r.spans if s.role == "assistant"]
    assert r.select(-2) == [r.spans[-2]]
    seq = r.select("sequence")[0]
    assert (seq.start, seq.end) == (0, len(r.input_ids))


def test_errors(chatml_tokenizer):
    with pytest.raises(ConversationError, match="empty"):
        render_chat(chatml_tokenizer, [])
    with pytest.raises(ConversationError, match="role"):
        render_chat(chatml_tokenizer, [{"role": "wizard", "content": "x"}])
    with pytest.raises(ConversationError, match="content must be a string"):
        render_chat(chatml_tokenizer, [{"role": "user", "content": 3}])
    r = render_chat(chatml_tokenizer, [{"role": "user", "content": "Hi"}])
    with pytest.raises(SpanError, match="no assistant message"):
        r.select("last_assistant")
    with pytest.raises(SpanError, match="out of range"):
        r.select(5)
    with pytest.raises(SpanError, match="unknown span selector"):
        r.select("bogus")


def test_tokenizer_without_chat_template(chatml_tokenizer):
    import copy

    tok = copy.deepcopy(chatml_tokenizer)
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat(tok, [{"role": "user", "content": "Hi"}])


@pytest.mark.slow
def test_gemma3_spans_decode_to_the_message_text(gemma3):
    """On the real Gemma 3 tokenizer with the shipped template: one BOS, the system text folded into the first user
    turn by the template itself, and every span decoding to its message's text."""
    from conftest import GEMMA_CONVS

    tok = gemma3.tokenizer
    for conv in GEMMA_CONVS:
        r = render_chat(tok, conv)
        assert r.input_ids[0] == tok.bos_token_id and r.input_ids.count(tok.bos_token_id) == 1
        assert r.text.count("<start_of_turn>model\n") == sum(m["role"] == "assistant" for m in conv)
        for m, s in zip(conv, r.spans):
            assert tok.decode(list(r.input_ids[s.start:s.end])) == m["content"].strip(), (m, s)
        assert r.input_ids[r.spans[-1].end] == tok.convert_tokens_to_ids("<end_of_turn>")


def test_a_token_straddling_the_content_edge_belongs_to_it_only_if_it_carries_content(chatml_tokenizer):
    """' Arr' after a template space carries content (it is in the span, see the Mistral family test); a template
    newline fused with the content's own leading spaces ('\\n ') does not."""
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Arr  "}]
    r = render_chat(chatml_tokenizer, conv)
    s = r.spans[1]
    inside = chatml_tokenizer.decode(list(r.input_ids[s.start:s.end]))
    assert inside.strip() == "Arr" and "\n" not in inside
    assert "assistant\n" in chatml_tokenizer.decode(list(r.input_ids[:s.start]))
