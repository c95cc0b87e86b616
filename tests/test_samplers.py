import copy

import pytest
import torch

from dgr2_trl import ARSampler, BlockDiffusionSampler, convert_to_block_diffusion
from dgr2_trl.modeling import block_attention_mask, decoder_hidden_states, log_probs_without_mask, replay_logprobs
from dgr2_trl.samplers import fill_after_eos, select_commits
from dgr2_trl.samplers.block_diffusion import min_commits_per_row
from dgr2_trl.samplers.common import encode_prompts
from tests.conftest import PROMPTS, make_converted, make_model


MAX_NEW = 24


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3", "llama"])
def test_block_size_one_equals_hf_greedy_generate(tokenizer, architecture):
    model = make_model(tokenizer, architecture, seed=1)
    ids, mask = encode_prompts(tokenizer, PROMPTS)  # left-padded batch
    hf = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, ids.shape[1] :]
    converted, tok = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tokenizer), block_size=1)
    block = BlockDiffusionSampler(converted, tok).generate(PROMPTS, max_new_tokens=MAX_NEW)
    ar = ARSampler(model, tokenizer).generate(PROMPTS, max_new_tokens=MAX_NEW)
    for row in range(len(PROMPTS)):
        n = len(block.completion_ids[row])
        assert block.completion_ids[row] == hf[row, :n].tolist() == ar.completion_ids[row]
        assert n == MAX_NEW or block.completion_ids[row][-1] == tokenizer.eos_token_id
    assert len({tuple(r) for r in block.completion_ids}) > 1  # not a degenerate constant output
    assert block.forward_passes_per_token == 1.0 and block.num_forward_passes == ar.num_forward_passes


