"""Ranking parsing, metrics and TRL-compatible reward functions for list-wise re-ranking."""

from .columns import ColumnValueError, check_candidates, check_pre_rank, check_ranking_row, check_target
from .functions import (
    CombinedReward,
    ConditionalFormatReward,
    MissingColumnError,
    NDCGReward,
    RankingReward,
    RankPromotionReward,
    RecallReward,
    ValidityReward,
    combine_rewards,
    conditional_format_reward,
    default_rl_reward,
    make_conditional_format_reward,
    make_ndcg_reward,
    make_rank_promotion_reward,
    make_recall_reward,
    ndcg_reward,
    rank_promotion_reward,
    recall_reward,
    validity_reward,
)
from .metrics import ndcg_at_k, recall_at_k, target_rank
from .parsing import REASONS, ParsedRanking, completion_text, parse_ranking


__all__ = [
    "ColumnValueError", "CombinedReward", "ConditionalFormatReward", "MissingColumnError", "NDCGReward",
    "ParsedRanking", "RankPromotionReward", "RankingReward", "RecallReward", "ValidityReward", "REASONS",
    "check_candidates", "check_pre_rank", "check_ranking_row", "check_target", "combine_rewards", "completion_text",
    "conditional_format_reward", "default_rl_reward", "make_conditional_format_reward", "make_ndcg_reward",
    "make_rank_promotion_reward", "make_recall_reward", "ndcg_at_k", "ndcg_reward", "parse_ranking",
    "rank_promotion_reward", "recall_at_k", "recall_reward", "target_rank", "validity_reward",
]  # fmt: skip
