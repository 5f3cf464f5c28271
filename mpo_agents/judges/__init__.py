"""LLM judges: the LiteLLM client with retries and a call log, and parsers for what judges reply.

Cheap to import: LiteLLM itself is loaded on the first call.
"""

from mpo_agents.judges.client import JudgeClient, JudgeResult, nonempty
from mpo_agents.judges.parsing import extract_tag, parse_score
from mpo_agents.judges.records import CallLog, CallRecord
from mpo_agents.judges.usage import JudgeStats

__all__ = [
    "CallLog",
    "CallRecord",
    "JudgeClient",
    "JudgeResult",
    "JudgeStats",
    "extract_tag",
    "nonempty",
    "parse_score",
]
