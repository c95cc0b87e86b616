import pytest
import torch

from dgr2_trl.modeling.masks import (
    block_attention_mask,
    build_training_layout,
    check_completion_right_padded,
    position_ids_from_mask,
    to_additive_mask,
)


def reference_training_mask(prompt_valid, completion_valid, block_size):
    """Dense, loop-by-loop reference of the [prompt ; x0 ; xt] mask for one row."""
    P, R = len(prompt_valid), len(completion_valid)
    L = P + 2 * R
    valid = list(prompt_valid) + list(completion_valid) * 2

    def describe(i):
        if i < P:
            return ("prompt", i)
        side = "clean" if i < P + R else "noisy"
        return (side, (i - P) % R // block_size)

    allowed = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for k in range(L):
            if not valid[k]:
                continue
            (qs, qi), (ks, ki) = describe(q), describe(k)
            if qs == "prompt":
                ok = ks == "prompt" and ki <= qi
            elif qs == "clean":
                ok = ks == "prompt" or (ks == "clean" and ki <= qi)
            else:
                ok = ks == "prompt" or (ks == "clean" and ki < qi) or (ks == "noisy" and ki == qi)
            allowed[q, k] = ok
        if not allowed[q].any():
            allowed[q] = True
    return allowed


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 8])
def test_training_mask_matches_dense_reference(block_size):
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # left, none, right padded
    completion_mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
    ids = torch.arange(15).reshape(3, 5)
    comp = torch.arange(21).reshape(3, 7) + 100
    layout = build_training_layout(
        ids, prompt_mask, comp, completion_mask, torch.zeros_like(comp, dtype=torch.bool), 999, block_size
    )
    for row in range(3):
        expected = reference_training_mask(prompt_mask[row].tolist(), completion_mask[row].tolist(), block_size)
        assert torch.equal(layout.attention_mask[row, 0], expected), f"row {row}"


def test_layout_ids_positions_and_predictors():
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    completion_ids = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 0, 0]])
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    noisy = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 1, 1, 1]], dtype=torch.bool)
    layout = build_training_layout(prompt_ids, prompt_mask, completion_ids, completion_mask, noisy, 99, block_size=2)
    assert layout.input_ids[0].tolist() == [0, 5, 6, 10, 11, 12, 13, 14, 10, 99, 99, 13, 99]
    # padding of the completion is never replaced by the mask token
    assert layout.input_ids[1].tolist() == [7, 8, 9, 20, 21, 22, 0, 0, 99, 21, 99, 0, 0]
    assert layout.position_ids[0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6]
    assert layout.position_ids[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7]
    # P=3, R=5: block starts (offsets 0, 2, 4) read the clean column before them, others the noisy column before
    assert layout.predictor_column[0].tolist() == [2, 8, 4, 10, 6]


def test_block_size_one_is_causal_over_the_clean_sequence():
    prompt_mask = torch.ones(1, 3, dtype=torch.long)
    completion_mask = torch.ones(1, 4, dtype=torch.long)
    layout = build_training_layout(
        torch.zeros(1, 3, dtype=torch.long),
        prompt_mask,
        torch.ones(1, 4, dtype=torch.long),
        completion_mask,
        torch.zeros(1, 4, dtype=torch.bool),
        9,
        block_size=1,
    )
    clean = layout.attention_mask[0, 0, :7, :7]
    assert torch.equal(clean, torch.tril(torch.ones(7, 7, dtype=torch.bool)))
    # every target is predicted by the clean token right before it: plain AR
    assert layout.predictor_column[0].tolist() == [2, 3, 4, 5]


def test_decoding_mask_against_cache():
    # cache: 2 prompt tokens (first is padding) + one clean block of 2; query: noisy block of 2
    key_block = torch.tensor([[0, 1, 2, 2, 3, 3]])
    key_noisy = torch.tensor([[0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    key_valid = torch.tensor([[0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    allowed = block_attention_mask(key_block[:, 4:], key_noisy[:, 4:], key_block, key_noisy, key_valid)
    assert allowed[0, 0].tolist() == [[False, True, True, True, True, True]] * 2


def test_additive_mask_and_positions():
    allowed = torch.tensor([[[[True, False], [True, True]]]])
    additive = to_additive_mask(allowed, torch.float32)
    assert additive[0, 0, 0, 1] == torch.finfo(torch.float32).min and additive[0, 0, 1].eq(0).all()
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_left_padded_completion_is_refused():
    with pytest.raises(ValueError, match="right-padded"):
        check_completion_right_padded(torch.tensor([[1, 1], [0, 1]]))
