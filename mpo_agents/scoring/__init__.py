"""Scoring: one completion under one rubric version (the scorers), judging outside a run, and the reward-hacking check."""
