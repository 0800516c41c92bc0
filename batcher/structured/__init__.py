"""Structured output: the reply's JSON Schema (`schema`), checking replies and the re-ask
message (`validate`, with its fast path in `fast`), and the typed Arrow columns the parsed
replies become (`columns`, the only module here that needs pyarrow)."""
