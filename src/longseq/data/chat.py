"""Prompts through an instruct model's chat template (Jinja, as transformers renders it).

An instruct model was tuned on conversations written in its own format (SmolLM2: ChatML,
`<|im_start|>user\\n...<|im_end|>`). The format is the tokenizer's `chat_template`, which
`longseq convert` keeps with the tokenizer, rendered by `HFTokenizer.apply_chat_template`
(transformers' own renderer).

`ChatPrompt(tokenizer)` splits the rendered conversation around the user's document, so a
document can be cut to a number of tokens without cutting the template:

    before + document[:limit] + after            the prompt (ends where the reply starts)
    reply + end                                  the target (the reply and its end-of-turn)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_DOC = "\x00DOCUMENT\x00"
_REPLY = "\x00REPLY\x00"


@dataclass(frozen=True)
class ChatPrompt:
    """The token pieces of "user: DOCUMENT + instruction; assistant: REPLY"."""

    before: list[int]  # the template up to the document
    after: list[int]  # from the document's end to where the reply starts
    end: list[int]  # what the template puts after a reply (end-of-turn), tokens
    tokenizer: Any

    @classmethod
    def build(cls, tokenizer: Any, instruction: str) -> ChatPrompt:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"{tokenizer!r} has no chat template: the summarisation task prompts an "
                "instruct model through its own (convert it from a GGUF file or a Hugging Face "
                "folder whose tokenizer has one)"
            )
        user = [{"role": "user", "content": f"{_DOC}\n\n{instruction}"}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True)
        reply = {"role": "assistant", "content": _REPLY}
        full = tokenizer.apply_chat_template([*user, reply], add_generation_prompt=False)
        if not full.startswith(prompt) or prompt.count(_DOC) != 1 or _REPLY not in full:
            raise ValueError("the chat template does not render a prompt that the reply extends")
        before, after = prompt.split(_DOC)
        end = full[len(prompt) :].split(_REPLY, 1)[1]
        enc = tokenizer.encode
        return cls(enc(before), enc(after), enc(end.rstrip("\n")) or [tokenizer.sep_id],
                   tokenizer)  # fmt: skip

    @property
    def end_id(self) -> int:
        """The token that ends the reply (generation stops there)."""
        return self.end[0]

    def prompt(self, document_ids: list[int]) -> list[int]:
        return [*self.before, *document_ids, *self.after]

    def target(self, reply: str) -> list[int]:
        return [*self.tokenizer.encode(reply), *self.end]

    @property
    def overhead(self) -> int:
        """Prompt tokens besides the document."""
        return len(self.before) + len(self.after)


__all__ = ["ChatPrompt"]
