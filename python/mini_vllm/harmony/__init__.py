"""GPT-OSS's harmony chat format, rendered and parsed by our own code.

Why our own: the openai-harmony package downloads its vocabulary at run time (fails offline), and
vLLM's most reported GPT-OSS bug is a parser that turns one odd token into an HTTP 500. Here every
special-token id is read from the model's tokenizer, and the parser degrades to plain content
instead of failing.
"""
from mini_vllm.harmony.parser import HarmonyParser, ParsedMessage, ParserEvent, ToolCall
from mini_vllm.harmony.render import ChatRenderError, render_chat
from mini_vllm.harmony.tokens import HarmonyTokens, TokenizerLike

__all__ = [
    "ChatRenderError", "HarmonyParser", "HarmonyTokens", "ParsedMessage", "ParserEvent",
    "TokenizerLike", "ToolCall", "render_chat",
]
