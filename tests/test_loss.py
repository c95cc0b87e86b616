import pytest
import torch
from transformers import DynamicCache

from dgr2_trl.modeling import (
    block_attention_mask,
    build_training_layout,
    decoder_hidden_states,
    forward_logits,
    log_probs_without_mask,
    masked_diffusion_loss,
    sample_block_noise,
)
from dgr2_trl.modeling.masks import position_ids_from_mask
from dgr2_trl.modeling.noise import CosineSchedule, LinearSchedule, get_schedule
from tests.conftest import make_converted


PROMPT_IDS = torch.tensor([[0, 0, 40, 41, 42], [50, 51, 52, 53, 54]])
PROMPT_MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
COMPLETION_IDS = torch.tensor([[60, 61, 62, 63, 64, 65, 66, 67, 68, 69], [70, 71, 72, 73, 74, 75, 76, 0, 0, 0]])
COMPLETION_MASK = torch.tensor([[1] * 10, [1] * 7 + [0] * 3])


def layout_log_probs(model, mask_id, block_size, noisy, completion_ids=COMPLETION_IDS, prompt_ids=PROMPT_IDS):
    layout = build_training_layout(
        prompt_ids, PROMPT_MASK, completion_ids, COMPLETION_MASK, noisy, mask_id, block_size
    )
    hidden = decoder_hidden_states(model, layout.input_ids, layout.position_ids, layout.attention_mask)
    logits = model.lm_head(hidden[torch.arange(2)[:, None], layout.predictor_column])
    return log_probs_without_mask(logits, mask_id)


