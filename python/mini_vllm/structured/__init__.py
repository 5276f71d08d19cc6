"""Constrained decoding: JSON schemas, regexes, choices and forced tool calls, with llguidance.

Why llguidance: it compiles a JSON schema (or regex, or Lark grammar) into a matcher that gives the set
of allowed next tokens for any tokenizer in microseconds, needs nothing but the tokenizer's JSON (no
transformers, no torch), and speaks special tokens in its grammars - so for GPT-OSS the constraint covers
the harmony framing too: reasoning may come first, then the answer must be the schema's JSON on the final
channel (or a call of the required tool). xgrammar, the other library vLLM uses, needs transformers here.
`grammar.py` turns API requests into Lark text (the API layer, which knows harmony); `matcher.py` runs it
in the engine, one matcher per sequence, masking the logits before sampling.
"""
