"""The tokenizer of `native-model`: the `tokenizers` library and a jinja2 chat template, as
transformers' fast tokenizer uses them, without importing transformers (whose tokenizer classes
pull in its modeling stack: torch._dynamo, sympy). Only what the engine calls is here."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

SUPPORTED_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_tokenizer_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    template_file = model_dir / "chat_template.jinja"  # where transformers 5 saves it
    if template_file.is_file():
        config["chat_template"] = template_file.read_text()
    return config


def unsupported_reason(model_dir: Path) -> str | None:
    """Why this tokenizer cannot be reproduced without transformers, or None."""
    if not (model_dir / "tokenizer.json").is_file():
        return "no tokenizer.json"
    config = read_tokenizer_config(model_dir)
    cls = config.get("tokenizer_class", "PreTrainedTokenizerFast")
    if cls not in SUPPORTED_TOKENIZER_CLASSES:
        return f"tokenizer_class {cls} (supported: {', '.join(SUPPORTED_TOKENIZER_CLASSES)})"
    if config.get("add_bos_token") or config.get("add_eos_token"):
        return "add_bos_token/add_eos_token set in tokenizer_config.json"
    if config.get("clean_up_tokenization_spaces"):
        return "clean_up_tokenization_spaces is set"
    template = config.get("chat_template")
    if template is not None and not isinstance(template, str):
        return "several named chat templates"
    if isinstance(template, str) and "{% generation" in template:
        return "a chat template with {% generation %} blocks"
    return None


class NativeTokenizer:
    """Encode, decode and chat-template rendering with the model's tokenizer.json."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = read_tokenizer_config(model_dir)
        self.special_tokens = {
            name: text
            for name in ("bos_token", "eos_token", "pad_token", "unk_token")
            if (text := _token_text(config.get(name))) is not None
        }
        eos = self.special_tokens.get("eos_token")
        self.eos_token_id = self.backend.token_to_id(eos) if eos else None
        self.chat_template: str | None = config.get("chat_template")
        self._template: Any = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        # `encode_batch` releases the GIL while it runs (`encode` does not): a long prompt
        # tokenized in a model thread then leaves the event loop free (transformers' fast
        # tokenizers call it too).
        encoded = self.backend.encode_batch([text], add_special_tokens=add_special_tokens)
        return {"input_ids": encoded[0].ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self.backend.decode(ids, skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
    ) -> str:
        """Rendered as transformers renders it: a sandboxed jinja2 environment with trimmed
        blocks, loop controls, `raise_exception`, `strftime_now` and `tojson`."""
        if tokenize:
            raise ValueError("NativeTokenizer.apply_chat_template renders text only")
        if self.chat_template is None:
            raise ValueError("this model's tokenizer has no chat template")
        if self._template is None:
            self._template = compile_template(self.chat_template)
        return str(
            self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        )


def compile_template(source: str) -> Any:
    import jinja2.ext
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
