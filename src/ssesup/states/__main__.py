"""``python -m ssesup.states``: print the transition table as Markdown (ARCHITECTURE.md's copy)."""

from ssesup.states.machine import table_markdown

print(table_markdown(), end="")
