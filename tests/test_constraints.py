import collections
import copy

import pytest
import torch

from dgr2_trl import ARSampler, BlockDiffusionSampler, UniqueTokens, convert_to_block_diffusion
from dgr2_trl.samplers import select_commits
from dgr2_trl.samplers.common import encode_prompts
from tests.conftest import PROMPTS, make_converted, make_model
from tests.test_samplers import uncached_block_log_probs


MARK = (7, 8)  # a two-token start marker
IDS = (20, 21, 22)


def state(rows, known=None):
    tokens = torch.tensor(rows)
    known = torch.ones_like(tokens, dtype=torch.bool) if known is None else torch.tensor(known)
    return UniqueTokens(IDS, MARK).span_state(tokens, known)


# ------------------------------------------------------------------------------------------------ pure functions
def test_span_starts_after_the_first_fully_written_marker_and_counts_only_ids_inside():
    in_span, used = state([[20, 7, 8, 21, 5, 7, 8, 22]])
    assert in_span[0].tolist() == [False, False, False, True, True, True, True, True]
    assert used[0].tolist() == [False, True, True]  # 20 sits before the marker: free
    # a marker with a masked token does not open the span; an id after it is not counted
    in_span, used = state([[20, 7, 8, 21]], known=[[True, True, False, True]])
    assert not in_span.any() and not used.any()
    # no marker at all: nothing is constrained
    in_span, used = state([[20, 20, 21]])
    assert not in_span.any() and not used.any()
    # an empty marker: the whole completion is the span
    in_span, used = UniqueTokens(IDS).span_state(torch.tensor([[20, 5]]), torch.tensor([[True, False]]))
    assert in_span.all() and used[0].tolist() == [True, False, False]


