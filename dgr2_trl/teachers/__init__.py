"""Where AR teacher log-probs come from: an in-process HF model or a vLLM server, behind one `Teacher` interface;
plus the OPD divergence on the teacher's top-k with a tail bucket, and sequence-level distillation data."""

from .base import Teacher, TeacherScores
from .distill_loss import DIVERGENCES, bucket_divergence, replay_support_logprobs, student_buckets, teacher_buckets
from .in_process import InProcessTeacher
from .sequence_kd import teacher_completion_dataset
from .vllm_server import TeacherServerError, VLLMServerTeacher


__all__ = [
    "DIVERGENCES",
    "InProcessTeacher",
    "Teacher",
    "TeacherScores",
    "TeacherServerError",
    "VLLMServerTeacher",
    "bucket_divergence",
    "replay_support_logprobs",
    "student_buckets",
    "teacher_buckets",
    "teacher_completion_dataset",
]
