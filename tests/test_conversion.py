import copy

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from dgr2_trl import convert_to_block_diffusion, get_block_diffusion_settings
from dgr2_trl.modeling import build_training_layout, decoder_hidden_states, tiny_causal_lm
from tests.conftest import make_model


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3", "llama"])
def test_weights_unchanged_and_settings_stored(tokenizer, architecture):
    model = make_model(tokenizer, architecture)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted, tok = convert_to_block_diffusion(model, copy.deepcopy(tokenizer), block_size=8)
    after = converted.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the spare row took the mask token: no resize
    settings = get_block_diffusion_settings(converted)
    assert settings.block_size == 8 and settings.mask_token_id == tok.mask_token_id == len(tokenizer)


def test_embeddings_resized_only_when_mask_token_is_new(tokenizer):
    model = tiny_causal_lm(len(tokenizer), "qwen3", seed=3)
    rows_before = model.get_input_embeddings().weight.detach().clone()
    converted, tok = convert_to_block_diffusion(model, copy.deepcopy(tokenizer), block_size=4)
    weight = converted.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer) + 1
    assert torch.equal(weight[: len(tokenizer)], rows_before)
    assert converted.get_output_embeddings().weight.shape[0] == len(tokenizer) + 1
    # converting again reuses the token (no second resize) and only changes the block size
    again, tok2 = convert_to_block_diffusion(converted, tok, block_size=16)
    assert again.get_input_embeddings().weight.shape[0] == len(tokenizer) + 1
    assert get_block_diffusion_settings(again).block_size == 16 and len(tok2) == len(tok)


def test_save_and_load_round_trip(tokenizer, tmp_path):
    model, tok = convert_to_block_diffusion(make_model(tokenizer), copy.deepcopy(tokenizer), block_size=4)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert get_block_diffusion_settings(reloaded) == get_block_diffusion_settings(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_bad_block_size(tokenizer, bad):
    with pytest.raises(ValueError, match="block_size"):
        convert_to_block_diffusion(make_model(tokenizer), copy.deepcopy(tokenizer), block_size=bad)


@pytest.mark.parametrize("token", ["<|endoftext|>", "<|im_end|>", "<|im_start|>"])
def test_mask_token_colliding_with_special_token(tokenizer, token):
    with pytest.raises(ValueError, match="collides"):
        convert_to_block_diffusion(make_model(tokenizer), copy.deepcopy(tokenizer), mask_token=token)


def test_mask_token_that_is_an_ordinary_token(tokenizer):
    ordinary = next(t for t in tokenizer.get_vocab() if t.isalpha() and len(t) > 3)
    with pytest.raises(ValueError, match="ordinary token"):
        convert_to_block_diffusion(make_model(tokenizer), copy.deepcopy(tokenizer), mask_token=ordinary)


def _causal_only_attention(module, query, key, value, attention_mask, **kwargs):
    # an attention backend that ignores any custom mask, as FlashAttention-2 does
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


def test_attention_that_ignores_4d_masks_is_detected(tokenizer):
    AttentionInterface.register("causal_only_test", _causal_only_attention)
    model = make_model(tokenizer)
    model.set_attn_implementation("causal_only_test")
    with pytest.raises(ValueError, match="ignores a custom 4D attention mask"):
        convert_to_block_diffusion(model, copy.deepcopy(tokenizer))


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_block_size_one_layout_reproduces_ar_logits(tokenizer, architecture, attn_implementation):
    """A converted model trained/scored at block size 1 computes exactly the AR model's next-token logits."""
    model = make_model(
        tokenizer, architecture
    )  # the AR reference runs on sdpa (HF's eager NaNs on left padding in fp64)
    converted = copy.deepcopy(model)
    converted.set_attn_implementation(attn_implementation)
    converted, tok = convert_to_block_diffusion(converted, copy.deepcopy(tokenizer), block_size=1)
    prompt_ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    completion_ids = torch.tensor([[31, 32, 33, 34], [41, 42, 0, 0]])
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    noisy = completion_mask.bool()  # everything masked: still plain AR at block size 1
    layout = build_training_layout(
        prompt_ids, prompt_mask, completion_ids, completion_mask, noisy, tok.mask_token_id, 1
    )
    hidden = decoder_hidden_states(converted, layout.input_ids, layout.position_ids, layout.attention_mask)
    rows = torch.arange(2)[:, None]
    layout_logits = converted.lm_head(hidden[rows, layout.predictor_column])
    full_ids = torch.cat([prompt_ids, completion_ids], 1)
    full_mask = torch.cat([prompt_mask, completion_mask], 1)
    ar_logits = model(
        input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)
    ).logits
    expected = ar_logits[:, 4:8]  # column i-1 predicts completion token i
    valid = completion_mask.bool()
    # HF's eager attention takes its softmax in float32, hence the looser tolerance there
    atol = 1e-9 if attn_implementation == "sdpa" else 1e-5
    vocab = len(tokenizer)
    torch.testing.assert_close(layout_logits[valid][:, :vocab], expected[valid][:, :vocab], rtol=0, atol=atol)