def test_ban_moves_the_used_ids_mass_to_the_unused_ids():
    log_probs = torch.log_softmax(torch.randn(3, 30, dtype=torch.float64), -1)
    used = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    banned = UniqueTokens(IDS).ban(log_probs, used)
    p, q = log_probs.exp(), banned.exp()
    assert torch.isinf(banned[0, [20, 22]]).all()
    torch.testing.assert_close(q[0, 21], p[0, 20:23].sum())  # the one unused id takes the ids' whole mass
    others = [t for t in range(30) if t not in IDS]
    torch.testing.assert_close(banned[0, others], log_probs[0, others])  # the other tokens keep theirs
    torch.testing.assert_close(q.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(banned[1], log_probs[1])
    # every id used: the other tokens are renormalised
    assert torch.isinf(banned[2, list(IDS)]).all()
    torch.testing.assert_close(q[2, others], p[2, others] / p[2, others].sum())
    # a row with nothing else left keeps its distribution rather than becoming all -inf
    only_ids = torch.full((1, 30), float("-inf"), dtype=torch.float64)
    only_ids[0, 20] = 0.0
    assert torch.equal(UniqueTokens(IDS).ban(only_ids, torch.tensor([[True, False, False]])), only_ids)


def reference_ban(log_probs, used, ids):
    """`UniqueTokens.ban` for one position in plain Python: the used ids' mass to the unused ids."""
    p = log_probs.exp().tolist()
    unused = [t for t in ids if t not in used]
    ids_mass, unused_mass = sum(p[t] for t in ids), sum(p[t] for t in unused)
    for t in used:
        p[t] = 0.0
    if unused_mass > 0:
        for t in unused:
            p[t] *= ids_mass / unused_mass
    else:
        p = [x / sum(p) for x in p]
    return torch.tensor(p, dtype=log_probs.dtype).log()


def reference_slot_ban(log_probs, used, ids):
    """`UniqueTokens.ban` at an id slot in plain Python: only the unused ids, renormalised among themselves."""
    p = log_probs.exp().tolist()
    unused = [t for t in ids if t not in used]
    mass = sum(p[t] for t in unused)
    if mass == 0:
        return reference_ban(log_probs, used, ids)
    q = [0.0] * len(p)
    for t in unused:
        q[t] = p[t] / mass
    return torch.tensor(q, dtype=log_probs.dtype).log()


def reference_is_slot(tokens, known, start, p, constraint):
    """Whether span position `p` may only hold an id: the span's first, after a written separator, or before a
    written separator or end token."""
    sep = constraint.separator_id
    if sep is None or start is None or p < start:
        return False
    closing = {sep, constraint.end_id} - {None}
    after_sep = p - 1 >= start and known[p - 1] and tokens[p - 1] == sep
    before_closing = p + 1 < len(tokens) and known[p + 1] and tokens[p + 1] in closing
    return p == start or after_sep or before_closing


def reference_empty_slot_drops(tokens, known, new, start, constraint):
    """The positions of `new` commits that `UniqueTokens.drop_empty_slots` drops, in plain Python: for each pair
    of written neighbours that leaves a slot empty, the pair's new token (the right one when both are)."""
    sep, ids, drops = constraint.separator_id, set(constraint.token_ids), set()
    if sep is None or start is None:
        return drops
    for q in range(start, len(tokens)):
        if not known[q]:
            continue
        opens = q == start or (q - 1 >= start and known[q - 1] and tokens[q - 1] == sep)
        left_non_id = q >= 1 and known[q - 1] and tokens[q - 1] not in ids
        if (opens and tokens[q] not in ids) or (tokens[q] in {sep, constraint.end_id} - {None} and left_non_id):
            if new[q]:
                drops.add(q)
            elif q - 1 >= start and new[q - 1]:
                drops.add(q - 1)
    return drops


def test_drop_repeats_keeps_the_most_confident_of_a_step_and_never_a_written_id():
    constraint = UniqueTokens(IDS, MARK)
    tokens = torch.tensor([[7, 8, 21, 20, 20, 21, 5, 20]])
    known = torch.tensor([[True, True, True, False, False, False, False, False]])
    commit = torch.tensor([[False, False, False, True, True, True, True, False]])
    confidence = torch.tensor([[0.0, 0.0, 0.0, 0.6, 0.9, 0.99, 0.5, 0.0]], dtype=torch.float64)
    kept = constraint.drop_repeats(tokens, known, commit, confidence)
    # 20 twice in one step: the more confident (position 4) stays; 21 is already written at 2: dropped
    assert kept[0].tolist() == [False, False, False, False, True, False, True, False]
    # log-probs rank the same way (all below any filler a probability scale would use)
    assert torch.equal(constraint.drop_repeats(tokens, known, commit, (confidence + 1e-9).log() - 5.0), kept)
    # ties go to the earlier position
    kept = constraint.drop_repeats(tokens, known, commit, torch.zeros_like(confidence))
    assert kept[0, 3] and not kept[0, 4]
    # a marker committed in the same step opens the span for the commits after it
    tokens = torch.tensor([[20, 7, 8, 20, 20]])
    known = torch.tensor([[True, False, False, False, False]])
    commit = torch.tensor([[False, True, True, True, True]])
    kept = constraint.drop_repeats(tokens, known, commit, torch.tensor([[0.0, 1, 1, 0.2, 0.7]], dtype=torch.float64))
    assert kept[0].tolist() == [False, True, True, False, True]  # 20 before the marker does not count


SEP, END = 30, 31  # `","` and `"]}`
SLOTS = UniqueTokens(IDS, MARK, SEP, END)


def test_id_slots_are_after_the_marker_or_a_separator_and_before_a_separator_or_the_end():
    #          marker  id  sep  ?   ?  sep  ?   ?   end
    tokens = torch.tensor([[7, 8, 20, SEP, 0, 0, SEP, 0, 0, END]])
    known = torch.tensor([[1, 1, 1, 1, 0, 0, 1, 0, 0, 1]]).bool()
    in_span, _ = SLOTS.span_state(tokens, known)
    slots = SLOTS.id_slots(tokens, known, in_span)
    # 2: first of the span; 4: after a separator; 5: before one; 7: after one; 8: before the end; the separators
    # and the end are no slots
    assert slots[0].tolist() == [False, False, True, False, True, True, False, True, True, False]
    # a masked separator makes no slot; without a separator_id nothing is a slot
    known[0, 3] = False
    assert not SLOTS.id_slots(tokens, known, in_span)[0, 4]
    assert not UniqueTokens(IDS, MARK).id_slots(tokens, known, in_span).any()
    with pytest.raises(ValueError, match="one of the ids"):
        UniqueTokens(IDS, MARK, separator_id=20)
    with pytest.raises(ValueError, match="needs a separator_id"):
        UniqueTokens(IDS, MARK, end_id=END)


def test_ban_in_an_id_slot_keeps_only_the_unused_ids():
    log_probs = torch.log_softmax(torch.randn(3, 40, dtype=torch.float64), -1)
    used = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    slot = torch.tensor([True, False, True])
    banned = SLOTS.ban(log_probs, used, slot)
    p, q = log_probs.exp(), banned.exp()
    others = [t for t in range(40) if t not in (21, 22)]
    assert torch.isinf(banned[0, others]).all()
    torch.testing.assert_close(q[0, [21, 22]], p[0, [21, 22]] / p[0, [21, 22]].sum())
    torch.testing.assert_close(banned[1], log_probs[1])  # not a slot, nothing used: unchanged
    # a slot with every id used has nothing to choose among: the plain ban (the other tokens renormalised)
    torch.testing.assert_close(banned[2], SLOTS.ban(log_probs[2:], used[2:]).squeeze(0))


def test_drop_empty_slots_drops_the_new_token_of_each_empty_slot():
    def kept(tokens, known, commit):
        out = SLOTS.drop_empty_slots(
            torch.tensor([tokens]), torch.tensor([known]).bool(), torch.tensor([commit]).bool()
        )
        return out[0].tolist()

    # two separators committed side by side: the right one goes (it is then an id slot, after a written separator)
    assert kept([7, 8, 20, SEP, SEP, 21], [1, 1, 1, 0, 0, 1], [0, 0, 0, 1, 1, 0]) == [0, 0, 0, 1, 0, 0]
    # a new separator right after a written one, and one right before: each dropped
    assert kept([7, 8, 20, SEP, SEP, 21], [1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 1, 0]) == [0] * 6
    assert kept([7, 8, 20, SEP, SEP, 21], [1, 1, 1, 0, 1, 1], [0, 0, 0, 1, 0, 0]) == [0] * 6
    # a separator or end straight after the marker, or a non-id there: an empty first slot
    assert kept([7, 8, SEP, 21], [1, 1, 0, 1], [0, 0, 1, 0]) == [0] * 4
    assert kept([7, 8, 5, 21], [1, 1, 0, 1], [0, 0, 1, 0]) == [0] * 4
    assert kept([7, 8, END], [1, 1, 0], [0, 0, 1]) == [0] * 3
    # a proper list, committed all at once, is kept whole; the end after a separator is not
    assert kept([7, 8, 20, SEP, 21, END], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1]) == [0, 0, 1, 1, 1, 1]
    assert kept([7, 8, 20, SEP, END], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]) == [0] * 5
    # outside the span (before the marker) separators may repeat
    assert kept([SEP, SEP, 7, 8, 20], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]) == [1, 1, 0, 0, 0]
    # without a separator_id every commit is kept
    commit = torch.ones(1, 4, dtype=torch.bool)
    assert UniqueTokens(IDS, MARK).drop_empty_slots(torch.tensor([[7, 8, SEP, SEP]]), ~commit, commit).all()


