"""Speculative decoding returns the verifier's output: token for token when greedy, in distribution when sampling."""

import collections
from dataclasses import asdict

import pytest
import torch

from dgr2_trl import ARSampler, BlockDiffusionSampler, SpeculativeSampler, UniqueTokens
from dgr2_trl.modeling import tiny_causal_lm
from dgr2_trl.modeling.conversion import CONFIG_KEY, BlockDiffusionSettings
from dgr2_trl.samplers.speculative import accepted_lengths, prefix_commits
from tests.conftest import PROMPTS, make_converted, make_model


MAX_NEW = 40
VERIFIER_SEED = 5  # a random verifier whose greedy output stops at EOS on one of PROMPTS (row 2, 9 tokens)


@pytest.fixture(scope="module")
def verifier(tokenizer):
    return make_model(tokenizer, seed=VERIFIER_SEED)


@pytest.mark.parametrize("block_size", [1, 4, 32])
@pytest.mark.parametrize("self_speculative", [False, True])
@pytest.mark.parametrize(("threshold", "fallback", "max_steps"), [(0.9, "confidence", 3), (0.3, "leftmost", None)])
def test_greedy_equals_the_verifiers_greedy_batched_and_one_by_one(
    tokenizer, verifier, block_size, self_speculative, threshold, fallback, max_steps
):
    drafter, tok = make_converted(tokenizer, block_size=block_size, seed=0)
    target = drafter if self_speculative else verifier
    expected = ARSampler(target, tok).generate(PROMPTS, max_new_tokens=MAX_NEW)
    lengths = [len(ids) for ids in expected.completion_ids]
    assert min(lengths) < MAX_NEW == max(lengths)  # rows stop at EOS at different times (left-padded batch)
    sampler = SpeculativeSampler(
        drafter,
        tok,
        verifier=None if self_speculative else verifier,
        threshold=threshold,
        fallback=fallback,
        max_steps_per_block=max_steps,
    )
    out = sampler.generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert out.completion_ids == expected.completion_ids
    assert out.texts == expected.texts
    for row, prompt in enumerate(PROMPTS):
        assert sampler.generate([prompt], max_new_tokens=MAX_NEW).completion_ids[0] == expected.completion_ids[row]
    # the reported log-probs are the verifier's
    for got, want in zip(out.logprobs, expected.logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-9)
    assert out.num_forward_passes == out.drafter_passes + out.verifier_passes
    assert out.num_prefill_passes == (1 if self_speculative else 2)
    for row, ids in enumerate(out.completion_ids):
        # every verification yields its kept drafts plus one token of the verifier's
        assert sum(a + 1 for a in out.accepted_per_round[row]) + 1 >= len(ids)
    if block_size == 1:
        assert out.drafter_passes == 0 and out.mean_accepted_tokens == 0


@pytest.mark.parametrize("block_size", [1, 4, 32])
@pytest.mark.parametrize("threshold", [0.9, 0.0])
def test_fused_next_draft_keeps_the_verifiers_greedy_output_with_fewer_calls(tokenizer, block_size, threshold):
    drafter, tok = make_converted(tokenizer, block_size=block_size, seed=0)
    expected = ARSampler(drafter, tok).generate(PROMPTS, max_new_tokens=MAX_NEW)
    plain = SpeculativeSampler(drafter, tok, threshold=threshold).generate(PROMPTS, max_new_tokens=MAX_NEW)
    sampler = SpeculativeSampler(drafter, tok, threshold=threshold, fuse_next_draft=True)
    fused = sampler.generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert fused.completion_ids == expected.completion_ids
    for got, want in zip(fused.logprobs, expected.logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-9)
    one_by_one = [sampler.generate([prompt], max_new_tokens=MAX_NEW) for prompt in PROMPTS]
    assert [out.completion_ids[0] for out in one_by_one] == expected.completion_ids
    assert fused.num_prefill_passes == 1 and fused.num_forward_passes == fused.drafter_passes + fused.verifier_passes
    # sampling never fuses (the acceptance rule needs each draft's commit-time distribution), but it runs on the
    # shared cache: the same seed gives the same sample as with separate caches
    sampled = [
        s.generate(PROMPTS, max_new_tokens=MAX_NEW, temperature=1.0, generator=torch.Generator().manual_seed(3))
        for s in (sampler, SpeculativeSampler(drafter, tok, threshold=threshold))
    ]
    assert sampled[0].completion_ids == sampled[1].completion_ids and sampled[0].fused_passes == 0
    if block_size == 1:
        assert fused.fused_passes == fused.drafter_passes == plain.drafter_passes == 0
        return
    # without fusion every round drafts at least once; a kept fused step is a round's first drafting step
    assert plain.drafter_passes >= plain.verifier_passes
    assert sum(o.fused_kept for o in one_by_one) > 0
    if threshold == 0.0:
        # the kept step commits the whole next block, so that round makes no drafter call at all
        assert sum(o.drafter_passes for o in one_by_one) < sum(o.verifier_passes for o in one_by_one)


