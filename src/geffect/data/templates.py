"""Prompt templates per model family (DESIGN section 5).

A template turns a question into the prompt text and an answer into the answer text. The prompt is masked
out of the loss (-100); the answer text plus one EOS token is the label. Where a family's reference code puts
a tag such as ``Answer:`` inside the loss, that tag is part of the answer text.
"""

from __future__ import annotations

from dataclasses import dataclass

from geffect.errors import UsageError


@dataclass(frozen=True)
class Template:
    name: str
    prompt_format: str
    answer_format: str
    description: str

    def prompt(self, question: str, tokenizer=None) -> str:
        return self.prompt_format.format(question=question)

    def answer(self, answer: str) -> str:
        return self.answer_format.format(answer=answer)


@dataclass(frozen=True)
class ChatTemplate(Template):
    """Uses the tokenizer's own chat template for the prompt (instruct models)."""

    def prompt(self, question: str, tokenizer=None) -> str:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UsageError("template 'chat' needs a tokenizer with a chat_template; choose --template plain")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "phi",
            "Question: {question}\n",
            "Answer: {answer}",
            "legacy TOFU phi-1.5 style; 'Answer:' is inside the loss",
        ),
        Template("llama2", "[INST] {question} [/INST]", " {answer}", "Llama-2 chat, as the TOFU authors' code"),
        Template(
            "plain",
            "Question: {question}\nAnswer: ",
            "{answer}",
            "OpenUnlearning's plain template; 'Answer: ' is prompt",
        ),
        ChatTemplate("chat", "", "{answer}", "the tokenizer's chat template (instruct models)"),
    )
}

# Substrings of a hub id, model folder, GGUF file or model name -> template, checked in order: the families
# TOFU fine-tuned with their own templates first, then instruct/chat models (the tokenizer's chat template).
_FAMILY_HINTS: tuple[tuple[str, str], ...] = (
    ("llama-2", "llama2"),
    ("llama2", "llama2"),
    ("phi", "phi"),
    ("instruct", "chat"),
    ("-chat", "chat"),
    ("_chat", "chat"),
)


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UsageError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}") from None


def recorded_template(model_path: str) -> str | None:
    """The template a model folder was trained with, as geffect recorded it: `finetune.json` in a fine-tuned
    folder, or the run's `config.yaml` next to an unlearning run's `model/` folder; None when not recorded."""
    import json
    from pathlib import Path

    import yaml

    folder = Path(model_path).expanduser()
    try:
        if (folder / "finetune.json").is_file():
            return json.loads((folder / "finetune.json").read_text(encoding="utf-8"))["config"]["template"]
        if folder.name == "model" and (folder.parent / "config.yaml").is_file():
            return yaml.safe_load((folder.parent / "config.yaml").read_text(encoding="utf-8"))["resolved"]["template"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None  # an unreadable record: fall back to the name
    return None


def template_for_model(model_name: str) -> Template:
    """The template the model was trained with where geffect recorded it (a fine-tuned or unlearned folder),
    else the one its family was fine-tuned with on TOFU, `chat` for instruct/chat models (by name), `plain`
    when the family is unknown."""
    recorded = recorded_template(model_name)
    if recorded in TEMPLATES:
        return TEMPLATES[recorded]
    lowered = model_name.lower()
    for hint, name in _FAMILY_HINTS:
        if hint in lowered:
            return TEMPLATES[name]
    return TEMPLATES["plain"]