SHAPE = UniqueTokens(IDS, (6, 7, 8), SEP, END, answer_format=True)  # a three-token marker, as `{"` `ranking` `":["`


def test_answer_format_forces_the_marker_and_a_separator_after_each_id():
    tokens = torch.tensor([[6, 7, 8, 20, 5, 21, SEP, 6, 9]])
    known = torch.ones_like(tokens, dtype=torch.bool)
    in_span, _ = SHAPE.span_state(tokens, known)
    forced, closing = SHAPE.format_rule(tokens, known, in_span)
    # before the span: after 6 comes 7, after 6 7 comes 8; inside it nothing is forced (the 6 at 7 forces nothing)
    assert forced[0].tolist() == [-1, 7, 8, -1, -1, -1, -1, -1, -1]
    # inside the span, the position after a written id may only close its slot
    assert closing[0].tolist() == [False, False, False, False, True, False, True, False, False]
    # a masked token makes no rule: 6 unknown forces nothing after it
    forced, _ = SHAPE.format_rule(tokens, known & (torch.arange(9) != 0), in_span)
    assert forced[0, 1] == -1
    assert UniqueTokens(IDS, (6, 7, 8), SEP, END).format_rule(tokens, known, in_span) is None
    with pytest.raises(ValueError, match="answer_format needs"):
        UniqueTokens(IDS, (), SEP, END, answer_format=True)


