"""Chat prompts, reasoning traces and answers for list-wise re-ranking.

The prompt shows the user's recent history (most recent last) and the candidates (in pre-ranker order), each as
`id title`. The target completion is a short reasoning trace grounded in the history (title words shared between
the history and the candidates), then the answer `{"ranking": [...]}` on the last line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence

from .item_ids import title_words


SYSTEM_PROMPT = (
    "You are an expert e-commerce re-ranking assistant. Given a customer's purchase history and a list of "
    "candidate products, you rank the candidates by how likely the customer is to buy each one next."
)

# Words that say nothing about what a product is (units, packaging, filler), skipped when explaining matches.
_UNINFORMATIVE = set(
    """and the for with from of in on to by or an a at new set pack count oz ounce ounces fl fluid ml
    size each piece pieces pcs one two three inch inches lb lbs gram grams net wt value travel mini full
    style color colors assorted plus free item items product products made usa professional""".split()
)


def shorten_title(title: str, max_words: int = 12, max_chars: int = 80) -> str:
    """First `max_words` words of a title, cut at `max_chars`, with an ellipsis when something was cut."""
    if max_words < 1:  # 0 words would turn every title into "..."
        raise ValueError(f"shorten_title needs max_words >= 1, got {max_words!r}")
    title = " ".join(title.split()) or "(no title)"
    words = title.split(" ")
    short = " ".join(words[:max_words])
    if len(short) > max_chars:
        short = short[:max_chars].rsplit(" ", 1)[0] or short[:max_chars]
    return short if short == title else short + "..."


def content_words(title: str) -> list[str]:
    """Distinct informative words of a title, in order of appearance."""
    seen: dict[str, None] = {}
    for w in title_words(title):
        if len(w) > 2 and w not in _UNINFORMATIVE and not w.isdigit():
            seen.setdefault(w, None)
    return list(seen)


PROMPT_STYLES = ("full", "compact", "evidence", "scored")
TRACE_STYLES = ("full", "short", "ids", "evidence", "scores", "best")
# level tokens per candidate line, in this order (see dgr2_trl.data.evidence.FEATURES)
EVIDENCE_FEATURES = ("score", "cooc", "title", "svd", "brand", "pop")
# the text that starts every answer `format_answer` writes: where CFT's answer weighting begins
RANKING_ANSWER_PREFIX = '{"ranking"'
EVIDENCE_LETTERS = "sctvbp"
# the features that relate a candidate to the history (not the retriever's score, not popularity)
RELATION_FEATURES = ("cooc", "title", "svd", "brand")
# each evidence letter's reason in words, for the plain-text `scored` prompt and `best` trace
EVIDENCE_REASONS = {
    "s": "retriever",
    "c": "co-bought",
    "t": "similar title",
    "v": "similar shoppers",
    "b": "same brand",
    "p": "popular",
}


# score level (0-9, of a LevelScorer) from which the `scored` prompt calls a candidate strong. Chosen on validation
# users (all 2,322, seed 0): promoting the candidates at >= 7 gave NDCG@3 +0.031, R@3 +0.038, R@1 +0.021 over the
# floor (>= 6: +0.020; >= 8: +0.022), against +0.036 for the top three by score, which 40 LoRA steps of SmolLM2
# did not learn to pick (it copied the retriever's first three on 98.5% of test prompts)
STRONG_SCORE_LEVEL = 7


def evidence_reason(token: str) -> str:
    """An evidence level token in words: `<c5>` -> "co-bought"; level 0 -> "weak"."""
    letter, level = token.strip("<>")[0], token.strip("<>")[1:]
    if letter not in EVIDENCE_REASONS or not level.isdigit():
        raise ValueError(f"expected an evidence level token such as '<c5>', got {token!r}")
    return "weak" if int(level) == 0 else EVIDENCE_REASONS[letter]


def evidence_string(levels: Sequence[int]) -> str:
    """One candidate's evidence levels, one per `EVIDENCE_FEATURES`, as tokens: `<s7><c3><t0><v5><b0><p4>`."""
    if len(levels) != len(EVIDENCE_FEATURES):
        raise ValueError(f"expected {len(EVIDENCE_FEATURES)} evidence levels {EVIDENCE_FEATURES}, got {len(levels)}")
    return "".join(f"<{letter}{int(v)}>" for letter, v in zip(EVIDENCE_LETTERS, levels))