def test_fused_step_sees_the_finished_block_under_the_block_rule(tokenizer, monkeypatch):
    """The fused step's log-probs equal an uncached block-rule forward of [prompt, finished blocks, masked block]."""
    from dgr2_trl.modeling.forward import forward_logits
    from dgr2_trl.modeling.masks import block_attention_mask
    from dgr2_trl.samplers import speculative_rows

    size = 4
    drafter, tok = make_converted(tokenizer, block_size=size, seed=0)
    seen = []
    original = speculative_rows._Rows._predraft

    def record(self, next_draft):
        for entry, row in enumerate(self.rows.tolist()):
            if next_draft.kept_block[entry]:
                # the verifier's own token (just appended) opens the next block
                seen.append((prompts[row], list(self.tokens[row][:-1]), next_draft.log_probs[entry].clone()))
        original(self, next_draft)

    monkeypatch.setattr(speculative_rows._Rows, "_predraft", record)
    sampler = SpeculativeSampler(drafter, tok, threshold=0.0, fuse_next_draft=True)
    for prompts in [PROMPTS] + [[p] for p in PROMPTS]:  # batched (once the other rows have stopped) and one by one
        sampler.generate(prompts, max_new_tokens=MAX_NEW)
    assert seen
    mask_id = sampler.mask_token_id
    for text, completion, log_probs in seen:
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        assert len(completion) % size == 0  # the fused step follows whole blocks
        ids = torch.tensor([prompt + completion + [mask_id] * size])
        n_prompt, n_done = len(prompt), len(completion)
        blocks = torch.tensor([list(range(n_prompt)) + [n_prompt + i // size for i in range(n_done + size)]])
        noisy = torch.tensor([[False] * (n_prompt + n_done) + [True] * size])
        allowed = block_attention_mask(blocks, noisy, blocks, noisy, torch.ones_like(noisy))
        columns = torch.arange(n_prompt + n_done, n_prompt + n_done + size - 1)
        logits = forward_logits(drafter, ids, torch.arange(ids.shape[1])[None], allowed, columns)
        logits[..., mask_id] = float("-inf")
        torch.testing.assert_close(log_probs, logits[0].log_softmax(-1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("block_size", [1, 4, 32])
@pytest.mark.parametrize(("self_speculative", "slots"), [(False, False), (True, False), (False, True)])
def test_constrained_greedy_equals_the_verifiers_constrained_greedy(
    tokenizer, verifier, block_size, self_speculative, slots
):
    """With a `UniqueTokens` constraint the output is `ARSampler(verifier, constraint)`'s, batched and one by one,
    rows stopping at EOS at different times; the constraint binds (the free output differs)."""
    from tests.test_constraints import binding_constraint, repeats_in_span, slot_constraint

    drafter, tok = make_converted(tokenizer, block_size=block_size, seed=0)
    target = drafter if self_speculative else verifier
    free = ARSampler(target, tok).generate(PROMPTS, max_new_tokens=MAX_NEW)
    constraint = (slot_constraint if slots else binding_constraint)(free.completion_ids)
    expected = ARSampler(target, tok, constraint=constraint).generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert expected.completion_ids != free.completion_ids
    assert min(len(ids) for ids in expected.completion_ids) < MAX_NEW
    sampler = SpeculativeSampler(
        drafter, tok, verifier=None if self_speculative else verifier, threshold=0.5, constraint=constraint
    )
    out = sampler.generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert out.completion_ids == expected.completion_ids
    for got, want in zip(out.logprobs, expected.logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-9)
    for row, prompt in enumerate(PROMPTS):
        assert repeats_in_span(constraint, out.completion_ids[row]) == 0
        assert sampler.generate([prompt], max_new_tokens=MAX_NEW).completion_ids[0] == expected.completion_ids[row]
    if self_speculative and block_size > 1:  # the fused verification and causal-context drafts keep it too
        fused = SpeculativeSampler(drafter, tok, threshold=0.0, fuse_next_draft=True, constraint=constraint)
        assert fused.generate(PROMPTS, max_new_tokens=MAX_NEW).completion_ids == expected.completion_ids
        causal = SpeculativeSampler(drafter, tok, threshold=0.0, draft_context="causal", constraint=constraint)
        assert causal.generate(PROMPTS, max_new_tokens=MAX_NEW).completion_ids == expected.completion_ids
    with pytest.raises(TypeError, match="UniqueTokens"):
        SpeculativeSampler(drafter, tok, constraint={"ids": [1, 2]})


@pytest.mark.parametrize("slots", [False, True])
def test_constrained_verification_judges_each_draft_after_the_drafts_before_it(
    tokenizer, verifier, monkeypatch, slots
):
    """Scripted drafts make every verification judge long runs: drafting the verifier's *free* output (which repeats
    a constrained id inside one block) must still give the constrained output, since a draft is judged under the
    constraint as it stands after the drafts before it; drafting the constrained output itself is accepted whole."""
    from dgr2_trl.samplers.speculative_rows import _Drafts
    from tests.test_constraints import binding_constraint, slot_constraint

    drafter, tok = make_converted(tokenizer, block_size=8, seed=0)
    free = ARSampler(verifier, tok).generate(PROMPTS, max_new_tokens=MAX_NEW).completion_ids
    constraint = (slot_constraint if slots else binding_constraint)(free)
    expected = ARSampler(verifier, tok, constraint=constraint).generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert expected.completion_ids != free

    def scripted(script):
        def draft(self, rows, temperature, generator):
            block, count = rows.block.clone(), torch.zeros_like(rows.fixed)
            for entry, row in enumerate(rows.rows.tolist()):
                start, fixed, budget = int(rows.produced[entry]), int(rows.fixed[entry]), int(rows.budget[entry])
                tokens = script[row][start : start + budget]
                block[entry, fixed : fixed + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                count[entry] = len(tokens)
            return _Drafts(block=block, count=count, q_log=None)

        return draft

    sampler = SpeculativeSampler(drafter, tok, verifier=verifier, constraint=constraint)
    for script, whole in ((free, False), (expected.completion_ids, True)):
        monkeypatch.setattr(SpeculativeSampler, "_draft", scripted(script))
        out = sampler.generate(PROMPTS, max_new_tokens=MAX_NEW)
        assert out.completion_ids == expected.completion_ids
        rounds = [a for row in out.accepted_per_round for a in row]
        assert (min(rounds) if whole else max(rounds)) >= 3  # runs of drafts judged in one verification


def test_fuse_next_draft_needs_self_speculation(tokenizer, verifier):
    drafter, tok = make_converted(tokenizer, block_size=4)
    with pytest.raises(ValueError, match="fuse_next_draft.*verifier=None"):
        SpeculativeSampler(drafter, tok, verifier=verifier, fuse_next_draft=True)


def test_prefix_commits_are_left_to_right_runs():
    todo = torch.tensor([[False, True, True, True, True], [True, True, True, False, False]])
    confidence = torch.tensor([[0.0, 0.2, 0.95, 0.99, 0.1], [0.99, 0.1, 0.99, 0.99, 0.99]])
    commit = prefix_commits(confidence, todo, 0.9, torch.tensor([1, 1]))
    # row 0: the leftmost undecided position, then the confident run after it, stopping at the first unsure one
    assert commit.tolist() == [[False, True, True, True, False], [True, False, False, False, False]]
    # never a position to the right of one left undecided, whatever its confidence
    commit = prefix_commits(
        torch.tensor([[0.1, 0.1, 0.99]]), torch.ones(1, 3, dtype=torch.bool), 0.9, torch.tensor([1])
    )
    assert commit.tolist() == [[True, False, False]]
    two = prefix_commits(torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool), 0.9, torch.tensor([2]))
    assert two.tolist() == [[True, True, False, False]]


def test_accepted_lengths_stop_at_the_first_disagreement_and_the_draft_end():
    agree = torch.tensor([[True, True, False, True], [True, True, True, True], [False, True, True, True]])
    assert accepted_lengths(agree, torch.tensor([4, 3, 4])).tolist() == [2, 3, 0]


def test_refuses_an_unconverted_drafter_and_a_larger_verifier_vocabulary(tokenizer, verifier):
    with pytest.raises(ValueError, match="not a block-diffusion model"):
        SpeculativeSampler(verifier, tokenizer)
    drafter, tok = make_converted(tokenizer, block_size=4)
    bigger = tiny_causal_lm(len(tokenizer) + 9, dtype=torch.float64)
    with pytest.raises(ValueError, match="vocabulary"):
        SpeculativeSampler(drafter, tok, verifier=bigger)
    with pytest.raises(ValueError, match="block_size"):
        SpeculativeSampler(drafter, tok, block_size=0)


# -- sampling: the output distribution is the verifier's --------------------------------------------------------------

VOCAB, EOS, MASK = 4, 3, 4  # tokens 0..2, EOS 3, and the drafter's mask token 4


class _IdTokenizer:
    """Just what the samplers need for prompts given as token ids."""

    pad_token_id = EOS
    eos_token_id = EOS

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, r)) for r in rows]


def _tiny_vocab_models():
    drafter = tiny_causal_lm(VOCAB + 1, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=32, dtype=torch.float64, seed=1, initializer_range=0.6)  # fmt: skip
    setattr(drafter.config, CONFIG_KEY, asdict(BlockDiffusionSettings(4, MASK, "<mask>")))
    verifier = tiny_causal_lm(VOCAB, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                              intermediate_size=32, dtype=torch.float64, seed=2, initializer_range=0.6)  # fmt: skip
    return drafter, verifier


def _exact_distribution(model, prompt, length, unique_ids=()):
    """Every completion of at most `length` tokens (stopping at EOS) with its probability under `model`; with
    `unique_ids`, under `UniqueTokens(unique_ids)` written out in plain Python (a used id's mass goes to the unused
    ones; completions that repeat one have probability 0 and are left out)."""
    from tests.test_constraints import reference_ban

    dist = {}

    def extend(prefix, prob):
        if len(prefix) == length or (prefix and prefix[-1] == EOS):
            if prob > 0:
                dist[tuple(prefix)] = prob
            return
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([prompt + prefix])).logits[0, -1, :VOCAB].double(), -1)
        if unique_ids:
            log_probs = reference_ban(log_probs, set(prefix) & set(unique_ids), unique_ids)
        for token, p in enumerate(log_probs.exp().tolist()):
            extend([*prefix, token], prob * p)

    extend([], 1.0)
    return dist