def test_keep_format_keeps_only_the_forced_or_the_closing_tokens():
    log_probs = torch.log_softmax(torch.randn(3, 40, dtype=torch.float64), -1)
    out = SHAPE.keep_format(log_probs, torch.tensor([7, -1, -1]), torch.tensor([False, True, False]))
    assert out[0, 7] == 0.0 and torch.isinf(out[0, [t for t in range(40) if t != 7]]).all()
    p = log_probs[1].exp()
    torch.testing.assert_close(out[1, [SEP, END]].exp(), p[[SEP, END]] / p[[SEP, END]].sum())
    assert torch.isinf(out[1, list(IDS)]).all()
    assert torch.equal(out[2], log_probs[2])
    # no mass on what the rule allows: the row is left as it was
    none = log_probs.clone()
    none[0, 7] = float("-inf")
    assert torch.equal(SHAPE.keep_format(none[:1], torch.tensor([7]), torch.tensor([False])), none[:1])


def test_drop_format_conflicts_drops_the_new_token_that_breaks_the_shape():
    def kept(tokens, known, commit):
        out = SHAPE.drop_format_conflicts(
            torch.tensor([tokens]), torch.tensor([known]).bool(), torch.tensor([commit]).bool()
        )
        return out[0].tolist()

    # `{"rankingranking`: the second token after the marker's start is not the marker's: the new one goes
    assert kept([6, 7, 7, 20], [1, 0, 0, 0], [0, 1, 1, 1]) == [0, 1, 0, 1]
    # two ids side by side in the span (`"[10][3]"`), committed in one step: the right one goes
    assert kept([6, 7, 8, 20, 21, SEP], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]) == [0, 0, 0, 1, 0, 1]
    # a new id left of a written one: the new one goes
    assert kept([6, 7, 8, 20, 21, SEP], [1, 1, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]) == [0] * 6
    # a proper answer committed at once is kept whole
    assert kept([6, 7, 8, 20, SEP, 21, END], [0] * 7, [1] * 7) == [1] * 7
    # without answer_format every commit is kept
    commit = torch.ones(1, 4, dtype=torch.bool)
    assert SLOTS.drop_format_conflicts(torch.tensor([[6, 7, 7, 20]]), ~commit, commit).all()


def shape_broken(constraint, row) -> int:
    """How often a completion breaks `answer_format`: a marker left unfinished for another token, or an id followed
    by something else than a separator or the end token inside the span."""
    tokens = torch.tensor([row])
    known = torch.ones_like(tokens, dtype=torch.bool)
    in_span, _ = constraint.span_state(tokens, known)
    forced, closing = constraint.format_rule(tokens, known, in_span)
    closes = (tokens == constraint.separator_id) | (tokens == constraint.end_id)
    return int((((forced >= 0) & (tokens != forced)) | (closing & ~closes)).sum())


def shape_constraint(completions):
    """`slot_constraint`'s ids and separator, and a three-token marker that these completions break wherever they
    write its first token (their most frequent other token), since its second one never follows it here."""
    base = slot_constraint(completions)
    taken = {*base.token_ids, base.separator_id, base.end_id}
    first = collections.Counter(t for row in completions for t in row if t not in taken).most_common(1)[0][0]
    followers = {row[i + 1] for row in completions for i in range(len(row) - 1) if row[i] == first}
    second, third = [t for t in range(3, 100) if t not in taken | followers | {first}][:2]
    return UniqueTokens(base.token_ids, (first, second, third), base.separator_id, base.end_id, answer_format=True)


@pytest.mark.parametrize("block_size", [4, 32])
def test_block_and_ar_decoding_keep_the_answer_shape(tokenizer, block_size):
    """A random model breaks the shape freely. Under `answer_format` AR decoding never does (each token is chosen
    knowing every token before it); the block decoder breaks it far less often (a step cannot undo a token written
    right of a marker before the marker's start: the rule then has no way out and the stuck row keeps its commit),
    and batched rows equal rows decoded one by one."""
    model, tok = make_converted(tokenizer, block_size=block_size, seed=5)
    free = BlockDiffusionSampler(model, tok, threshold=0.3, eos_token_id=[]).generate(PROMPTS, max_new_tokens=40)
    constraint = shape_constraint(free.completion_ids)
    broken_free = sum(shape_broken(constraint, row) for row in free.completion_ids)
    ar = ARSampler(model, tok, eos_token_id=[], constraint=constraint).generate(PROMPTS, max_new_tokens=40)
    assert broken_free > 0 and all(shape_broken(constraint, row) == 0 for row in ar.completion_ids)
    sampler = BlockDiffusionSampler(model, tok, threshold=0.3, eos_token_id=[], constraint=constraint)
    batched = sampler.generate(PROMPTS, max_new_tokens=40)
    assert 2 * sum(shape_broken(constraint, row) for row in batched.completion_ids) < broken_free
    for row, prompt in enumerate(PROMPTS):
        assert batched.completion_ids[row] == sampler.generate([prompt], max_new_tokens=40).completion_ids[0]


