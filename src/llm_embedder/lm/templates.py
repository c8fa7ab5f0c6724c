"""Per-task prompt templates for LM scoring: which text the LM reads (prompt) and which it must produce (target).

A key's score is the mean log-probability of the target tokens given the prompt. Each template is two
``str.format`` strings over the fields ``key``, ``query``, ``context`` (prompt) and ``answer`` or ``query``
(target). The strings are recorded verbatim in every scored file's meta, so a teacher file says exactly what
the LM was asked. ``prompt + target`` is tokenised as one text and split at the target's first character
(:mod:`llm_embedder.lm.tokens`), so the target's leading space (``" {answer}"``) belongs to the target
exactly as the tokenizer splits it in running text, for byte-level BPE and SentencePiece alike.

``query_likelihood`` (UPR) scores p(query | key) for data without answers, such as SciFact; it is chosen
explicitly, never as a silent fallback for rows that lack answers.
"""
from __future__ import annotations

import string
from dataclasses import asdict, dataclass

from ..errors import UserError
from ..tasks import get_task

PROMPT_FIELDS = ("key", "query", "context")
TARGET_FIELDS = ("answer", "query")


@dataclass(frozen=True)
class LMTemplate:
    """A prompt and a target format string, plus what the target is made of."""

    name: str
    prompt: str  # formatted with key, query, context
    target: str  # formatted with answer (once per answer) or with query
    description: str

    @property
    def uses_answers(self) -> bool:
        """True when the target is a row's ``answers`` (one scored sequence per answer)."""
        return "answer" in _fields(self.target)

    def render_prompt(self, key: str, query: str, context: str = "") -> str:
        return self.prompt.format(key=key, query=query, context=context)

    def render_target(self, query: str, answer: str | None = None) -> str:
        return self.target.format(answer=answer, query=query)

    def to_dict(self) -> dict:
        return asdict(self)


def _fields(fmt: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(fmt) if name}


TEMPLATES: dict[str, LMTemplate] = {}


def register_template(template: LMTemplate, overwrite: bool = False) -> LMTemplate:
    """Add a template; its fields are checked here so a typo fails at registration, not mid-run."""
    if template.name in TEMPLATES and not overwrite:
        raise UserError(f"LM template '{template.name}' is already registered")
    unknown = (_fields(template.prompt) - set(PROMPT_FIELDS)) | (_fields(template.target) - set(TARGET_FIELDS))
    if unknown:
        raise UserError(f"LM template '{template.name}': unknown field '{sorted(unknown)[0]}'")
    if "key" not in _fields(template.prompt):
        raise UserError(f"LM template '{template.name}': the prompt must contain {{key}}")
    if not _fields(template.target):
        raise UserError(f"LM template '{template.name}': the target must contain {{answer}} or {{query}}")
    TEMPLATES[template.name] = template
    return template


for _template in (
    LMTemplate("qa", "Knowledge: {key}\nQuestion: {query}\nAnswer:", " {answer}",
               "knowledge, question, answer (qa and convsearch)"),
    LMTemplate("icl", "{key}\n\n{query}\n", "{answer}",
               "a demonstration, then the input, then its output (in-context learning)"),
    LMTemplate("chat", "{key}\nSpeaker 1: {query}\nSpeaker 2:", " {answer}",
               "a past session, then the current turn, then the response (multi-session chat)"),
    LMTemplate("lrlm", "{key}\n\n{context}{query}", " {answer}",
               "a retrieved chunk, then the preceding context and the current chunk, then the continuation "
               "(long-range LM; context is used verbatim)"),
    LMTemplate("tool", "Tool: {key}\nUser request: {query}\nTool call:", " {answer}",
               "a tool description, then the user request, then the call (answers hold the tool name or call)"),
    LMTemplate("query_likelihood", "Passage: {key}\nPlease write a question/claim based on this passage.\n", "{query}",
               "p(query | key) for data without answers (UPR-style query likelihood)"),
):
    register_template(_template)

AUTO = "auto"


def template_names() -> list[str]:
    return sorted(TEMPLATES)


def get_template(name: str, argument: str = "--template") -> LMTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(f"{argument}: unknown template '{name}' (known: {AUTO}, {', '.join(template_names())})") from None


def template_for_task(task: str) -> LMTemplate:
    """The template a task's recipe names (``TaskRecipe.lm_template``), for ``--template auto``."""
    recipe = get_task(task)
    if not recipe.lm_template:
        raise UserError(f"task '{task}' names no LM template; pass --template ({', '.join(template_names())})")
    return get_template(recipe.lm_template, argument=f"task '{task}' lm_template")
