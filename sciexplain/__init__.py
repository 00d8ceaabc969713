"""sciexplain: a DVC pipeline that teaches a chat LLM to write better scientific explanations."""

__version__ = "0.1.0"