def test_for_ranking_reads_the_answer_marker_from_an_example(tokenizer):
    ids = ["[1]", "[2]", "[3]"]
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens(ids)
    example = 'Best: [2].\n{"ranking":["[2]","[1]","[3]"]}'
    constraint = UniqueTokens.for_ranking(tokenizer, ids, example)
    assert constraint.token_ids == tuple(tokenizer.convert_tokens_to_ids(ids))
    assert tokenizer.decode(list(constraint.start_ids)) == '{"ranking":["'
    # the separator and the end token are read off the example when each is one token
    tokenizer.add_tokens(['","', '"]}'])
    constraint = UniqueTokens.for_ranking(tokenizer, ids, example)
    assert constraint.separator_id == tokenizer.convert_tokens_to_ids('","')
    assert constraint.end_id == tokenizer.convert_tokens_to_ids('"]}')
    assert constraint.answer_format  # with a separator, the answer's shape is kept too
    assert UniqueTokens.for_ranking(tokenizer, ids, example, id_slots=False).separator_id is None
    assert not UniqueTokens.for_ranking(tokenizer, ids, example, id_slots=False).answer_format
    with pytest.raises(ValueError, match="one token"):
        UniqueTokens.from_texts(tokenizer, ["[1]", "ranking list"])
    with pytest.raises(ValueError, match="holds no"):
        UniqueTokens.for_ranking(tokenizer, ids, "[1] [2] [3]")
    with pytest.raises(ValueError, match="repeat"):
        UniqueTokens((3, 3))


# ------------------------------------------------------------------------------------------------ samplers
def frequent_tokens(completions, count=6):
    """The tokens the rows repeat most often (within a row): a constraint on them is sure to bind."""
    repeats = collections.Counter()
    for row in completions:
        repeats.update({t: n - 1 for t, n in collections.Counter(row).items() if n > 1})
    return tuple(t for t, _ in repeats.most_common(count))


def binding_constraint(completions, count=6):
    """A constraint on the most repeated tokens, with a one-token marker after which at least two rows repeat one
    of them if there is one (so the constrained output must differ there)."""
    frequent = frequent_tokens(completions, count)
    others = collections.Counter(t for row in completions for t in row if t not in frequent)
    for marker, _ in others.most_common():
        constraint = UniqueTokens(frequent, start_ids=(marker,))
        if sum(repeats_in_span(constraint, row) > 0 for row in completions) >= 2:
            return constraint
    return UniqueTokens(frequent)  # the whole completion as the span: its repeats bind


def repeats_in_span(constraint, row):
    tokens = torch.tensor([row])
    in_span, _ = constraint.span_state(tokens, torch.ones_like(tokens, dtype=torch.bool))
    inside = [t for t, s in zip(row, in_span[0].tolist()) if s and t in constraint.token_ids]
    return len(inside) - len(set(inside))


def slot_constraint(completions, count=6):
    """`binding_constraint` plus a separator and an end token: the two tokens the rows write most often outside
    the ids, so that the slot rule binds wherever the rows write them."""
    base = binding_constraint(completions, count)
    others = collections.Counter(
        t for row in completions for t in row if t not in base.token_ids and t not in base.start_ids
    )
    (separator, _), (end, _) = others.most_common(2)
    return UniqueTokens(base.token_ids, base.start_ids, separator, end)


@torch.no_grad()
def reference_constrained_ar(model, tokenizer, prompt, constraint, max_new):
    """Cache-free greedy decoding of one prompt, recomputing the whole sequence each step, with the constraint
    written out in plain Python."""
    ids, _ = encode_prompts(tokenizer, [prompt])
    context, out = ids[0].tolist(), []
    for _ in range(max_new):
        logits = model(input_ids=torch.tensor([context])).logits[0, -1]
        log_probs = torch.log_softmax(logits, -1)
        marker = list(constraint.start_ids)
        starts = [i + len(marker) for i in range(len(out) - len(marker) + 1) if out[i : i + len(marker)] == marker]
        if starts:
            used = set(out[starts[0] :]) & set(constraint.token_ids)
            slot = reference_is_slot(out + [None], [True] * len(out) + [False], starts[0], len(out), constraint)
            log_probs = (reference_slot_ban if slot else reference_ban)(log_probs, used, constraint.token_ids)
        token = int(log_probs.argmax())
        out.append(token)
        context.append(token)
        if token == tokenizer.eos_token_id:
            break
    return out