def test_training_layout_equals_decoding_a_block_against_the_kv_cache(tokenizer):
    block_size = 4
    model, tok = make_converted(tokenizer, block_size=block_size, seed=7)
    mask_id = tok.mask_token_id
    noisy = torch.rand(COMPLETION_IDS.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    expected = layout_log_probs(model, mask_id, block_size, noisy)
    for block in range(3):
        start, stop = block * block_size, min((block + 1) * block_size, 10)
        # cache: the prompt and the clean blocks before this one; then one pass over the partially masked block
        clean_ids = torch.cat([PROMPT_IDS, COMPLETION_IDS[:, :start]], 1)
        clean_valid = torch.cat([PROMPT_MASK, torch.ones(2, start, dtype=torch.long)], 1).bool()
        clean_blocks = torch.cat(
            [torch.arange(5).expand(2, 5), 5 + torch.arange(start).expand(2, start) // block_size], 1
        )
        cache = DynamicCache(config=model.config)
        no = torch.zeros_like(clean_valid)
        forward_logits(
            model,
            clean_ids,
            position_ids_from_mask(clean_valid),
            block_attention_mask(clean_blocks, no, clean_blocks, no, clean_valid),
            torch.tensor([0]),
            cache,
        )
        width = stop - start
        block_ids = torch.where(noisy[:, start:stop], mask_id, COMPLETION_IDS[:, start:stop])
        q_blocks = torch.full((2, width), 5 + block, dtype=torch.long)
        q_noisy = torch.ones(2, width, dtype=torch.bool)
        q_valid = COMPLETION_MASK[:, start:stop].bool()
        allowed = block_attention_mask(
            q_blocks,
            q_noisy,
            torch.cat([clean_blocks, q_blocks], 1),
            torch.cat([no, q_noisy], 1),
            torch.cat([clean_valid, q_valid], 1),
        )
        positions = PROMPT_MASK.sum(-1, keepdim=True) + torch.arange(start, stop)
        block_logits = forward_logits(model, block_ids, positions, allowed, torch.arange(width), cache)
        got = log_probs_without_mask(block_logits, mask_id)
        # AR shift: offsets start+1..stop-1 are predicted by the block's own columns start..stop-2
        valid = COMPLETION_MASK[:, start + 1 : stop].bool()
        torch.testing.assert_close(got[:, : width - 1][valid], expected[:, start + 1 : stop][valid], rtol=0, atol=1e-9)


def test_no_position_sees_a_later_block_or_padding(tokenizer):
    block_size = 4
    model, tok = make_converted(tokenizer, block_size=block_size, seed=8)
    noisy = torch.rand(COMPLETION_IDS.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    base = layout_log_probs(model, tok.mask_token_id, block_size, noisy)
    changed_completion = COMPLETION_IDS.clone()
    changed_completion[:, 8:] = 99  # the last block (offsets 8, 9) and the padding of row 1
    changed_prompt = PROMPT_IDS.clone()
    changed_prompt[0, :2] = 77  # left padding of row 0
    other = layout_log_probs(model, tok.mask_token_id, block_size, noisy, changed_completion, changed_prompt)
    # every prediction of offsets 0..8 (the first token of the last block is predicted from block 1) is unchanged
    torch.testing.assert_close(other[:, :9], base[:, :9], rtol=0, atol=0)
    assert not torch.allclose(other[0, 9], base[0, 9])  # the perturbation is visible inside its own block


def test_loss_matches_reference_and_reads_logits_only_where_masked(tokenizer):
    block_size = 4
    model, tok = make_converted(tokenizer, block_size=block_size, seed=9)
    noise = sample_block_noise(COMPLETION_MASK, block_size, generator=torch.Generator().manual_seed(2))
    weights = torch.ones(COMPLETION_IDS.shape, dtype=torch.float64)
    weights[:, 6:] = 3.0  # e.g. answer tokens weigh more
    rows_seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows_seen.append(i[0].shape[0]))
    out = masked_diffusion_loss(
        model,
        PROMPT_IDS,
        PROMPT_MASK,
        COMPLETION_IDS,
        COMPLETION_MASK,
        noise,
        tok.mask_token_id,
        block_size,
        token_weights=weights,
    )
    hook.remove()
    masked = noise.noisy_mask & COMPLETION_MASK.bool()
    assert rows_seen == [int(masked.sum())] == [out.num_masked_tokens]
    log_probs = layout_log_probs(model, tok.mask_token_id, block_size, noise.noisy_mask)
    nll = -log_probs.gather(-1, COMPLETION_IDS[..., None]).squeeze(-1)
    expected_sum = (weights / noise.t * nll)[masked].sum()
    torch.testing.assert_close(out.loss_sum, expected_sum, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.loss(), expected_sum / (weights * COMPLETION_MASK).sum())
    plain = masked_diffusion_loss(
        model,
        PROMPT_IDS,
        PROMPT_MASK,
        COMPLETION_IDS,
        COMPLETION_MASK,
        noise,
        tok.mask_token_id,
        block_size,
        time_weighting=False,
    )
    torch.testing.assert_close(plain.loss(time_weighting=False), nll[masked].mean())
    plain.loss(time_weighting=False).backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_block_noise_one_time_per_block_and_only_real_tokens():
    mask = torch.tensor([[1] * 37 + [0] * 3] * 64)
    noise = sample_block_noise(mask, block_size=8, generator=torch.Generator().manual_seed(3))
    t = noise.t.view(64, 5, 8)
    assert torch.equal(t, t[:, :, :1].expand_as(t))  # one t per block
    assert not noise.noisy_mask[:, 37:].any()
    # stratified times: each row's 5 block times fall in 5 different fifths of [0, 1]
    u = (t[:, :, 0] - 1e-3) / (1 - 1e-3)
    assert all(len(set((row * 5).long().clamp(max=4).tolist())) == 5 for row in u)
    rate = noise.noisy_mask[:, :37].float().mean()
    assert abs(rate - noise.t[:, :37].mean()) < 0.05  # linear schedule: masking rate ~ t


def test_schedules():
    t = torch.tensor([0.25, 0.5, 1.0])
    torch.testing.assert_close(LinearSchedule().loss_weight(t), 1 / t)
    cosine = CosineSchedule()
    assert torch.all(cosine.mask_probability(t)[1:] > cosine.mask_probability(t)[:-1])
    torch.testing.assert_close(cosine.mask_probability(torch.tensor([1.0])), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="unknown noise schedule"):
        get_schedule("quadratic")