@pytest.mark.parametrize("block_size", [1, 4, 32])
@pytest.mark.parametrize(("threshold", "fallback", "max_steps"), [(0.9, "confidence", 3), (0.3, "leftmost", None)])
def test_causal_drafts_keep_the_verifiers_greedy_output(tokenizer, block_size, threshold, fallback, max_steps):
    drafter, tok = make_converted(tokenizer, block_size=block_size, seed=0)
    expected = ARSampler(drafter, tok).generate(PROMPTS, max_new_tokens=MAX_NEW)
    sampler = SpeculativeSampler(
        drafter, tok, threshold=threshold, fallback=fallback, max_steps_per_block=max_steps, draft_context="causal"
    )
    out = sampler.generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert out.completion_ids == expected.completion_ids
    for got, want in zip(out.logprobs, expected.logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-9)
    for row, prompt in enumerate(PROMPTS):
        assert sampler.generate([prompt], max_new_tokens=MAX_NEW).completion_ids[0] == expected.completion_ids[row]
    assert out.num_prefill_passes == 1
    if block_size > 1:
        assert out.drafter_passes >= out.verifier_passes  # every round drafts


def test_causal_drafts_read_kept_tokens_causally_and_the_block_under_the_block_rule(tokenizer, monkeypatch):
    """A causal-context drafter call's log-probs equal an uncached forward of [prompt, kept tokens] causally and
    [the verifier's last token (when inside the block), the undecided rest of the block] as one noisy block."""
    from dgr2_trl.modeling.forward import forward_logits
    from dgr2_trl.modeling.masks import block_attention_mask

    size = 4
    drafter, tok = make_converted(tokenizer, block_size=size, seed=0)
    sampler = SpeculativeSampler(drafter, tok, threshold=0.0, draft_context="causal")
    seen = []
    original = SpeculativeSampler._drafter_log_probs_causal

    def record(self, rows, block, temperature):
        log_probs = original(self, rows, block, temperature)
        for entry, row in enumerate(rows.rows.tolist()):
            fixed = int(rows.fixed[entry])
            seen.append(
                (prompts[row], list(rows.tokens[row]), block[entry, fixed:].tolist(), log_probs[entry, fixed:])
            )
        return log_probs

    monkeypatch.setattr(SpeculativeSampler, "_drafter_log_probs_causal", record)
    for prompts in [PROMPTS] + [[p] for p in PROMPTS]:
        sampler.generate(prompts, max_new_tokens=MAX_NEW)
    assert len(seen) > 20
    in_block = 0
    for text, kept, rest, log_probs in seen:
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + kept + rest])
        n_context = len(prompt) + len(kept) - 1  # every token before the verifier's last one: causal
        last_in_block = len(rest) < size  # the last token sits at the block offset before `rest`
        in_block += last_in_block
        blocks = list(range(n_context)) + [n_context] * (1 + len(rest))
        noisy = [False] * n_context + [last_in_block] + [True] * len(rest)
        blocks, noisy = torch.tensor([blocks]), torch.tensor([noisy])
        if not last_in_block:  # it ended the previous block: clean, below the masked block
            blocks[0, n_context + 1 :] += 1
        allowed = block_attention_mask(blocks, noisy, blocks, noisy, torch.ones_like(noisy))
        columns = torch.arange(n_context, n_context + len(rest))
        logits = forward_logits(drafter, ids, torch.arange(ids.shape[1])[None], allowed, columns)
        logits[..., sampler.mask_token_id] = float("-inf")
        torch.testing.assert_close(log_probs, logits[0].log_softmax(-1), rtol=0, atol=1e-9)
    assert 0 < in_block < len(seen)  # both cases: the last token inside the block and ending the previous one


