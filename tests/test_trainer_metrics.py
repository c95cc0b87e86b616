"""The valid rate the trainers log: the validity reward's sum, pooled over processes by counts, not by rates."""

import torch

from dgr2_trl.rewards import parse_ranking
from dgr2_trl.trainers.metrics import count_valid, valid_rate_across_processes


class TwoProcesses:
    """Stands in for an Accelerator whose other process holds `other` (gather concatenates along dim 0)."""

    device = torch.device("cpu")

    def __init__(self, other):
        self.other = torch.tensor([other], dtype=torch.float64)

    def gather(self, tensor):
        return torch.cat([tensor, self.other])


def test_count_valid_is_the_number_of_valid_rankings():
    candidates = [["a", "b", "c"]] * 4
    texts = ['{"ranking":["a","b","c"]}', '{"ranking":["a","a","c"]}', "no answer", '{"ranking":["c","b","a"]}']
    expected = sum(parse_ranking(t, c).valid for t, c in zip(texts, candidates))
    assert expected == 2 and count_valid([""] * 4, texts, candidates) == 2.0


def test_rates_are_pooled_by_counts():
    # this process: 1 valid of 1; the other: 0 of 3. Pooled 1/4; a mean of the two rates would say 1/2
    assert valid_rate_across_processes(TwoProcesses([0.0, 3.0]), 1.0, 1) == 0.25
    assert valid_rate_across_processes(TwoProcesses([0.0, 0.0]), 0.0, 0) == 0.0  # no rows anywhere: 0, not NaN