def build_prompt(
    history: Sequence[str],
    candidates: Sequence[str],
    titles: Mapping[str, str],
    max_title_words: int = 12,
    style: str = "full",
    evidence: Sequence[Sequence[int]] | None = None,
    candidate_title_words: int = 0,
    scores: Sequence[tuple[int, str]] | None = None,
) -> list[dict[str, str]]:
    """Messages for one query. `history`/`candidates` are id strings; `titles` maps id string -> title.
    `history` is expected already cut to the items to show (most recent last).

    `style="compact"` drops the system message and shortens the instruction (for small models trained from
    scratch, where every prompt token is training and decoding time and the wording carries no prior).
    `style="evidence"` is compact with each candidate's evidence levels (`evidence`, one row per candidate, see
    `dgr2_trl.data.evidence`) after its id, and `candidate_title_words` title words (0: none) after them.
    `style="scored"` is plain text for a pretrained tokenizer (no added tokens): each candidate marked `strong`
    (score level >= `STRONG_SCORE_LEVEL`, with its strongest evidence in words) or `weak` (`scores`: per candidate
    (score level 0-9, strongest evidence token), see `build_score_trace`): `[3] strong: similar title`."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    if style == "scored":
        if scores is None or len(scores) != len(candidates):
            raise ValueError("prompt style 'scored' needs one (score level, strongest evidence token) per candidate")
        lines = ["Candidates (retriever order) and their evidence:"]
        lines += [
            f"{c} strong: {evidence_reason(token)}" if int(level) >= STRONG_SCORE_LEVEL else f"{c} weak"
            for c, (level, token) in zip(candidates, scores)
        ]
        lines += ['Reason, then answer {"ranking": [...]}.']
        return [{"role": "user", "content": "\n".join(lines)}]
    if style == "evidence":
        if evidence is None or len(evidence) != len(candidates):
            raise ValueError("prompt style 'evidence' needs one row of evidence levels per candidate")
        lines = ["History:"] + [f"{i} {shorten_title(titles.get(i, ''), max_title_words)}" for i in history]
        lines = lines if history else []  # the evidence summarises the history; showing it is optional
        lines.append("Candidates:")
        for c, levels in zip(candidates, evidence):
            title = f" {shorten_title(titles.get(c, ''), candidate_title_words)}" if candidate_title_words > 0 else ""
            # no space after the id: the level tokens are added tokens, so a space would be one more token per line
            lines.append(f"{c}{evidence_string(levels)}{title}")
        lines += ['Reason, then answer {"ranking":[...]}.']
        return [{"role": "user", "content": "\n".join(lines)}]
    if style == "compact":
        lines = ["History:"] + [f"{i} {shorten_title(titles.get(i, ''), max_title_words)}" for i in history]
        lines += ["Candidates:"] + [f"{i} {shorten_title(titles.get(i, ''), max_title_words)}" for i in candidates]
        lines += ['Reason, then answer {"ranking": [...]} with every candidate once.']
        return [{"role": "user", "content": "\n".join(lines)}]
    lines = ["Purchase history (oldest first, most recent last):"]
    lines += [f"{k}. {i} {shorten_title(titles.get(i, ''), max_title_words)}" for k, i in enumerate(history, 1)]
    lines += ["", f"Candidates ({len(candidates)}):"]
    lines += [f"- {i} {shorten_title(titles.get(i, ''), max_title_words)}" for i in candidates]
    lines += [
        "",
        f"Rank all {len(candidates)} candidates from most to least likely next purchase. Reason briefly, then give "
        'the answer on the last line as JSON: {"ranking": ["<id>", ...]} with every candidate id exactly once.',
    ]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def format_answer(ranking: Sequence[str], compact: bool = False) -> str:
    """`{"ranking": [...]}`; `compact` drops the spaces (`{"ranking":["[4]","[6]"]}`: about half the tokens
    with a tokenizer trained on it)."""
    return json.dumps({"ranking": list(ranking)}, separators=(",", ":") if compact else None)


def _join(words: Sequence[str]) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def build_trace(
    history: Sequence[str], ranking: Sequence[str], titles: Mapping[str, str], max_interest_words: int = 3
) -> str:
    """A short templated rationale for `ranking` (best first) grounded in the history's title words.

    Says what the user buys (the most frequent informative history words, recent items counted double), why the
    first candidate fits (its words shared with the history) and which other candidates relate, without ever
    naming more than three candidates, so it stays around 60-150 tokens.
    """
    weights: Counter[str] = Counter()
    for k, item in enumerate(history):
        recent = k >= len(history) - 2
        for w in content_words(titles.get(item, "")):
            weights[w] += 2 if recent else 1
    interests = [w for w, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:max_interest_words]]

    def shared(item: str) -> list[str]:
        words = [w for w in content_words(titles.get(item, "")) if w in weights]
        return sorted(words, key=lambda w: (-weights[w], w))[:3]

    last = history[-1]
    parts = [f"The user most recently bought {last} ({shorten_title(titles.get(last, ''), 6, 40)})."]
    if interests:
        parts.append(f"Their history is mostly about {_join(interests)}.")
    else:
        parts.append("Their history has no single dominant product type.")
    best = ranking[0]
    best_shared = shared(best)
    best_title = shorten_title(titles.get(best, ""), 6, 40)
    if best_shared:
        parts.append(f"{best} ({best_title}) fits best: it shares {_join(best_shared)} with the history.")
    else:
        parts.append(f"{best} ({best_title}) fits best as a natural next purchase after the recent items.")
    related = [(c, shared(c)) for c in ranking[1:]]
    related = [(c, s) for c, s in related if s][:2]
    if related:
        parts.append(" ".join(f"{c} also relates ({_join(s)})." for c, s in related))
    parts.append("The other candidates match the history less, so they follow in their prior order.")
    return " ".join(parts)


def build_short_trace(
    history: Sequence[str],
    candidates: Sequence[str],
    ranking: Sequence[str],
    titles: Mapping[str, str],
    max_title_words: int = 12,
    max_related: int = 3,
    with_words: bool = True,
) -> str:
    """A one-line rationale built only from what the prompt shows, then the pick.

    Lists the candidates whose shown title shares informative words with the shown history (most shared with the
    most recent item first, then with the whole history, then prompt order), with those words, and names the top
    pick: `Related: [6] lash adhesive; [2] rose. Best: [1].` The evidence part does not depend on the answer, so a
    model can learn to write it from the prompt and condition its ranking on it. `with_words=False` names only the
    related candidates (`Related: [6]; [2]. Best: [1].`): nothing is copied from the titles.
    """

    def shown_words(item: str) -> list[str]:
        return content_words(shorten_title(titles.get(item, ""), max_title_words))

    last = set(shown_words(history[-1])) if history else set()
    seen = {w for item in history for w in shown_words(item)}
    related = []
    for position, candidate in enumerate(candidates):
        shared = [w for w in shown_words(candidate) if w in seen]
        if shared:
            related.append((-sum(w in last for w in shared), -len(shared), position, candidate, shared))
    related.sort()
    evidence = (
        "; ".join(f"{c} {' '.join(shared)}" if with_words else str(c) for *_, c, shared in related[:max_related])
        or "none"
    )
    return f"Related: {evidence}. Best: {ranking[0]}."


def build_evidence_trace(
    candidates: Sequence[str], evidence: Sequence[Sequence[int]], max_listed: int = 10, per_candidate: int = 2
) -> str:
    """Which candidates relate to the history, and how, read off the prompt's evidence levels.

    Candidates are listed by the sum of their relation levels (`RELATION_FEATURES`: co-occurrence, title words,
    interaction similarity, brand), most related first, ties in prompt order, at most `max_listed`, each with its
    `per_candidate` strongest relation tokens: `Related: [3]<c6><t5>;[7]<v7><b4>;...`. It is a function of the
    prompt alone (never of the answer), so a model can compute it and condition its ranking on it.
    """
    if len(evidence) != len(candidates):
        raise ValueError(f"got {len(evidence)} evidence rows for {len(candidates)} candidates")
    relation = [EVIDENCE_FEATURES.index(f) for f in RELATION_FEATURES]
    scored = []
    for position, (candidate, levels) in enumerate(zip(candidates, evidence)):
        strength = [(int(levels[f]), f) for f in relation]
        total = sum(v for v, _ in strength)
        if total > 0:
            top = sorted((f for v, f in strength if v > 0), key=lambda f: (-int(levels[f]), f))[:per_candidate]
            tokens = "".join(f"<{EVIDENCE_LETTERS[f]}{int(levels[f])}>" for f in top)
            scored.append((-total, position, f"{candidate}{tokens}"))
    scored.sort()
    return "Related: " + (";".join(entry for *_, entry in scored[:max_listed]) or "none") + "."


def score_level_tokens(num_score_levels: int = 10) -> list[str]:
    """The `scores` trace's level tokens `<r0>`..`<r9>` (to register with a tokenizer: one id each, not four)."""
    return [f"<r{level}>" for level in range(num_score_levels)]