def test_causal_drafts_need_self_speculation_without_fusion(tokenizer, verifier):
    drafter, tok = make_converted(tokenizer, block_size=4, seed=0)
    with pytest.raises(ValueError, match="draft_context='causal'.*verifier=None"):
        SpeculativeSampler(drafter, tok, verifier=verifier, draft_context="causal")
    with pytest.raises(ValueError, match="fuse_next_draft=False"):
        SpeculativeSampler(drafter, tok, fuse_next_draft=True, draft_context="causal")
    with pytest.raises(ValueError, match="draft_context must be one of"):
        SpeculativeSampler(drafter, tok, draft_context="bidirectional")


def _chi_square(counts, dist, n):
    assert set(counts) <= set(dist)
    return sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in dist.items())


def test_sampled_completions_follow_the_verifiers_distribution():
    """Chi-square of 40,000 sampled 3-token completions (40 outcomes) against the verifier's exact distribution.
    The bound (99.9% quantile for 39 degrees of freedom) is far below what the drafter's own distribution scores,
    so a rule that kept biased drafts would fail it."""
    drafter, verifier = _tiny_vocab_models()
    prompt, n, length = [0, 1, 2, 0], 40_000, 3
    dist = _exact_distribution(verifier, prompt, length)
    assert len(dist) == 40 and abs(sum(dist.values()) - 1) < 1e-12
    bound = 72.1  # scipy.stats.chi2.ppf(0.999, 39)
    tok = _IdTokenizer()
    for threshold in (0.0, 0.5):  # 0.0: drafts whole blocks in one pass, in parallel
        sampler = SpeculativeSampler(drafter, tok, verifier=verifier, threshold=threshold)
        out = sampler.generate([prompt] * n, max_new_tokens=length, temperature=1.0,
                               generator=torch.Generator().manual_seed(int(threshold * 10)))  # fmt: skip
        counts = collections.Counter(tuple(ids) for ids in out.completion_ids)
        assert _chi_square(counts, dist, n) < bound, threshold
        assert out.mean_accepted_tokens > 0.2  # drafts are kept often enough to be tested
    drafter_only = BlockDiffusionSampler(drafter, tok, threshold=0.0).generate(
        [prompt] * n, max_new_tokens=length, temperature=1.0, generator=torch.Generator().manual_seed(0)
    )
    biased = collections.Counter(tuple(ids) for ids in drafter_only.completion_ids)
    assert _chi_square(biased, dist, n) > 20 * bound