@pytest.mark.parametrize("slots", [False, True])
def test_ar_constrained_equals_cache_free_reference(tokenizer, slots):
    model = make_model(tokenizer, seed=4)
    free = ARSampler(model, tokenizer, eos_token_id=[]).generate(PROMPTS, max_new_tokens=30)
    constraint = (slot_constraint if slots else binding_constraint)(free.completion_ids)
    sampler = ARSampler(model, tokenizer, eos_token_id=[], constraint=constraint)
    got = sampler.generate(PROMPTS, max_new_tokens=30)  # batched, left-padded
    if slots:  # the slot rule binds beyond the repeats
        distinct = ARSampler(model, tokenizer, eos_token_id=[], constraint=binding_constraint(free.completion_ids))
        assert distinct.generate(PROMPTS, max_new_tokens=30).completion_ids != got.completion_ids
    for row, prompt in enumerate(PROMPTS):
        assert got.completion_ids[row] == reference_constrained_ar(model, tokenizer, prompt, constraint, 30)
        assert repeats_in_span(constraint, got.completion_ids[row]) == 0
    assert got.completion_ids != free.completion_ids  # the constraint bound
    assert sum(repeats_in_span(constraint, row) for row in free.completion_ids) > 0


@pytest.mark.parametrize("slots", [False, True])
@pytest.mark.parametrize("block_size", [1, 4, 32])
def test_block_constrained_has_no_repeats_and_batched_equals_one_by_one(tokenizer, block_size, slots):
    model, tok = make_converted(tokenizer, block_size=block_size, seed=5)
    free = BlockDiffusionSampler(model, tok, threshold=0.5, eos_token_id=[]).generate(PROMPTS, max_new_tokens=40)
    constraint = UniqueTokens(frequent_tokens(free.completion_ids))
    if slots:
        separator = collections.Counter(t for r in free.completion_ids for t in r if t not in constraint.token_ids)
        constraint = UniqueTokens(constraint.token_ids, separator_id=separator.most_common(1)[0][0])
    assert sum(repeats_in_span(constraint, row) for row in free.completion_ids) > 0
    sampler = BlockDiffusionSampler(model, tok, threshold=0.5, eos_token_id=[], constraint=constraint)
    batched = sampler.generate(PROMPTS, max_new_tokens=40)
    for row, prompt in enumerate(PROMPTS):
        assert repeats_in_span(constraint, batched.completion_ids[row]) == 0
        single = sampler.generate([prompt], max_new_tokens=40)
        assert batched.completion_ids[row] == single.completion_ids[0]
        assert batched.commit_step[row] == single.commit_step[0]
        torch.testing.assert_close(batched.logprobs[row], single.logprobs[0], rtol=0, atol=1e-9)


def test_block_size_one_constrained_equals_ar_constrained(tokenizer):
    model = make_model(tokenizer, seed=6)
    free = ARSampler(model, tokenizer).generate(PROMPTS, max_new_tokens=30)
    constraint = binding_constraint(free.completion_ids)
    converted, tok = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tokenizer), block_size=1)
    # AR on the converted model: both then renormalise without the mask token
    ar = ARSampler(converted, tok, constraint=constraint).generate(PROMPTS, max_new_tokens=30)
    block = BlockDiffusionSampler(converted, tok, constraint=constraint).generate(PROMPTS, max_new_tokens=30)
    assert block.completion_ids == ar.completion_ids
    for row in range(len(PROMPTS)):
        torch.testing.assert_close(block.logprobs[row], ar.logprobs[row], rtol=0, atol=1e-9)
    assert ar.completion_ids != free.completion_ids