def build_score_trace(
    candidates: Sequence[str], score_levels: Sequence[int], strongest: Sequence[str], num_best: int = 0
) -> str:
    """Each candidate's evidence score in prompt order, with the evidence that adds most to it, then the best
    `num_best` grouped by score level: `Scores: [1]<r5><s7>;[2]<r8><t6>;...;[10]<r2><c3>. Best: <r8>[2][7]<r6>[1].`

    `score_levels` (0-9, the `<rK>` tokens) and `strongest` (the candidate's own level token of that evidence,
    e.g. `<t6>`) come from a `LevelScorer`: a sum of one weight per level token of the prompt, so the trace is a
    function of the prompt alone. Each step is a lookup a small model learns: the score of one candidate line,
    then the candidates holding the highest written score, in order (ties in prompt order), and the answer copies
    the `Best` ids first. `num_best=0` (the default) leaves the `Best` part out: with it, 500 AR steps of the
    1.2M-parameter default teacher wrote valid answers on 6% of test prompts (duplicated ids), without it on 97%
    (though its answer's top 3 matched its own scores only half of the time)."""
    if not len(candidates) == len(score_levels) == len(strongest):
        raise ValueError(f"got {len(candidates)} candidates, {len(score_levels)} scores, {len(strongest)} features")
    scores = ";".join(f"{c}<r{int(r)}>{t}" for c, r, t in zip(candidates, score_levels, strongest))
    best, level = [], None
    for k in sorted(range(len(candidates)), key=lambda k: (-int(score_levels[k]), k))[:num_best]:
        if score_levels[k] != level:
            level = score_levels[k]
            best.append(f"<r{int(level)}>")
        best.append(candidates[k])
    return f"Scores: {scores}." + (f" Best: {''.join(best)}." if best else "")


