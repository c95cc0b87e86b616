"""`model.generate` on a converted model decodes blocks exactly as `BlockDiffusionSampler`, after a copy, a save and
a load, and through `pipeline`; what it cannot honour it refuses, naming the sampler."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from dgr2_trl.modeling.pretrained import load_causal_lm
from dgr2_trl.samplers import BlockDiffusionSampler
from dgr2_trl.samplers.common import encode_prompts
from dgr2_trl.samplers.hf_generate import CUSTOM_GENERATE_FILE

from .conftest import PROMPTS, make_converted


MAX_NEW = 10


def sampler_rows(model, tok, threshold=0.9, **kwargs):
    out = BlockDiffusionSampler(model, tok, threshold=threshold, **kwargs).generate(PROMPTS, max_new_tokens=MAX_NEW)
    return out.completion_ids


def generated_rows(model, tok, **kwargs):
    ids, mask = encode_prompts(tok, PROMPTS)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **kwargs,
    )
    assert torch.equal(out[:, : ids.shape[1]], ids)  # HF's shape: the prompt, then the completion
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        # after the first EOS HF pads with the pad token; the sampler's row ends at that EOS
        cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize("block_size, threshold", [(1, 0.9), (4, 0.9), (4, 0.3)])
def test_generate_equals_the_sampler_on_a_left_padded_batch(tokenizer, block_size, threshold):
    model, tok = make_converted(tokenizer, block_size=block_size, seed=2)
    expected = sampler_rows(model, tok, threshold=threshold)
    assert generated_rows(model, tok, threshold=threshold) == expected
    assert len({tuple(r) for r in expected}) > 1
    if block_size > 1 and threshold < 0.5:  # parallel commits happen: it is not AR decoding
        passes = BlockDiffusionSampler(model, tok, threshold=threshold).generate(PROMPTS, MAX_NEW).num_forward_passes
        assert passes < sum(len(r) for r in expected)


def test_generate_survives_copy_save_and_load(tokenizer, tmp_path):
    model, tok = make_converted(tokenizer, block_size=4, seed=2)
    expected = sampler_rows(model, tok)
    twin = copy.deepcopy(model)
    assert twin.generate.__self__ is twin and generated_rows(twin, tok) == expected
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / CUSTOM_GENERATE_FILE).is_file()
    hooked = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    assert generated_rows(hooked, tok) == expected
    assert generated_rows(load_causal_lm(str(tmp_path), dtype=None), tok) == expected


def test_pipeline_decodes_blocks(tokenizer):
    model, tok = make_converted(tokenizer, block_size=4, seed=2)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    expected = BlockDiffusionSampler(model, tok).generate(PROMPTS[:2], max_new_tokens=MAX_NEW)
    generator = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    for prompt, text in zip(PROMPTS[:2], expected.texts):
        out = generator(prompt, max_new_tokens=MAX_NEW, do_sample=False, return_full_text=False)
        assert out[0]["generated_text"].strip() == text.strip()


def test_what_it_cannot_honour_is_refused(tokenizer):
    model, tok = make_converted(tokenizer, block_size=4)
    ids, mask = encode_prompts(tok, PROMPTS[:1])
    for kwargs in (
        dict(num_beams=2),
        dict(streamer=object()),
        dict(do_sample=True, top_p=0.9),
        dict(no_such_argument=3),
    ):
        with pytest.raises(ValueError, match="BlockDiffusionSampler|not supported"):
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, pad_token_id=0, **kwargs)
    with pytest.raises(ValueError, match="nothing to generate"):
        model.generate(input_ids=ids, attention_mask=mask, max_length=ids.shape[1], pad_token_id=0)


def test_trainer_model_card_shows_the_sampler_not_pipeline(tmp_path):
    from trl.trainer.utils import generate_model_card

    from dgr2_trl.trainers.model_card import rewrite_quick_start

    card = generate_model_card(
        base_model=None,
        model_name="m",
        hub_model_id="me/m",
        dataset_name=None,
        tags=[],
        wandb_url=None,
        trackio_url=None,
        trainer_name="DiffusionSFT",
    )
    path = tmp_path / "README.md"
    card.save(str(path))
    assert 'pipeline("text-generation"' in path.read_text()
    rewrite_quick_start(str(path), "me/m")
    text = path.read_text()
    assert "pipeline(" not in text and "BlockDiffusionSampler(model, tokenizer" in text
    assert '"me/m"' in text and "## Training procedure" in text  # the rest of TRL's card is kept