@torch.no_grad()
def reference_constrained_block(model, tokenizer, prompt, block_size, threshold, max_new, constraint):
    """Cache-free block decoding of one prompt with the constraint in plain Python: every step recomputes the whole
    sequence; masked positions after the marker choose with the written ids' mass moved to the unwritten ones (at an
    id slot: only the unwritten ids); of a step's commits that chose the same id (or one already written) only the
    most confident new one is kept, and none that leaves a slot empty."""
    mask_id = tokenizer.mask_token_id
    ids, _ = encode_prompts(tokenizer, [prompt])
    context = ids[0].tolist()
    prompt_len = len(context)
    out = []
    marker = list(constraint.start_ids)

    def span_start(tokens, known):
        for i in range(len(tokens) - len(marker) + 1):
            if tokens[i : i + len(marker)] == marker and all(known[i : i + len(marker)]):
                return i + len(marker)
        return None

    for block_index in range(-(-max_new // block_size)):
        block, done = [mask_id] * block_size, [False] * block_size
        while not all(done):
            log_probs = uncached_block_log_probs(model, context, block, prompt_len, block_index, mask_id)
            tokens, known = out + block, [True] * len(out) + done
            start = span_start(tokens, known)
            if start is not None:
                used = {t for t, k in zip(tokens[start:], known[start:]) if k} & set(constraint.token_ids)
                for j in range(block_size):
                    if not done[j] and len(out) + j >= start:
                        slot = reference_is_slot(tokens, known, start, len(out) + j, constraint)
                        rule = reference_slot_ban if slot else reference_ban
                        log_probs[j] = rule(log_probs[j], used, constraint.token_ids)
            conf, cand = log_probs.max(-1)
            masked = torch.tensor([not d for d in done])[None]
            chosen = select_commits(conf.exp()[None], masked, threshold, torch.ones(1, dtype=torch.long))[0]
            chosen = torch.nonzero(chosen).flatten().tolist()
            after = out + [int(cand[j]) if j in chosen else block[j] for j in range(block_size)]
            after_known = [True] * len(out) + [done[j] or j in chosen for j in range(block_size)]
            start = span_start(after, after_known)
            new = [False] * len(out) + [j in chosen for j in range(block_size)]
            empty = reference_empty_slot_drops(after, after_known, new, start, constraint)
            taken = set()
            if start is not None:
                taken = {t for t, k in zip(tokens[start:], known[start:]) if k} & set(constraint.token_ids)
            kept = []
            for j in sorted(chosen, key=lambda j: (-float(conf[j]), j)):
                token = int(cand[j])
                in_span = start is not None and len(out) + j >= start and token in constraint.token_ids
                if in_span and token in taken:
                    continue
                taken |= {token} if in_span else set()
                kept.append(j)
            kept = [j for j in kept if len(out) + j not in empty]
            for j in kept or chosen:
                block[j], done[j] = int(cand[j]), True
        context += block
        out += block
    return out[:max_new]


@pytest.mark.parametrize("slots", [False, True])
@pytest.mark.parametrize("block_size,threshold", [(4, 0.5), (8, 0.2), (32, 0.3)])
def test_block_constrained_equals_cache_free_reference(tokenizer, block_size, threshold, slots):
    model, tok = make_converted(tokenizer, block_size=block_size, seed=7)
    free = BlockDiffusionSampler(model, tok, threshold=threshold, eos_token_id=[]).generate(PROMPTS, max_new_tokens=40)
    constraint = (slot_constraint if slots else binding_constraint)(free.completion_ids)
    sampler = BlockDiffusionSampler(model, tok, threshold=threshold, eos_token_id=[], constraint=constraint)
    got = sampler.generate(PROMPTS, max_new_tokens=40)
    for row, prompt in enumerate(PROMPTS):
        expected = reference_constrained_block(model, tok, prompt, block_size, threshold, 40, constraint)
        assert got.completion_ids[row] == expected
        assert repeats_in_span(constraint, got.completion_ids[row]) == 0
    assert got.completion_ids != free.completion_ids
    if slots:  # the slot rule binds beyond the repeats
        distinct = binding_constraint(free.completion_ids)
        sampler = BlockDiffusionSampler(model, tok, threshold=threshold, eos_token_id=[], constraint=distinct)
        assert sampler.generate(PROMPTS, max_new_tokens=40).completion_ids != got.completion_ids


def test_constraint_must_be_unique_tokens(tokenizer):
    model, tok = make_converted(tokenizer, block_size=4)
    with pytest.raises(TypeError, match="UniqueTokens"):
        BlockDiffusionSampler(model, tok, constraint={"ids": [1]})
    with pytest.raises(TypeError, match="UniqueTokens"):
        ARSampler(model, tok, constraint=[1, 2])