def test_sampled_causal_drafts_follow_the_drafters_own_ar_distribution():
    """Self-speculation with `draft_context="causal"` at temperature 1: the drafts see a context the drafter was
    not trained on, and the completions still follow its own AR distribution (chi-square as above)."""
    drafter, _ = _tiny_vocab_models()
    prompt, n, length = [0, 1, 2, 0], 40_000, 3
    dist = _exact_distribution(drafter, prompt, length)
    sampler = SpeculativeSampler(drafter, _IdTokenizer(), threshold=0.0, draft_context="causal")
    out = sampler.generate([prompt] * n, max_new_tokens=length, temperature=1.0,
                           generator=torch.Generator().manual_seed(4))  # fmt: skip
    counts = collections.Counter(tuple(ids) for ids in out.completion_ids)
    assert _chi_square(counts, dist, n) < 72.1  # scipy.stats.chi2.ppf(0.999, 39)
    assert out.mean_accepted_tokens > 0.2


def test_constrained_sampled_completions_follow_the_verifiers_constrained_distribution():
    """As above with `UniqueTokens((0, 1))`: 24 completions keep probability; the bound is the 99.9% quantile for 23
    degrees of freedom. The free verifier puts a fifth of its mass or more on the banned completions."""
    drafter, verifier = _tiny_vocab_models()
    prompt, n, length, ids = [0, 1, 2, 0], 40_000, 3, (0, 1)
    dist = _exact_distribution(verifier, prompt, length, unique_ids=ids)
    assert len(dist) == 24 and abs(sum(dist.values()) - 1) < 1e-12
    free = _exact_distribution(verifier, prompt, length)
    assert sum(p for k, p in free.items() if k not in dist) > 0.2
    sampler = SpeculativeSampler(
        drafter, _IdTokenizer(), verifier=verifier, threshold=0.0, constraint=UniqueTokens(ids)
    )
    out = sampler.generate([prompt] * n, max_new_tokens=length, temperature=1.0,
                           generator=torch.Generator().manual_seed(3))  # fmt: skip
    counts = collections.Counter(tuple(ids) for ids in out.completion_ids)
    assert _chi_square(counts, dist, n) < 49.73  # scipy.stats.chi2.ppf(0.999, 23)
    assert out.mean_accepted_tokens > 0.2