def uncached_block_log_probs(model, context, block, prompt_len, block_index, mask_id):
    """The log-probs of every token of the noisy `block` from one uncached forward of `context + block` under the
    block rule (the last clean token predicts token 0, noisy position j - 1 predicts token j)."""
    block_size = len(block)
    seq = torch.tensor([context + block])
    n_clean = len(context)
    blocks = torch.tensor(
        [
            list(range(prompt_len))
            + [prompt_len + i // block_size for i in range(n_clean - prompt_len)]
            + [prompt_len + block_index] * block_size
        ]
    )
    noisy = torch.tensor([[False] * n_clean + [True] * block_size])
    allowed = block_attention_mask(blocks, noisy, blocks, noisy, torch.ones_like(noisy))
    hidden = decoder_hidden_states(model, seq, torch.arange(seq.shape[1])[None], allowed)
    cols = [n_clean - 1] + list(range(n_clean, n_clean + block_size - 1))
    return log_probs_without_mask(model.get_output_embeddings()(hidden[0, cols]), mask_id)


def reference_block_decode(model, tokenizer, prompt, block_size, threshold, max_new, mask_id, fallback="confidence"):
    """Cache-free block decoding of one prompt: every step recomputes the whole sequence."""
    ids, _ = encode_prompts(tokenizer, [prompt])
    context = ids[0].tolist()
    prompt_len = len(context)
    out, steps = [], []
    for block_index in range(-(-max_new // block_size)):
        block = [mask_id] * block_size
        commit = [-1] * block_size
        step = 0
        while -1 in commit:
            log_probs = uncached_block_log_probs(model, context, block, prompt_len, block_index, mask_id)
            conf, cand = log_probs.max(-1)
            masked = torch.tensor([c < 0 for c in commit])[None]
            chosen = select_commits(conf.exp()[None], masked, threshold, torch.ones(1, dtype=torch.long), fallback)[0]
            for j in torch.nonzero(chosen).flatten().tolist():
                block[j], commit[j] = int(cand[j]), step
            step += 1
        context += block
        out += block
        steps += commit
    return out[:max_new], steps[:max_new]


@pytest.mark.parametrize(
    "block_size,threshold,fallback",
    [
        (4, 1.0, "confidence"),
        (4, 0.5, "confidence"),
        (32, 1.0, "confidence"),
        (32, 0.5, "confidence"),
        (4, 0.5, "leftmost"),
        (32, 0.2, "leftmost"),
    ],
)
def test_cached_decoding_equals_cache_free_recomputation(tokenizer, block_size, threshold, fallback):
    model, tok = make_converted(tokenizer, block_size=block_size, seed=2)
    sampler = BlockDiffusionSampler(model, tok, threshold=threshold, eos_token_id=[], fallback=fallback)  # no EOS
    prompts = PROMPTS[:2]
    got = sampler.generate(prompts, max_new_tokens=40)
    for row, prompt in enumerate(prompts):
        tokens, steps = reference_block_decode(
            model, tok, prompt, block_size, threshold, 40, tok.mask_token_id, fallback
        )
        assert got.completion_ids[row] == tokens
        assert got.commit_step[row] == steps


@pytest.mark.parametrize("block_size", [1, 4, 32])
def test_batched_equals_one_by_one(tokenizer, block_size, monkeypatch):
    model, tok = make_converted(tokenizer, block_size=block_size, seed=3)
    sub_batch_sizes = []  # rows that finished a block early sit out its remaining steps
    step_hidden = BlockDiffusionSampler._step_hidden

    def counting_step_hidden(self, busy, *args):
        if busy is not None:
            sub_batch_sizes.append(len(busy))
        return step_hidden(self, busy, *args)

    monkeypatch.setattr(BlockDiffusionSampler, "_step_hidden", counting_step_hidden)
    # make EOS a token the model actually emits, so rows stop at different blocks
    probe = BlockDiffusionSampler(model, tok, threshold=0.6, eos_token_id=[]).generate(PROMPTS[:1], max_new_tokens=10)
    eos = probe.completion_ids[0][7]
    sampler = BlockDiffusionSampler(model, tok, threshold=0.6, eos_token_id=eos)
    batched = sampler.generate(PROMPTS, max_new_tokens=48)
    for row, prompt in enumerate(PROMPTS):
        single = sampler.generate([prompt], max_new_tokens=48)
        assert batched.completion_ids[row] == single.completion_ids[0]
        assert batched.commit_step[row] == single.commit_step[0]
        torch.testing.assert_close(batched.logprobs[row], single.logprobs[0], rtol=0, atol=1e-9)
        assert batched.steps_per_row[row] == single.steps_per_row[0]
    lengths = [len(c) for c in batched.completion_ids]
    assert batched.completion_ids[0][-1] == eos and lengths[0] <= 8 and max(lengths) > lengths[0]
    if block_size == 32:  # the sub-batch path ran, on fewer rows than the batch
        assert sub_batch_sizes and max(sub_batch_sizes) < len(PROMPTS)


def _replay_inputs(tokenizer, prompts, out):
    ids, mask = encode_prompts(tokenizer, prompts)
    rows = [c + t for c, t in zip(out.completion_ids, out.trailing_ids)]
    steps = [s + t for s, t in zip(out.commit_step, out.trailing_commit_step)]
    width = max(len(r) for r in rows)
    completion = torch.zeros(len(rows), width, dtype=torch.long)
    completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
    commit = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, steps)):
        completion[i, : len(r)], completion_mask[i, : len(r)], commit[i, : len(s)] = (
            torch.tensor(r),
            1,
            torch.tensor(s),
        )
    return ids, mask, completion, completion_mask, commit


@pytest.mark.parametrize("block_size", [1, 4, 32])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_recorded_logprobs_equal_replay(tokenizer, block_size, temperature):
    """Training layout and KV-cached decoding compute the same function: replaying every token in its recorded
    state gives back the sampler's commit-time log-probs (the RL ratio is exactly 1)."""
    model, tok = make_converted(tokenizer, block_size=block_size, seed=4)
    probe = BlockDiffusionSampler(model, tok, eos_token_id=[]).generate(PROMPTS[:1], max_new_tokens=12)
    sampler = BlockDiffusionSampler(model, tok, threshold=0.5, eos_token_id=probe.completion_ids[0][9])
    out = sampler.generate(
        PROMPTS, max_new_tokens=37, temperature=temperature, generator=torch.Generator().manual_seed(0)
    )
    assert block_size == 1 or any(len(t) for t in out.trailing_ids)  # an EOS or the length cut left a block tail
    ids, mask, completion, completion_mask, commit = _replay_inputs(tok, PROMPTS, out)
    replayed = replay_logprobs(
        model,
        ids,
        mask,
        completion,
        completion_mask,
        commit,
        tok.mask_token_id,
        block_size,
        temperature=temperature if temperature > 0 else 1.0,
    )
    for row in range(len(PROMPTS)):
        n = len(out.completion_ids[row])
        torch.testing.assert_close(
            replayed[row, :n].double(), torch.tensor(out.logprobs[row], dtype=torch.float64), rtol=0, atol=1e-9
        )


def test_lower_threshold_commits_in_parallel_and_step_cap(tokenizer):
    model, tok = make_converted(tokenizer, block_size=8, seed=5)
    strict = BlockDiffusionSampler(model, tok, threshold=1.0, eos_token_id=[]).generate(PROMPTS, max_new_tokens=32)
    loose = BlockDiffusionSampler(model, tok, threshold=0.3, eos_token_id=[]).generate(PROMPTS, max_new_tokens=32)
    capped = BlockDiffusionSampler(model, tok, threshold=1.0, max_steps_per_block=2, eos_token_id=[]).generate(
        PROMPTS, max_new_tokens=32
    )
    assert strict.steps_per_row == [32] * len(PROMPTS)  # one token per step
    assert max(loose.steps_per_row) < 32 and loose.num_forward_passes < strict.num_forward_passes
    assert capped.steps_per_row == [8] * len(PROMPTS)  # 4 blocks x 2 steps
    assert all(max(s) <= 1 for s in capped.commit_step)


def test_select_commits_fallbacks():
    confidence = torch.tensor([[0.2, 0.95, 0.6, 0.3, 0.1], [0.5, 0.4, 0.3, 0.2, 0.1]])
    masked = torch.tensor([[True, True, True, True, True], [False, True, True, True, True]])
    one = torch.ones(2, dtype=torch.long)
    # above the threshold, plus the most confident masked position / the leftmost masked position
    assert select_commits(confidence, masked, 0.9, one).tolist() == [
        [False, True, False, False, False],
        [False, True, False, False, False],
    ]
    assert select_commits(confidence, masked, 0.9, one, "leftmost").tolist() == [
        [True, True, False, False, False],
        [False, True, False, False, False],
    ]
    assert select_commits(confidence, masked, 0.9, torch.tensor([2, 3]), "leftmost").tolist() == [
        [True, True, False, False, False],
        [False, True, True, True, False],
    ]
    assert not select_commits(confidence, torch.zeros_like(masked), 0.0, one, "leftmost").any()
    with pytest.raises(ValueError, match="fallback must be one of"):
        select_commits(confidence, masked, 0.9, one, "random")


def test_fill_after_eos_fills_only_uncommitted_positions_after_a_committed_eos():
    M, E, F = 99, 7, 8  # mask id, the first EOS id, a second EOS id
    tokens = torch.tensor(
        [
            [3, E, M, 5, M],  # EOS committed at 1: the masks after it are filled, the committed 5 stays
            [M, 4, E, M, M],  # the mask before the EOS stays a mask
            [3, M, E, M, M],  # an EOS at an uncommitted position (a candidate) fills nothing
            [F, M, M, E, M],  # any EOS id ends the row; the fill is the first id
        ]
    )
    committed = tokens != M
    committed[2, 2] = False
    filled_tokens, filled = fill_after_eos(tokens, committed, [E, F])
    assert filled.tolist() == [
        [False, False, True, False, True],
        [False, False, False, True, True],
        [False, False, False, False, False],
        [False, True, True, False, True],
    ]
    assert torch.equal(filled_tokens, torch.where(filled, E, tokens))
    same, nothing = fill_after_eos(tokens, committed, [])
    assert torch.equal(same, tokens) and not nothing.any()
    assert fill_after_eos(tokens, committed, torch.tensor([F]))[0][3].tolist() == [F, F, F, E, F]


def test_min_commits_per_row_spreads_the_masks_over_the_step_cap():
    masked = torch.tensor([[True] * 5, [True, False, False, False, False], [False] * 5])
    assert min_commits_per_row(masked, None, 0).tolist() == [1, 1, 0]
    assert min_commits_per_row(masked, 2, 0).tolist() == [3, 1, 0]  # ceil(5 / 2)
    assert min_commits_per_row(masked, 2, 1).tolist() == [5, 1, 0]  # the last allowed step commits the rest
    assert min_commits_per_row(masked, 2, 4).tolist() == [5, 1, 0]


def test_a_committed_eos_ends_its_block_in_the_same_step(tokenizer):
    """Positions after a committed EOS never wait for a later step: they are filled with EOS in the EOS's step."""
    model, tok = make_converted(tokenizer, block_size=8, seed=3)
    probe = BlockDiffusionSampler(model, tok, threshold=0.3, eos_token_id=[]).generate(PROMPTS, max_new_tokens=16)
    eos = probe.completion_ids[0][4]
    out = BlockDiffusionSampler(model, tok, threshold=0.3, eos_token_id=eos).generate(PROMPTS, max_new_tokens=16)
    assert out.completion_ids[0][-1] == eos and out.trailing_ids[0]
    eos_step = out.commit_step[0][-1]
    assert max(out.trailing_commit_step[0]) == eos_step and out.trailing_ids[0][-1] == eos
    for row, ids in enumerate(out.completion_ids):
        if ids[-1] == eos:
            assert all(step <= out.commit_step[row][-1] for step in out.trailing_commit_step[row])


def test_leftmost_fallback_decodes_left_to_right_when_nothing_is_confident(tokenizer):
    model, tok = make_converted(tokenizer, block_size=8, seed=3)
    out = BlockDiffusionSampler(model, tok, threshold=1.0, eos_token_id=[], fallback="leftmost").generate(
        PROMPTS[:2], max_new_tokens=24
    )
    for steps in out.commit_step:  # a random model is never sure: one token per step, in order
        assert steps == list(range(8)) * 3
    with pytest.raises(ValueError, match="fallback must be one of"):
        BlockDiffusionSampler(model, tok, fallback="random")


def test_chat_prompts_and_mask_token_never_emitted(tokenizer):
    model, tok = make_converted(tokenizer, block_size=4, seed=6)
    with torch.no_grad():  # make the mask token the most likely everywhere
        model.lm_head.weight[tok.mask_token_id] = model.lm_head.weight.abs().max() * 50
    messages = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    out = BlockDiffusionSampler(model, tok, threshold=0.9).generate(messages, max_new_tokens=16)
    assert all(tok.mask_token_id not in row for row in out.completion_ids)
    text = tok.apply_chat_template(messages[0], tokenize=False, add_generation_prompt=True)
    assert (
        out.completion_ids[0]
        == BlockDiffusionSampler(model, tok).generate([text], max_new_tokens=16).completion_ids[0]
    )


def test_mixed_prompt_kinds_encode_as_each_alone(tokenizer):
    chat = [{"role": "user", "content": PROMPTS[1]}]
    ids_prompt = tokenizer(PROMPTS[2], add_special_tokens=False)["input_ids"]
    prompts = [PROMPTS[0], ids_prompt, chat, PROMPTS[3]]
    ids, mask = encode_prompts(tokenizer, prompts)
    for row, prompt in enumerate(prompts):
        alone, _ = encode_prompts(tokenizer, [prompt])
        assert ids[row][mask[row].bool()].tolist() == alone[0].tolist()
    assert ids[1][mask[1].bool()].tolist() == ids_prompt
    with pytest.raises(ValueError, match="prompt 2 encodes to no tokens"):
        encode_prompts(tokenizer, ["ok", [1, 2], ""])


def test_unconverted_model_and_bad_prompts_are_refused(tokenizer):
    with pytest.raises(ValueError, match="convert it first"):
        BlockDiffusionSampler(make_model(tokenizer), tokenizer)
    model, tok = make_converted(tokenizer)
    with pytest.raises(ValueError, match="prompt 1"):
        BlockDiffusionSampler(model, tok).generate(["ok", 3.5], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ARSampler(model, tok).generate(["ok"], max_new_tokens=0)


def test_a_backend_that_ignores_4d_masks_is_refused_after_conversion(tokenizer):
    """A converted model switched to an attention backend that ignores custom 4D masks (FlashAttention-2 is the
    usual one; here a wrapper that drops the mask) would decode causally: the sampler re-probes and refuses."""
    model, tok = make_converted(tokenizer)
    BlockDiffusionSampler(model, tok)  # sdpa honours the mask
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def causal_only(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    AttentionInterface.register("causal_only_test", causal_only)
    model.set_attn_implementation("causal_only_test")
    with pytest.raises(ValueError, match="ignores a custom 4D attention mask"):
        BlockDiffusionSampler(model, tok)
    model.set_attn_implementation("sdpa")
    BlockDiffusionSampler(model, tok)


def test_sampler_arguments_and_prompts_it_cannot_read_are_refused(tokenizer):
    model, tok = make_converted(tokenizer)
    for kwargs, message in (
        (dict(threshold=1.5), "threshold"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(block_size=0), "block_size"),
        (dict(max_steps_per_block=0), "max_steps_per_block"),
        (dict(max_steps_per_block=-1), "max_steps_per_block"),
    ):
        with pytest.raises(ValueError, match=message):
            BlockDiffusionSampler(model, tok, **kwargs)
    sampler = BlockDiffusionSampler(model, tok)
    with pytest.raises(ValueError, match="threshold"):
        sampler.generate(["ok"], max_new_tokens=4, threshold=-0.1)
    vocab = model.get_input_embeddings().weight.shape[0]
    for decoder in (sampler, ARSampler(model, tok)):
        with pytest.raises(ValueError, match=f"prompt 1 holds token id {vocab}"):
            decoder.generate([[1, 2], [3, vocab]], max_new_tokens=4)
        limit = model.config.max_position_embeddings
        with pytest.raises(ValueError, match="max_position_embeddings"):
            decoder.generate([[1] * (limit - 2)], max_new_tokens=4)
    with pytest.warns(UserWarning, match="no end-of-sequence token"):
        BlockDiffusionSampler(model, tok, eos_token_id=[])
