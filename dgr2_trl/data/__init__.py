"""Data for list-wise re-ranking: loading, leave-one-out split, pre-ranker, item ids, prompts and datasets."""

from .block_align import align_answer_to_block, align_answers_to_blocks
from .builder import (
    RerankData,
    build_rerank_datasets,
    rerank_tokenizer_texts,
    target_position_histogram,
    train_rerank_tokenizer,
)
from .item_ids import (
    ID_SCHEMES,
    ItemIdentifiers,
    item_vectors,
    kmeans,
    make_item_ids,
    plain_item_ids,
    residual_codes,
    semantic_item_ids,
    single_token_item_ids,
)
from .loading import (
    BUNDLED_BEAUTY_DIR,
    DataFormatError,
    SequenceData,
    load_amazon_beauty,
    load_sequence_data,
    read_sequences,
    read_titles,
)
from .preranker import TransitionPreRanker, ranking_metrics
from .prompts import (
    RANKING_ANSWER_PREFIX,
    SYSTEM_PROMPT,
    build_completion,
    build_prompt,
    build_short_trace,
    build_trace,
    format_answer,
    shorten_title,
)
from .split import LeaveOneOutSplit, Query, leave_one_out_split, training_queries


__all__ = [
    "BUNDLED_BEAUTY_DIR", "DataFormatError", "align_answer_to_block", "align_answers_to_blocks", "ID_SCHEMES",
    "ItemIdentifiers", "LeaveOneOutSplit", "Query", "RerankData", "RANKING_ANSWER_PREFIX", "SYSTEM_PROMPT",
    "SequenceData", "TransitionPreRanker", "build_completion", "build_prompt", "build_rerank_datasets",
    "build_short_trace", "build_trace", "format_answer", "item_vectors", "kmeans", "leave_one_out_split",
    "load_amazon_beauty", "load_sequence_data", "make_item_ids", "plain_item_ids", "ranking_metrics",
    "read_sequences", "read_titles", "rerank_tokenizer_texts", "residual_codes", "semantic_item_ids", "shorten_title",
    "single_token_item_ids", "target_position_histogram", "train_rerank_tokenizer", "training_queries",
]  # fmt: skip
