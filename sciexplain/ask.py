"""Renamed: ``python -m sciexplain.explain`` asks a built model for an explanation (or exports it merged)."""
import sys

if __name__ == "__main__":
    sys.exit("Error: sciexplain.ask was renamed: python -m sciexplain.explain \"<question>\" --model sft")