def build_best_trace(candidates: Sequence[str], scores: Sequence[tuple[int, str]]) -> str:
    """The `scored` prompt's reasoning in words: its strong candidates in prompt order with their evidence,
    `Strong evidence: [3] similar title; [7] co-bought. The rest keep the retriever order.` ("none" without one).
    Read off the prompt, so a model can write it and rank by it (target order `evidence_strong`)."""
    if len(scores) != len(candidates):
        raise ValueError(f"got {len(scores)} (score level, token) pairs for {len(candidates)} candidates")
    strong = [f"{c} {evidence_reason(t)}" for c, (level, t) in zip(candidates, scores) if level >= STRONG_SCORE_LEVEL]
    return f"Strong evidence: {'; '.join(strong) or 'none'}. The rest keep the retriever order."


def build_completion(
    history: Sequence[str],
    ranking: Sequence[str],
    titles: Mapping[str, str],
    trace_style: str = "full",
    candidates: Sequence[str] | None = None,
    max_title_words: int = 12,
    evidence: Sequence[Sequence[int]] | None = None,
    scores: Sequence[tuple[int, str]] | None = None,
) -> list[dict[str, str]]:
    """The assistant message: reasoning trace, then the JSON answer on its own last line.

    `trace_style="short"` uses `build_short_trace` (needs the prompt's `candidates` order and `max_title_words`);
    `"ids"` the same without the shared title words; `"evidence"` uses `build_evidence_trace` (needs
    `candidates` and their `evidence` levels); `"scores"` uses `build_score_trace` (needs `candidates` and
    `scores`: per candidate its score level and the token of its strongest evidence); `"best"` uses
    `build_best_trace` (the same `scores`, in words)."""
    if trace_style not in TRACE_STYLES:
        raise ValueError(f"trace style must be one of {TRACE_STYLES}, got {trace_style!r}")
    if trace_style == "best":
        if scores is None or candidates is None:
            raise ValueError("trace style 'best' needs the prompt's candidates and their (score level, token) pairs")
        trace = build_best_trace(candidates, scores)
    elif trace_style == "scores":
        if scores is None or candidates is None:
            raise ValueError(
                "trace style 'scores' needs the prompt's candidates and their (score level, strongest "
                "evidence token) pairs"
            )
        trace = build_score_trace(candidates, [r for r, _ in scores], [t for _, t in scores])
    elif trace_style == "evidence":
        if evidence is None or candidates is None:
            raise ValueError("trace style 'evidence' needs the prompt's candidates and their evidence levels")
        trace = build_evidence_trace(candidates, evidence)
    elif trace_style in ("short", "ids"):
        trace = build_short_trace(
            history,
            candidates if candidates is not None else ranking,
            ranking,
            titles,
            max_title_words,
            with_words=trace_style == "short",
        )
    else:
        trace = build_trace(history, ranking, titles)
    answer = format_answer(ranking, compact=trace_style in ("evidence", "scores", "best"))
    return [{"role": "assistant", "content": trace + "\n" + answer}]
